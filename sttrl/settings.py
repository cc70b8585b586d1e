"""The run's settings split by consumer: each layer gets the part it reads, never the whole
`Config`.

`sttrl.parts.parts(resolved)` builds them once, at the top (`run.py`), from a resolved `Config`;
a field that two parts carry comes from one `Config` field there. Nothing here has a default:
the defaults live in `Config` alone. Like `types`, this module imports no other STTRL module,
so every layer can read it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSettings:
    """What an engine is built from (`LocalEngine(settings, model_path)`, `RayEngine(...)`).

    Frozen and plain, so the scale engine's actors can take it (`ray.common.ActorSettings`)."""

    device: str
    """auto, cpu, cuda or cuda:N (the local engine; Ray places its own workers)."""
    trust_remote_code: bool
    """Allow the model repository's own Python code to run."""
    seed: int
    """Seeds what the engine draws for itself: a LoRA adapter's initial A, vLLM's sampler."""
    lr: float
    """The optimiser's learning rate until `set_lr` or a step's own lr changes it."""
    weight_decay: float
    """AdamW weight decay."""
    optimizer: str
    """adamw, or sgd (plain gradient steps: no moments, so the first step is not lr x sign(g));
    the local engine only."""
    grad_clip: float
    """Gradient-norm clip."""
    micro_batch_size: int
    """Responses per forward/backward chunk in training and scoring."""
    gradient_checkpointing: bool
    """Trade compute for memory in the training forward pass."""
    lora_rank: int
    """> 0: train a rank-R LoRA adapter on frozen base weights (0: every weight trains)."""
    lora_alpha: float
    """LoRA scale numerator (the update is alpha/rank x BA)."""
    lora_dropout: float
    """Dropout on the adapter's input in training forwards."""
    lora_target_modules: str
    """Comma-separated module names that get an adapter."""
    separate_ref_gpu: bool
    """The frozen reference model on its own GPU (bundle) instead of the actor's."""
    generation_threads: int
    """CPU threads while the local engine decodes (0: torch's default)."""
    max_new_tokens: int
    """The longest response any sampling call asks for (vLLM sizes its model length by it)."""
    max_sample_rows: int
    """The most samples one phase asks for (max of n_votes and n_eval): vLLM's batch size."""
    need_logsumexp: bool
    """Samples must carry the logsumexp of the raw logits (energy voting); vLLM does not give
    it, so the scale engine scores the samples once more on the actor when set."""
    actor_num_gpus: int
    """Scale engine: DeepSpeed ZeRO-3 training ranks, one GPU (bundle) each."""
    vllm_num_engines: int
    """Scale engine: vLLM rollout engines; samples are split across them."""
    vllm_tensor_parallel_size: int
    """Scale engine: GPUs per vLLM engine."""
    colocate: bool
    """Scale engine: vLLM engines share the actor's GPUs."""
    sync_timeout: float
    """Scale engine: seconds any Ray call may take before a one-line error."""
    weight_sync: str
    """Scale engine: broadcast or object_store, how full weights reach vLLM."""
    ray_address: str | None
    """Scale engine: the Ray cluster to join (None: start Ray on this machine)."""
    ray_num_cpus: int | None
    """Scale engine: CPUs a locally started Ray may use (None: all of this machine's)."""
    advantage_estimator: str
    """grpo, or gae: the scale engine adds critic ranks that turn rewards into advantages."""
    critic_lr: float
    """gae: the critic's AdamW learning rate."""
    value_clip: float
    """gae: how far one update may move a value from its value when scored."""
    gamma: float
    """gae: discount per token."""
    lambd: float
    """gae: GAE's lambda."""


@dataclass(frozen=True)
class SamplingSettings:
    """How the modes and the methods sample: counts, temperatures, lengths, seeds, prompts."""

    n_votes: int
    """Samples drawn for the vote."""
    n_train: int
    """The first n_train voted samples are trained on."""
    n_eval: int
    """Samples per question for pass@1 before and after."""
    temperature: float
    """Rollout temperature for the vote and training samples."""
    top_p: float
    """Rollout nucleus sampling threshold."""
    val_temp: float
    """Evaluation temperature."""
    val_top_p: float
    """Evaluation nucleus sampling threshold."""
    max_new_tokens: int
    """Response length limit."""
    seed: int
    """The run's seed; each question's derives from it and the question id."""
    prompt_family: str
    """Prompt template family (sttrl/data/prompts.py)."""
    memo_variants: int
    """Prompt phrasings MEMO samples and pools (memo only)."""


