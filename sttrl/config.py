"""The run configuration: one dataclass, every field documented; YAML files and flags fill it.

Fields left as None take a device-dependent default in `resolve` (a GPU affords more samples).
`validate` checks each field against its rule in `RULES` (the table below the fields) and the
rules that tie fields together (`CROSS_FIELD`, in `sttrl/config_rules.py`). Only the top of a run reads a `Config`:
`sttrl.parts.parts` splits the resolved one into the settings each layer reads.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from sttrl.algorithms import METHODS
from sttrl.checks import Choice, Range, cuda_index, integers, module_names, type_problem
from sttrl.config_rules import CROSS_FIELD
from sttrl.errors import UserError
from sttrl.rewards import ANSWER_FORMS, REWARDS
from sttrl.rewards.vote import CONFIDENCE_MEASURES

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
    """How many questions from the start of the set (default: all; ARITH-TTT generates 5, at most 100,000)."""
    model: str = "SmolLM2-135M-Instruct"
    """Hugging Face id, local directory or local GGUF file (converted once, cached); the default is the embedded offline model."""
    prompt_family: str | None = None
    """Prompt template family (qwen-math, qwen, llama, smollm, default, plain); guessed from --model, plain when its tokenizer has no chat template."""
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
    """mode=dataset: questions' worth of samples per optimiser step within a rollout batch (TTRL's verl recipe: 1, so 8 steps per batch of 8); the steps share the batch's old log-probs."""
    balance_ranks: int | None = None
    """mode=dataset: the data-parallel shares verl balances a rollout batch's samples over by token count before cutting mini-batches, so a step mixes questions (default: TTRL's 8 GPUs, or gcd(8, mini_batch_prompts x n_train) where 8 does not divide it); 1: step k holds questions k*m..k*m+m-1."""
    eval_every: int = 5
    """mode=dataset: evaluate mean pass@1 every this many steps (and before and after)."""
    warmup_ratio: float = 0.03
    """mode=dataset: share of rollout batches (verl steps the lr once per batch) with linear lr warm-up from 0 before the cosine decay."""
    adaptation_method: str = "ttrl"
    """ttrl (per-question GRPO), ttft, slot or memo."""
    voting_function: str = "majority"
    """majority, energy or confidence: how samples are weighted in the vote."""
    energy_tau: float = 1.0
    """Temperature of the softmax over negative energies (voting_function=energy)."""
    confidence_keep: float = 1.0
    """Share of most-confident traces that vote (voting_function=confidence)."""
    confidence_measure: str = "mean"
    """DeepConf's trace confidence (voting_function=confidence): mean over all tokens, tail (last 2048 tokens), bottom10 (mean of the lowest tenth of the 2048-token sliding windows) or lowest_group (the lowest window); all equal the mean under 2048 tokens."""
    answer_form: str = "strict"
    """strict (against a plain-number reference only a plain number counts: "9 - 4" is not 5) or symbolic (math-verify's equivalence); decides votes, rewards and grading alike."""
    reward: str = "vote"
    """vote (agreement with the pseudo-label), oracle (the reference answer: an upper bound, marked in every output) or random (the vote's positive rate, no signal: the null)."""
    min_majority_ratio: float | None = None
    """Weak-vote rule: skip the update when the winning cluster holds less than this share of the voting weight (0: never skip; default: the method's CPU study value in reset mode, else 0)."""
    min_vote_margin: float | None = None
    """Weak-vote rule: skip the update when the winner leads the runner-up by less than this share of the voting weight (0: never skip; default: the method's CPU study value in reset mode, else 0)."""
    stop_clip_frac: float | None = None
    """Adaptive budget: end a question's update after the step whose clipped-token share exceeds this (None: take every step)."""
    stop_kl: float | None = None
    """Adaptive budget: end a question's update after the step whose KL to the reference exceeds this (None: no KL budget)."""
    max_step_kl: float | None = None
    """Trust region: a step whose per-token KL to the policy before it exceeds this is undone and retried smaller (0: no step budget; default: 0.05 for ttrl in question mode with GRPO, else 0)."""
    max_kl: float | None = None
    """Trust region: a step that takes the per-token KL to the initial model past this is undone and retried smaller (0: no budget; default: 0.2 for ttrl in question mode with GRPO, else 0)."""
    kl_backtracks: int = 4
    """Trust region: how often an overshooting step is undone and retried smaller before the question's update ends."""
    agreement_estimate: str = "heldout"
    """How --stop_agreement estimates the policy's agreement with the vote: heldout (importance weights of the votes after n_train, never trained on, measured after each step) or trained (the trained samples' own, from the step's forward pass)."""
    stop_agreement: float | None = None
    """Adaptive budget: end a question's update once the policy's estimated share of answers agreeing with the vote (estimated as --agreement_estimate says) reaches this (0: off; default: the method's CPU study value in reset mode, else off)."""
    memo_variants: int = 2
    """Prompt phrasings pooled into MEMO's marginal (adaptation_method=memo; 1 to 4)."""
    continuous: bool = False
    """Carry adapted weights to the next question instead of resetting (the options below say how)."""
    carry_optimizer: bool = False
    """--continuous: carry the optimiser's moments and step count to the next question too (default: emptied at every question, as a reset empties them)."""
    label_model: str | None = None
    """--continuous: whose samples vote the pseudo-label: current (the adapted policy) or base (the initial model: LoRA's adapter off, else the frozen reference); trained samples come from the current policy either way (default: base for ttrl and ttft on the local engine, else current)."""
    anchor_rho: float = 1.0
    """--continuous: after each question pull the weights toward the initial ones, theta0 + rho (theta - theta0) (1: off, 0: a reset)."""
    collapse_guard: bool = True
    """--continuous: watch label-free signals over the last questions (one answer winning on different questions, few distinct answers, unanswered samples, KL to the base) and roll back when one trips."""
    guard_rollback: str = "last_good"
    """--collapse_guard: roll back to the weights after the last question that passed a full window (last_good: one more copy of the weights) or to the initial ones (base)."""
    n_votes: int | None = None
    """Samples drawn for the vote (default 64 on GPU, 16 on CPU)."""
    n_train: int | None = None
    """The first n_train voted samples are trained on (default 32 on GPU, 8 on CPU)."""
    n_eval: int | None = None
    """Samples per question for pass@1 before and after (default 16 on GPU, 8 on CPU)."""
    steps_per_question: int | None = None
    """Optimiser steps per question (default 3; 5 for slot); 0 never updates, so before and after are both the untouched model: a base-model run for `sttrl report`."""
    lr: float | None = None
    """Learning rate (default 1e-5 for ttrl and memo, 1e-4 for ttft, for slot 0.1 x min(1, hidden width / 1536): 0.0375 on the embedded model; x10, uncalibrated, with --lora_rank except slot)."""
    weight_decay: float | None = None
    """AdamW weight decay (default 0.0 per question, 0.01 with mode=dataset, as TTRL)."""
    clip_eps: float = 0.2
    """PPO/GRPO ratio clip."""
    dual_clip: float | None = None
    """Dual-clip PPO: a negative-advantage token's loss is capped at -A x this (> 1; 0: off; default 3 with mode=dataset, as verl's clip_ratio_c, else off)."""
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
    """Seeds sampling (0 to 2**32 - 1); each question's seed derives from it and the question id."""
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
BIG = 1_000_000  # the bound of counts that have no natural one


