"""LoRA adapters through `peft`, for the local engine and the scale engine's trainer ranks.

With --lora_rank R > 0 the base weights are frozen and only a rank-R adapter on the target
projections trains. peft initialises B = 0, so a fresh adapter leaves the policy exactly the base
model, and `disable_adapter()` gives the base model back without a second copy of the weights:
that is the KL reference. Both engines build their adapter here, so they train the same one.
"""
from __future__ import annotations

import re

import torch

from sttrl.errors import UserError
from sttrl.settings import EngineSettings

# The adapter ranks vLLM can be started for (its LoRAConfig.max_lora_rank); an adapter of a
# smaller rank is served by the next one up.
VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def target_modules(spec: str) -> list[str]:
    """The comma-separated --lora_target_modules value as a list of module names."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def lora_config(settings: EngineSettings):
    from peft import LoraConfig

    s = settings
    return LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                      target_modules=target_modules(s.lora_target_modules), bias="none",
                      task_type="CAUSAL_LM")


def check_targets(model, names: list[str]) -> None:
    """A target that names no module is a typo or another model family: say so, in one line
    (peft only complains when none of them matches)."""
    present = {full.rsplit(".", 1)[-1] for full, _ in model.named_modules()}
    missing = [n for n in names if n not in present]
    if missing:
        linear = sorted({full.rsplit(".", 1)[-1] for full, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise UserError(f"--lora_target_modules: {', '.join(missing)} not found in this model "
                        f"(its linear layers: {', '.join(linear)})")


def wrap(model, settings: EngineSettings):
    """`model` with a fresh fp32 adapter (B = 0) and every base weight frozen."""
    from peft import get_peft_model

    check_targets(model, target_modules(settings.lora_target_modules))
    model.requires_grad_(False)
    # peft keeps adapters of a bf16 base in fp32 (autocast_adapter_dtype); the cast below only
    # makes that explicit: Adam's small steps need fp32 whatever the base is stored in.
    # A's random init from the run's seed: every engine of a run, and every run with that seed,
    # starts from the same adapter, whatever else drew from torch's generator before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        wrapped = get_peft_model(model, lora_config(settings))
    for p in wrapped.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return wrapped


def set_dropout(model, on: bool) -> None:
    """Switch the adapter's dropout on only for training forwards: the engines keep the model
    in eval mode otherwise, so rollouts, scoring and old log-probs see the undropped policy."""
    for name, module in model.named_modules():
        if name.endswith("lora_dropout"):
            module.train(on)


def adapter_state(model) -> dict:
    """The adapter's tensors (peft's names, on the CPU): all a checkpoint or vLLM needs."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise UserError(f"the checkpoint's adapter does not fit this model ({unexpected[0]}, ...); "
                        "was it saved with other --lora_rank or --lora_target_modules?")


def weights_state(model, rank: int) -> dict:
    """A checkpoint's weights: the adapter alone with LoRA (rank > 0), else every weight."""
    return {"adapter": adapter_state(model)} if rank else {"model": model.state_dict()}


def load_weights_state(model, state: dict, rank: int) -> None:
    if bool(rank) != ("adapter" in state):
        held = "a LoRA adapter" if "adapter" in state else "full weights"
        raise UserError(f"the checkpoint holds {held}, which this run (--lora_rank {rank}) "
                        "cannot resume; resume with the --lora_rank it was saved with")
    if rank:
        load_adapter_state(model, state["adapter"])
    else:
        model.load_state_dict(state["model"])


def vllm_max_rank(rank: int) -> int:
    return next(r for r in VLLM_MAX_RANKS if r >= rank)


def peft_key(name: str) -> str:
    """A trainable parameter's name in the wrapped model -> its key in a saved adapter (peft
    drops the adapter's own name, "default")."""
    return re.sub(r"\.(lora_[AB])\.default\.", r".\1.", name)


def adapter_config_dict(settings: EngineSettings, base_model_path: str) -> dict:
    """The adapter_config.json that peft and vLLM read next to adapter_model.safetensors."""
    out = lora_config(settings).to_dict()
    out["base_model_name_or_path"] = base_model_path
    out["target_modules"] = sorted(out["target_modules"])
    for k, v in out.items():  # sets and enums are not JSON
        if isinstance(v, set):
            out[k] = sorted(v)
        elif hasattr(v, "value"):
            out[k] = v.value
    return out
