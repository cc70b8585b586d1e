"""The run configuration: one dataclass, every field documented; YAML files and flags fill it.

Fields left as None take a device-dependent default in `resolve` (a GPU affords more samples).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path

from sttrl.algorithms import METHODS
from sttrl.rewards import ANSWER_FORMS, REWARDS
from sttrl.errors import UserError

ENGINES = ("local", "ray")
VOTING_FUNCTIONS = ("majority", "energy", "confidence")
ADVANTAGE_ESTIMATORS = ("grpo", "gae")
WEIGHT_SYNCS = ("broadcast", "object_store")
DEVICES_HELP = "auto, cpu, cuda or cuda:N"


@dataclass
class Config:
    # what to run on
    dataset: str = "ARITH-TTT"
    """Registry name (AIME-TTT, AMC-TTT, MATH-TTT, GSM8K-TTT, GPQA-TTT, ARITH-TTT[-L2|-L3])."""
    data_path: str | None = None
    """A TTT-format JSON file to use instead of a registry name."""
    data_dir: str | None = None
    """Where registry names resolve (default: $STTRL_DATA_DIR, else the repo's data/)."""
    num_questions: int | None = None
    """How many questions from the start of the set (default: all; ARITH-TTT generates 5)."""
    model: str = "SmolLM2-135M-Instruct"
    """Hugging Face id or local directory; the default is the embedded offline model."""
    prompt_family: str | None = None
    """Prompt template family (qwen-math, qwen, llama, smollm, default); guessed from --model."""
    trust_remote_code: bool = False
    """Allow the model repository's own Python code to run."""
    # how to run it
    engine: str = "local"
    """local (one process, transformers) or ray (Ray + vLLM + DeepSpeed)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (local engine)."""
    separate_ref_gpu: bool = False
    """Keep the frozen reference model on its own device (the next GPU) instead of the actor's."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the training forward pass."""
    lora_rank: int = 0
    """Train a rank-R LoRA adapter (peft) on frozen base weights instead of every weight (0: off, full fine-tuning)."""
    lora_alpha: float = 32.0
    """LoRA scale numerator (the update is alpha/rank x BA); fixed, not tied to the rank, so the best lr barely moves with the rank."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input in training forwards (rollouts and scoring never drop)."""
    lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    """Comma-separated module names that get an adapter (default: every projection of a Llama/Qwen2-family layer)."""
    micro_batch_size: int = 8
    """Responses per forward/backward chunk in training and scoring."""
    generation_threads: int = 0
    """CPU threads while decoding (0: torch's default, all cores; 1 only pays while another job holds the other cores)."""
    # ---- the scale engine (--engine ray): Ray placement, vLLM rollouts, DeepSpeed ZeRO-3 ------
    vllm_num_engines: int | None = None
    """engine=ray: vLLM rollout engines; samples are split across them (default 2 on GPU, 1 on CPU)."""
    vllm_tensor_parallel_size: int = 1
    """engine=ray: GPUs per vLLM engine (tensor parallel)."""
    actor_num_gpus: int | None = None
    """engine=ray: DeepSpeed ZeRO-3 training ranks, one GPU each (default 2 on GPU, 1 on CPU)."""
    advantage_estimator: str = "grpo"
    """grpo (group-normalised rewards, no critic) or gae (PPO with a critic; engine=ray, ttrl only)."""
    critic_lr: float = 9e-6
    """advantage_estimator=gae: the critic's AdamW learning rate (OpenRLHF's and TTRL's PPO default)."""
    value_clip: float = 0.5
    """advantage_estimator=gae: how far one update may move a value from its value when scored (0.5, as OpenRLHF, verl and TTRL)."""
    gamma: float = 1.0
    """advantage_estimator=gae: discount per token."""
    lambd: float = 0.95
    """advantage_estimator=gae: GAE's lambda (1: Monte Carlo returns, 0: one-step TD)."""
    colocate: bool = False
    """engine=ray: vLLM engines share the actor's GPUs (vLLM sleeps while the actor trains)."""
    sync_timeout: float = 600.0
    """engine=ray: seconds any Ray call (start-up, sampling, training, weight sync) may take before a clear error."""
    weight_sync: str = "broadcast"
    """engine=ray: how weights reach vLLM: broadcast (a process group from actor rank 0: gloo on CPU, where it measured no slower, NCCL on GPUs, GPU to GPU) or object_store (through Ray's object store)."""
    ray_num_cpus: int | None = None
    """engine=ray: CPUs a locally started Ray may use (default: all of this machine's)."""
    # the method
    mode: str = "question"
    """question (single-sample TTRL, per question) or dataset (the original TTRL over the whole set)."""
    episodes: int = 1
    """mode=dataset: passes over the test set."""
    prompts_per_step: int = 8
    """mode=dataset: questions per rollout batch (sampled, voted and rewarded together)."""
    mini_batch_prompts: int = 1
    """mode=dataset: questions per optimiser step within a rollout batch (TTRL's verl recipe: 1, so 8 steps per batch of 8); the steps share the batch's old log-probs."""
    eval_every: int = 5
    """mode=dataset: evaluate mean pass@1 every this many steps (and before and after)."""
    warmup_ratio: float = 0.03
    """mode=dataset: share of optimiser steps with linear lr warm-up from 0 before the cosine decay."""
    adaptation_method: str = "ttrl"
    """ttrl (per-question GRPO), ttft, slot or memo."""
    voting_function: str = "majority"
    """majority, energy or confidence: how samples are weighted in the vote."""
    energy_tau: float = 1.0
    """Temperature of the softmax over negative energies (voting_function=energy)."""
    confidence_keep: float = 1.0
    """Share of most-confident traces that vote (voting_function=confidence)."""
    answer_form: str = "strict"
    """strict (against a plain-number reference only a plain number counts: "9 - 4" is not 5) or symbolic (math-verify's equivalence); decides votes, rewards and grading alike."""
    reward: str = "vote"
    """vote (agreement with the pseudo-label), oracle (the reference answer: an upper bound, marked in every output) or random (the vote's positive rate, no signal: the null)."""
    min_majority_ratio: float | None = None
    """Weak-vote rule: skip the update when the winning cluster holds less than this share of the voting weight (0: never skip; default: the method's CPU study value in reset mode, else 0)."""
    stop_clip_frac: float | None = None
    """Adaptive budget: end a question's update after the step whose clipped-token share exceeds this (None: take every step)."""
    stop_kl: float | None = None
    """Adaptive budget: end a question's update after the step whose KL to the reference exceeds this (None: no KL budget)."""
    max_step_kl: float | None = None
    """Trust region: a step whose per-token KL to the policy before it exceeds this is undone and retried smaller (0: no step budget; default: see README)."""
    max_kl: float | None = None
    """Trust region: a step that takes the per-token KL to the initial model past this is undone and retried smaller (0: no budget; default: see README)."""
    kl_backtracks: int = 4
    """Trust region: how often an overshooting step is undone and retried smaller before the question's update ends."""
    agreement_estimate: str = "heldout"
    """How --stop_agreement estimates the policy's agreement with the vote: heldout (importance weights of the votes after n_train, never trained on, measured after each step) or trained (the trained samples' own, from the step's forward pass)."""
    stop_agreement: float | None = None
    """Adaptive budget: end a question's update once the policy's estimated share of answers agreeing with the vote (importance-weighted over the trained samples) reaches this (0: off; default: the method's CPU study value in reset mode, else off)."""
    memo_variants: int = 2
    """Prompt phrasings pooled into MEMO's marginal (adaptation_method=memo; 1 to 4)."""
    continuous: bool = False
    """Carry adapted weights and optimiser to the next question instead of resetting."""
    n_votes: int | None = None
    """Samples drawn for the vote (default 64 on GPU, 16 on CPU)."""
    n_train: int | None = None
    """The first n_train voted samples are trained on (default 32 on GPU, 8 on CPU)."""
    n_eval: int | None = None
    """Samples per question for pass@1 before and after (default 16 on GPU, 8 on CPU)."""
    steps_per_question: int | None = None
    """Optimiser steps per question (default 3; 5 for slot); 0 never updates, so before and after are both the untouched model: a base-model run for `sttrl report`."""
    lr: float | None = None
    """Learning rate (default 1e-5 for ttrl and memo, 1e-4 for ttft, 0.1 for slot; x10, uncalibrated, with --lora_rank except slot)."""
    weight_decay: float | None = None
    """AdamW weight decay (default 0.0 per question, 0.01 with mode=dataset, as TTRL)."""
    clip_eps: float = 0.2
    """PPO/GRPO ratio clip."""
    kl_coef: float = 0.001
    """Weight of the k3 KL penalty to the frozen initial model (0 turns it off)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    optimizer: str = "adamw"
    """adamw, or sgd (plain SGD on the gradient scaled to norm grad_clip: a step of length lr x grad_clip along the gradient)."""
    temperature: float = 0.8
    """Rollout temperature for the vote and training samples."""
    top_p: float = 1.0
    """Rollout nucleus sampling threshold."""
    val_temp: float = 0.6
    """Evaluation temperature for pass@1."""
    val_top_p: float = 0.95
    """Evaluation nucleus sampling threshold."""
    max_new_tokens: int | None = None
    """Response length limit (default 3072 on GPU, 128 on CPU)."""
    seed: int = 0
    """Seeds sampling; each question's seed derives from it and the question id."""
    # where results go
    output_dir: str | None = None
    """Results folder (default runs/<dataset>_<model>_<method>[_continuous])."""
    allow_config_change: bool = False
    """Resume in an output_dir whose saved config differs."""
    wandb: bool = False
    """Log to Weights & Biases (offline unless WANDB_API_KEY is set)."""
    tensorboard: bool = False
    """Write TensorBoard scalars under output_dir/tb."""
    ray_address: str | None = None
    """Join this Ray cluster (engine=ray); default starts Ray on this machine."""
    progress: bool = True
    """Show a progress bar."""
    allow_missing_checkpoint: bool = False
    """Resume a --continuous run whose checkpoint.pt is gone or unreadable, from the initial weights."""
    allow_data_change: bool = False
    """Resume in an output_dir whose saved data hash differs (the questions file was edited)."""


# Fields that do not change what a run computes: resuming may change them freely.
NON_RESULT_FIELDS = {"num_questions", "output_dir", "generation_threads", "allow_config_change", "wandb",
                     "tensorboard", "progress", "ray_address", "device", "data_dir",
                     "colocate", "sync_timeout", "ray_num_cpus", "weight_sync",
                     "allow_missing_checkpoint", "allow_data_change"}

# The most samples one call may draw: far above any published setting (TTRL uses 64), and
# low enough that a typo (--n_votes 1000000) is one line, not an allocation of tens of GB.
MAX_SAMPLES = 4096


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: Config) -> Config:
    """Type- and range-check every field; the first problem becomes a one-line UserError."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind.startswith("bool"):
            _check(isinstance(value, bool), f"--{f.name} must be true or false, got {value!r}")
        elif kind.startswith("int"):
            _check(isinstance(value, int) and not isinstance(value, bool),
                   f"--{f.name} must be an integer, got {value!r}")
        elif kind.startswith("float"):
            _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                   and math.isfinite(value), f"--{f.name} must be a finite number, got {value!r}")
            setattr(cfg, f.name, float(value))
        elif kind.startswith("str"):
            _check(isinstance(value, str) and value != "", f"--{f.name} must be a non-empty string")
    _check(cfg.mode in ("question", "dataset"), f"--mode must be question or dataset, got {cfg.mode!r}")
    for name in ("episodes", "prompts_per_step", "mini_batch_prompts", "eval_every"):
        v = getattr(cfg, name)
        _check(1 <= v <= 1_000_000, f"--{name} must be an integer from 1 to 1000000, got {v}")
    _check(0 <= cfg.warmup_ratio < 1, f"--warmup_ratio must be from 0 to below 1, got {cfg.warmup_ratio}")
    _check(cfg.optimizer in ("adamw", "sgd"), f"--optimizer must be adamw or sgd, got {cfg.optimizer!r}")
    _check(cfg.optimizer == "adamw" or cfg.engine == "local",
           "--optimizer sgd needs --engine local (the scale engine trains with AdamW)")
    _check(cfg.agreement_estimate in ("heldout", "trained"),
           f"--agreement_estimate must be heldout or trained, got {cfg.agreement_estimate!r}")
    _check(cfg.engine in ENGINES, f"--engine must be one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    _check(cfg.adaptation_method in METHODS,
           f"--adaptation_method must be one of {', '.join(METHODS)}, got {cfg.adaptation_method!r}")
    _check(cfg.voting_function in VOTING_FUNCTIONS,
           f"--voting_function must be one of {', '.join(VOTING_FUNCTIONS)}, got {cfg.voting_function!r}")
    dev = cfg.device
    _check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
           f"--device must be one of {DEVICES_HELP}, got {dev!r}")
    _check(0 <= cfg.generation_threads <= 1024,
           f"--generation_threads must be an integer from 0 to 1024, got {cfg.generation_threads}")
    for name in ("n_votes", "n_train", "n_eval"):
        v = getattr(cfg, name)
        _check(v is None or 1 <= v <= MAX_SAMPLES,
               f"--{name} must be an integer from 1 to {MAX_SAMPLES}, got {v}")
    for name in ("num_questions", "max_new_tokens", "micro_batch_size"):
        v = getattr(cfg, name)
        _check(v is None or 1 <= v <= 1_000_000, f"--{name} must be an integer from 1 to 1000000, got {v}")
    _check(cfg.steps_per_question is None or 0 <= cfg.steps_per_question <= 10_000,
           f"--steps_per_question must be an integer from 0 to 10000, got {cfg.steps_per_question}")
    _check(0 <= cfg.lora_rank <= 4096, f"--lora_rank must be an integer from 0 to 4096, got {cfg.lora_rank}")
    _check(cfg.lora_alpha > 0, f"--lora_alpha must be > 0, got {cfg.lora_alpha}")
    _check(0 <= cfg.lora_dropout < 1, f"--lora_dropout must be from 0 to below 1, got {cfg.lora_dropout}")
    names = cfg.lora_target_modules.split(",")
    _check(all(n.strip().isidentifier() for n in names), "--lora_target_modules must be comma-"
           f"separated module names (q_proj,v_proj), got {cfg.lora_target_modules!r}")
    _check(not (cfg.lora_rank and cfg.separate_ref_gpu), "--separate_ref_gpu has no use with "
           "--lora_rank: the reference is the base model with the adapter switched off")
    _check(cfg.lr is None or 0 < cfg.lr <= 10, f"--lr must be > 0 and <= 10, got {cfg.lr}")
    for name in ("temperature", "val_temp"):
        v = getattr(cfg, name)
        _check(0 <= v <= 10, f"--{name} must be from 0 to 10, got {v}")
    for name in ("top_p", "val_top_p", "confidence_keep"):
        v = getattr(cfg, name)
        _check(0 < v <= 1, f"--{name} must be > 0 and <= 1, got {v}")
    for name in ("weight_decay", "kl_coef", "clip_eps", "grad_clip"):
        v = getattr(cfg, name)
        _check(v is None or v >= 0, f"--{name} must be >= 0, got {v}")
    _check(cfg.answer_form in ANSWER_FORMS,
           f"--answer_form must be one of {', '.join(ANSWER_FORMS)}, got {cfg.answer_form!r}")
    _check(cfg.reward in REWARDS, f"--reward must be one of {', '.join(REWARDS)}, got {cfg.reward!r}")
    _check(cfg.reward == "vote" or cfg.adaptation_method in ("ttrl", "ttft"),
           f"--reward {cfg.reward} applies to --adaptation_method ttrl or ttft (and --mode "
           f"dataset), got {cfg.adaptation_method!r}")
    _check(cfg.min_majority_ratio is None or 0 <= cfg.min_majority_ratio <= 1,
           f"--min_majority_ratio must be from 0 to 1, got {cfg.min_majority_ratio}")
    _check(0 <= cfg.kl_backtracks <= 100,
           f"--kl_backtracks must be an integer from 0 to 100, got {cfg.kl_backtracks}")
    for name in ("stop_clip_frac", "stop_kl", "max_step_kl", "max_kl"):
        v = getattr(cfg, name)
        _check(v is None or v >= 0, f"--{name} must be >= 0, got {v}")
    _check(cfg.stop_agreement is None or 0 <= cfg.stop_agreement <= 1,
           f"--stop_agreement must be from 0 (off) to 1, got {cfg.stop_agreement}")
    _check(not cfg.stop_agreement or cfg.advantage_estimator == "grpo",
           "--stop_agreement needs --advantage_estimator grpo (one advantage per response)")
    _check(1 <= cfg.memo_variants <= 4, f"--memo_variants must be from 1 to 4, got {cfg.memo_variants}")
    _check(cfg.energy_tau > 0, f"--energy_tau must be > 0, got {cfg.energy_tau}")
    _check(cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    # the scale engine
    for name, top in (("vllm_num_engines", 1024), ("vllm_tensor_parallel_size", 64),
                      ("actor_num_gpus", 1024), ("ray_num_cpus", 100_000)):
        v = getattr(cfg, name)
        _check(v is None or 1 <= v <= top, f"--{name} must be an integer from 1 to {top}, got {v}")
    _check(cfg.advantage_estimator in ADVANTAGE_ESTIMATORS,
           f"--advantage_estimator must be one of {', '.join(ADVANTAGE_ESTIMATORS)}, "
           f"got {cfg.advantage_estimator!r}")
    _check(cfg.sync_timeout > 0, f"--sync_timeout must be > 0 seconds, got {cfg.sync_timeout}")
    _check(cfg.weight_sync in WEIGHT_SYNCS,
           f"--weight_sync must be one of {', '.join(WEIGHT_SYNCS)}, got {cfg.weight_sync!r}")
    _check(0 < cfg.critic_lr <= 10, f"--critic_lr must be > 0 and <= 10, got {cfg.critic_lr}")
    _check(cfg.value_clip > 0, f"--value_clip must be > 0, got {cfg.value_clip}")
    _check(0 <= cfg.gamma <= 1, f"--gamma must be from 0 to 1, got {cfg.gamma}")
    _check(0 <= cfg.lambd <= 1, f"--lambd must be from 0 to 1, got {cfg.lambd}")
    if cfg.advantage_estimator == "gae":
        _check(cfg.engine == "ray",
               "--advantage_estimator gae needs --engine ray (the local engine has no critic)")
        _check(cfg.adaptation_method == "ttrl", "--advantage_estimator gae applies to "
               f"--adaptation_method ttrl only, got {cfg.adaptation_method!r}")
    _check(not (cfg.engine == "ray" and cfg.lora_rank > 512), "--engine ray serves adapters of "
           f"--lora_rank up to 512 (vLLM's largest max_lora_rank), got {cfg.lora_rank}")
    _check(not (cfg.engine == "ray" and cfg.adaptation_method == "slot"),
           "--adaptation_method slot needs --engine local (it edits the local model's hidden states)")
    if cfg.colocate and cfg.vllm_num_engines is not None and cfg.actor_num_gpus is not None:
        vllm_gpus = cfg.vllm_num_engines * cfg.vllm_tensor_parallel_size
        _check(vllm_gpus == cfg.actor_num_gpus,
               f"--colocate needs vllm_num_engines x vllm_tensor_parallel_size ({vllm_gpus}) "
               f"to equal --actor_num_gpus ({cfg.actor_num_gpus})")
    if cfg.n_votes is not None and cfg.n_train is not None:
        _check(cfg.n_train <= cfg.n_votes,
               f"--n_train ({cfg.n_train}) must not exceed --n_votes ({cfg.n_votes})")
    return cfg


def canonical_names(cfg: Config) -> Config:
    """One spelling per thing, so a resumed run compares equal to the one that started:
    registry names in their registry case, aliases of the embedded model as its name."""
    from sttrl.data.datasets import canonical_dataset
    from sttrl.engines.models import canonical_model

    if cfg.data_path is None:
        cfg.dataset = canonical_dataset(cfg.dataset)
    cfg.model = canonical_model(cfg.model)
    return cfg


DATASET_LR = 5e-7  # the TTRL paper's peak learning rate for dataset-level training
DATASET_WEIGHT_DECAY = 0.01  # TTRL's verl recipe
# Default lr with --lora_rank: this times the full fine-tuning default. LoRA needs a larger lr
# (Schulman et al., "LoRA Without Regret", 2025, found ~10x); uncalibrated for STTRL.
LORA_LR_FACTOR = 10.0


def resolve(cfg: Config, on_gpu: bool) -> Config:
    """Fill device-dependent defaults; returns a new, fully specified config."""
    cfg = dataclasses.replace(cfg)
    canonical_names(cfg)
    big = on_gpu
    if cfg.n_votes is None:
        cfg.n_votes = 64 if big else 16
    if cfg.n_train is None:
        cfg.n_train = min(32 if big else 8, cfg.n_votes)
    if cfg.n_eval is None:
        cfg.n_eval = 16 if big else 8
    if cfg.max_new_tokens is None:
        cfg.max_new_tokens = 3072 if big else 128
    if cfg.actor_num_gpus is None:
        cfg.actor_num_gpus = 2 if big else 1
    if cfg.vllm_num_engines is None:
        # colocated engines fill the actor's GPUs; otherwise one GPU per rank and per engine
        cfg.vllm_num_engines = (cfg.actor_num_gpus // cfg.vllm_tensor_parallel_size
                                if cfg.colocate else 2 if big else 1)
    method = METHODS[cfg.adaptation_method]
    # the development study's values, where it measured them: a CPU, one question at a time
    study = (method.cpu_reset if not big and cfg.mode == "question" and not cfg.continuous
             and cfg.advantage_estimator == "grpo" else {})
    for name, general in (("steps_per_question", method.steps), ("min_majority_ratio", 0.0),
                          ("stop_agreement", 0.0), ("max_step_kl", 0.0), ("max_kl", 0.0)):
        if getattr(cfg, name) is None:
            setattr(cfg, name, study.get(name, general))
    if cfg.prompt_family is None:
        from sttrl.data.prompts import model_family
        cfg.prompt_family = model_family(cfg.model)
    if cfg.weight_decay is None:
        cfg.weight_decay = DATASET_WEIGHT_DECAY if cfg.mode == "dataset" else 0.0
    if cfg.lr is None:
        cfg.lr = (DATASET_LR if cfg.mode == "dataset" else
                  method.continuous_lr if cfg.continuous else study.get("lr", method.lr))
        if cfg.lora_rank and method.trains_weights:
            cfg.lr *= LORA_LR_FACTOR
    if cfg.output_dir is None:
        name = Path(cfg.data_path).stem if cfg.data_path else cfg.dataset
        model = Path(cfg.model.rstrip("/")).name
        suffix = (f"_lora{cfg.lora_rank}" if cfg.lora_rank else "") + \
            ("_continuous" if cfg.continuous else "")
        method = "ttrl-dataset" if cfg.mode == "dataset" else cfg.adaptation_method
        cfg.output_dir = str(Path("runs") / f"{name}_{model}_{method}{suffix}")
    return validate(cfg)