def off_or_above_one(name: str, value: float) -> str | None:
    return None if value == 0 or value > 1 else f"--{name} must be 0 (off) or above 1, got {value}"


# Each field's allowed values: rule(name, value) -> why not, or None (a None value, "take the
# default", is always allowed). Checks that involve two fields are CROSS_FIELD's (sttrl/config_rules.py).
RULES = {
    "mode": Choice(("question", "dataset"), "question or dataset"),
    "dual_clip": off_or_above_one,
    **dict.fromkeys(("episodes", "prompts_per_step", "mini_batch_prompts", "eval_every",
                     "balance_ranks",
                     "num_questions", "max_new_tokens", "micro_batch_size"), integers(1, BIG)),
    "warmup_ratio": Range(0, 1, hi_open=True),
    "engine": Choice(ENGINES),
    "adaptation_method": Choice(tuple(METHODS)),
    "voting_function": Choice(VOTING_FUNCTIONS),
    "confidence_measure": Choice(CONFIDENCE_MEASURES),
    "device": Choice(("auto", "cpu", "cuda"), f"one of {DEVICES_HELP}", also=cuda_index),
    "generation_threads": integers(0, 1024),
    **dict.fromkeys(("n_votes", "n_train", "n_eval"), integers(1, MAX_SAMPLES)),
    "steps_per_question": integers(0, 10_000),
    "lora_rank": integers(0, 4096),
    "lora_alpha": Range(0, lo_open=True),
    "lora_dropout": Range(0, 1, hi_open=True),
    "lora_target_modules": module_names,
    "lr": Range(0, 10, lo_open=True),
    **dict.fromkeys(("temperature", "val_temp"), Range(0, 10)),
    **dict.fromkeys(("top_p", "val_top_p", "confidence_keep"), Range(0, 1, lo_open=True)),
    **dict.fromkeys(("weight_decay", "kl_coef", "clip_eps", "grad_clip", "stop_clip_frac",
                     "stop_kl", "max_step_kl", "max_kl"), Range(0)),
    "seed": integers(0, 2**32 - 1),  # what torch's generators take, with room for offsets
    "kl_backtracks": integers(0, 100),
    "agreement_estimate": Choice(("heldout", "trained"), "heldout or trained"),
    "optimizer": Choice(("adamw", "sgd"), "adamw or sgd"),
    "answer_form": Choice(ANSWER_FORMS),
    "reward": Choice(REWARDS),
    **dict.fromkeys(("min_majority_ratio", "min_vote_margin"), Range(0, 1)),
    "stop_agreement": Range(0, 1, lo_text="0 (off)"),
    "memo_variants": Range(1, 4),
    "label_model": Choice(("current", "base"), "current or base"),
    "anchor_rho": Range(0, 1),
    "guard_rollback": Choice(("last_good", "base"), "last_good or base"),
    "energy_tau": Range(0, lo_open=True),
    **dict.fromkeys(("vllm_num_engines", "actor_num_gpus"), integers(1, 1024)),
    "vllm_tensor_parallel_size": integers(1, 64),
    "ray_num_cpus": integers(1, 100_000),
    "advantage_estimator": Choice(ADVANTAGE_ESTIMATORS),
    "sync_timeout": Range(0, lo_open=True, unit=" seconds"),
    "weight_sync": Choice(WEIGHT_SYNCS),
    "critic_lr": Range(0, 10, lo_open=True),
    "value_clip": Range(0, lo_open=True),
    **dict.fromkeys(("gamma", "lambd"), Range(0, 1)),
}


