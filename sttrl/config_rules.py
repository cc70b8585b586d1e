"""The options' rules that involve two or more fields: each takes the config and returns why
it is not allowed, or None. `sttrl.config.validate` runs them in order after every field's
own rule (`RULES`); the first problem is the run's one-line error."""
from __future__ import annotations


def lora_has_no_separate_reference(cfg) -> str | None:
    if cfg.lora_rank and cfg.separate_ref_gpu:
        return ("--separate_ref_gpu has no use with --lora_rank: the reference is the base model "
                "with the adapter switched off")
    return None


def controls_need_a_trained_label(cfg) -> str | None:
    if cfg.reward != "vote" and cfg.adaptation_method not in ("ttrl", "ttft"):
        return (f"--reward {cfg.reward} applies to --adaptation_method ttrl or ttft (and --mode "
                f"dataset), got {cfg.adaptation_method!r}")
    return None


def agreement_needs_grpo(cfg) -> str | None:
    if cfg.stop_agreement and cfg.advantage_estimator != "grpo":
        return "--stop_agreement needs --advantage_estimator grpo (one advantage per response)"
    return None


def sgd_needs_the_local_engine(cfg) -> str | None:
    if cfg.optimizer != "adamw" and cfg.engine != "local":
        return "--optimizer sgd needs --engine local (the scale engine trains with AdamW)"
    return None


def gae_needs_the_scale_engine_and_ttrl(cfg) -> str | None:
    if cfg.advantage_estimator != "gae":
        return None
    if cfg.engine != "ray":
        return "--advantage_estimator gae needs --engine ray (the local engine has no critic)"
    if cfg.adaptation_method != "ttrl":
        return ("--advantage_estimator gae applies to --adaptation_method ttrl only, got "
                f"{cfg.adaptation_method!r}")
    return None


def scale_engine_limits(cfg) -> str | None:
    if cfg.engine == "ray" and cfg.lora_rank > 512:
        return ("--engine ray serves adapters of --lora_rank up to 512 (vLLM's largest "
                f"max_lora_rank), got {cfg.lora_rank}")
    if cfg.engine == "ray" and cfg.adaptation_method == "slot":
        return "--adaptation_method slot needs --engine local (it edits the local model's hidden states)"
    return None


def colocated_engines_fill_the_actor(cfg) -> str | None:
    if cfg.colocate and cfg.vllm_num_engines is not None and cfg.actor_num_gpus is not None:
        vllm_gpus = cfg.vllm_num_engines * cfg.vllm_tensor_parallel_size
        if vllm_gpus != cfg.actor_num_gpus:
            return (f"--colocate needs vllm_num_engines x vllm_tensor_parallel_size ({vllm_gpus}) "
                    f"to equal --actor_num_gpus ({cfg.actor_num_gpus})")
    return None


def trained_samples_are_voted(cfg) -> str | None:
    if cfg.n_votes is not None and cfg.n_train is not None and cfg.n_train > cfg.n_votes:
        return f"--n_train ({cfg.n_train}) must not exceed --n_votes ({cfg.n_votes})"
    return None


def continuous_is_per_question(cfg) -> str | None:
    if cfg.continuous and cfg.mode == "dataset":
        return ("--continuous applies to --mode question; --mode dataset already trains one "
                "model over the whole set (drop --continuous)")
    return None


def base_labels_need_the_local_engine(cfg) -> str | None:
    if cfg.label_model == "base" and cfg.engine != "local":
        return "--label_model base needs --engine local (vLLM samples only the adapted weights)"
    if cfg.label_model == "base" and cfg.adaptation_method not in ("ttrl", "ttft"):
        return (f"--label_model base applies to --adaptation_method ttrl or ttft, got "
                f"{cfg.adaptation_method!r}")
    return None


def dataset_batches_split_evenly(cfg) -> str | None:
    """verl's own checks: a rollout batch cuts into whole mini-batches, and a mini-batch's
    samples into equal slices of every data-parallel share."""
    if cfg.mode != "dataset":
        return None
    if cfg.prompts_per_step % cfg.mini_batch_prompts:
        return (f"--prompts_per_step ({cfg.prompts_per_step}) must be a multiple of "
                f"--mini_batch_prompts ({cfg.mini_batch_prompts})")
    rows = cfg.mini_batch_prompts * (cfg.n_train or 0)
    if cfg.balance_ranks is not None and rows and rows % cfg.balance_ranks:
        return (f"--mini_batch_prompts x --n_train ({rows}) must be a multiple of "
                f"--balance_ranks ({cfg.balance_ranks})")
    return None


def dual_clip_is_dataset_modes(cfg) -> str | None:
    if cfg.dual_clip and cfg.mode != "dataset":
        return "--dual_clip applies to --mode dataset (the per-question update does not take it)"
    return None


CROSS_FIELD = (continuous_is_per_question, lora_has_no_separate_reference,
               controls_need_a_trained_label, agreement_needs_grpo, sgd_needs_the_local_engine,
               gae_needs_the_scale_engine_and_ttrl, scale_engine_limits,
               colocated_engines_fill_the_actor, trained_samples_are_voted,
               base_labels_need_the_local_engine, dataset_batches_split_evenly,
               dual_clip_is_dataset_modes)