@dataclass(frozen=True)
class VoteSettings:
    """How answers become a pseudo-label and rewards."""

    voting_function: str
    """majority, energy or confidence."""
    energy_tau: float
    """Temperature of the softmax over negative energies (energy)."""
    confidence_keep: float
    """Share of the most confident traces that vote (confidence)."""
    confidence_measure: str
    """DeepConf's trace confidence: mean, tail, bottom10 or lowest_group (confidence)."""
    answer_form: str
    """strict or symbolic: decides vote clusters, rewards and grading alike."""
    reward: str
    """vote, oracle or random."""
    label_model: str
    """Whose samples vote the pseudo-label: current (the policy) or base (the initial model)."""


@dataclass(frozen=True)
class UpdateSettings:
    """What a method's update takes: how many steps, their loss, the rules that hold it back."""

    method: str
    """The adaptation method (a key of sttrl.algorithms.METHODS)."""
    steps: int
    """Optimiser steps per question (0: never update)."""
    lr: float
    """Learning rate: SLOT's delta, and the peak of dataset mode's schedule."""
    clip_eps: float
    """PPO/GRPO ratio clip."""
    dual_clip: float
    """Dual-clip PPO's cap on a negative-advantage token's loss, -A x this (0: off)."""
    kl_coef: float
    """Weight of the k3 KL penalty to the frozen initial model."""
    advantage_estimator: str
    """grpo, or gae (the engine's critic turns the rewards into per-token advantages)."""
    min_majority_ratio: float
    """Weak-vote rule: no update below this share of the voting weight (0: off)."""
    min_vote_margin: float
    """Weak-vote rule: no update when the winner leads the runner-up by less than this share
    of the voting weight (0: off)."""
    stop_clip_frac: float | None
    """Adaptive budget: end after the step whose clipped-token share exceeds this."""
    stop_kl: float | None
    """Adaptive budget: end after the step whose KL to the reference exceeds this."""
    stop_agreement: float
    """Adaptive budget: end once the policy agrees with the vote this often (0: off)."""
    agreement_estimate: str
    """How stop_agreement estimates the agreement: heldout (the votes never trained on) or
    trained (the trained samples' in-sample estimate, biased upward after a step)."""
    max_step_kl: float
    """Trust region: undo a step whose per-token KL to the policy before it exceeds this, and
    retry it smaller (0: off)."""
    max_kl: float
    """Trust region: undo a step that takes the per-token KL to the initial model past this
    (0: off)."""
    kl_backtracks: int
    """Trust region: how many smaller retries a step gets before the update ends."""
    mini_batch_prompts: int
    """Dataset mode: questions' worth of samples per optimiser step within a rollout batch."""
    balance_ranks: int
    """Dataset mode: the token-balanced shares each optimiser step takes a slice of (verl's
    data-parallel ranks)."""
    warmup_ratio: float
    """Dataset mode: share of rollout batches with linear lr warm-up before the cosine decay."""


@dataclass(frozen=True)
class LoopSettings:
    """What a mode's loop reads besides sampling and updates: where results go, reset or carry
    on, dataset mode's batches, and the logger."""

    output_dir: str
    """The results folder."""
    continuous: bool
    """Carry the adapted model to the next question instead of resetting."""
    carry_optimizer: bool
    """Continuous: keep the optimiser's moments between questions (else emptied each time)."""
    anchor_rho: float
    """Continuous: after each question theta <- theta0 + rho (theta - theta0) (1: off)."""
    collapse_guard: bool
    """Continuous: roll back when the label-free collapse signals trip (modes/guard.py)."""
    guard_rollback: str
    """Continuous: what the guard rolls back to: last_good or base."""
    allow_missing_checkpoint: bool
    """Resume a continuous run whose checkpoint is gone, from the initial weights."""
    episodes: int
    """Dataset mode: passes over the test set."""
    prompts_per_step: int
    """Dataset mode: questions per rollout batch."""
    eval_every: int
    """Dataset mode: evaluate mean pass@1 every this many rollout batches."""
    progress: bool
    """Show a progress bar."""
    tensorboard: bool
    """Write TensorBoard scalars under output_dir/tb."""
    wandb: bool
    """Log to Weights & Biases."""


@dataclass(frozen=True)
class RunParts:
    """One run's settings, each part for its consumer, built once by `sttrl.parts.parts`."""

    engine: EngineSettings
    """What the engine is built from."""
    sampling: SamplingSettings
    """How the modes and the methods sample."""
    vote: VoteSettings
    """How answers become a pseudo-label and rewards."""
    update: UpdateSettings
    """What the methods' updates take."""
    loop: LoopSettings
    """What the mode's loop reads."""
    record: dict
    """The resolved config as config.json and summary.json record it (data for the outputs,
    never read to decide what runs)."""