@functools.cache
def field_kinds() -> dict[str, type]:
    """Each field's type without its None: bool, int, float or str (the CLI casts to it)."""
    hints = typing.get_type_hints(Config)
    return {f.name: next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],)
                         if t is not type(None)) for f in fields(Config)}


def option_problem(name: str, value) -> str | None:
    """Why `value` is not allowed for the field `name` on its own (its type, then its rule)."""
    if value is None:
        return None
    kind = field_kinds()[name]
    problem = type_problem(name, kind, value)
    if problem is None and name in RULES:
        problem = RULES[name](name, float(value) if kind is float else value)
    return problem


def validate(cfg: Config) -> Config:
    """Check every field's type and RULES, then the CROSS_FIELD rules; the first problem is a
    one-line UserError. Numbers of float fields become floats."""
    for name, kind in field_kinds().items():
        problem = option_problem(name, getattr(cfg, name))
        if problem:
            raise UserError(problem)
        if kind is float and getattr(cfg, name) is not None:
            setattr(cfg, name, float(getattr(cfg, name)))
    for rule in CROSS_FIELD:
        problem = rule(cfg)
        if problem:
            raise UserError(problem)
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
DATASET_RANKS = 8  # TTRL's scripts: trainer.n_gpus_per_node=8, one data-parallel rank each
DATASET_DUAL_CLIP = 3.0  # verl's clip_ratio_c, which its policy loss always applies
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
    trust = (method.trust if cfg.mode == "question" and cfg.advantage_estimator == "grpo"
             else {})
    for name, general in (("steps_per_question", method.steps), ("min_majority_ratio", 0.0),
                          ("min_vote_margin", 0.0), ("stop_agreement", 0.0),
                          ("max_step_kl", trust.get("max_step_kl", 0.0)),
                          ("max_kl", trust.get("max_kl", 0.0))):
        if getattr(cfg, name) is None:
            setattr(cfg, name, study.get(name, general))
    if cfg.label_model is None:  # in reset mode the current model is the base at vote time
        cfg.label_model = ("base" if cfg.continuous and cfg.engine == "local" and cfg.mode ==
                           "question" and cfg.adaptation_method in ("ttrl", "ttft") else "current")
    if cfg.prompt_family is None:
        from sttrl.data.prompts import model_family
        cfg.prompt_family = model_family(cfg.model)
    if cfg.balance_ranks is None:
        cfg.balance_ranks = math.gcd(DATASET_RANKS, cfg.mini_batch_prompts * cfg.n_train)
    if cfg.dual_clip is None:
        cfg.dual_clip = DATASET_DUAL_CLIP if cfg.mode == "dataset" else 0.0
    if cfg.weight_decay is None:
        cfg.weight_decay = DATASET_WEIGHT_DECAY if cfg.mode == "dataset" else 0.0
    if cfg.lr is None:
        cfg.lr = (DATASET_LR if cfg.mode == "dataset" else
                  method.continuous_lr if cfg.continuous else study.get("lr", method.lr))
        if cfg.adaptation_method == "slot":  # scaled to the model's width (algorithms/slot.py)
            from sttrl.algorithms.slot import default_lr
            from sttrl.engines.models import hidden_width
            cfg.lr = default_lr(cfg.lr, hidden_width(cfg.model))
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
