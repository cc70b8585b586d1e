"""One run, top to bottom: resolve the config, take the output folder (a lock, so one run at a
time), guard it against a different experiment, load the questions, split the config into the
parts each layer reads (sttrl/parts.py), build the engine from its part, check the prompts fit
it, hand over to the mode."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from sttrl.config import Config, resolve
from sttrl.data import encode_prompt, format_prompt, load_dataset
from sttrl.engines.base import Engine
from sttrl.errors import UserError, brief
# the folder's guards, also imported from here by callers of run.py
from sttrl.outdir import (check_saved_config, config_sha, leave_no_trace,  # noqa: F401
                          lock_output_dir, missing_folders, prepare_output_dir,
                          remove_stale_temps, save_config, unlock_output_dir)
from sttrl.parts import parts
from sttrl.settings import EngineSettings
from sttrl.types import Example

ARITH_DEFAULT_QUESTIONS = 5
# No tokenizer makes fewer than one token per this many characters of real text, so a prompt
# longer than this times the context is refused before it is tokenised.
MAX_CHARS_PER_TOKEN = 32


def on_gpu(cfg: Config) -> bool:
    """Whether this run gets the GPU defaults (more samples, longer answers)."""
    if cfg.device == "cpu":
        return False
    import torch
    return torch.cuda.is_available()


def check_device(cfg: Config) -> None:
    """--device cuda[:N] needs that GPU (the local engine; Ray places its own workers)."""
    if cfg.engine != "local" or not cfg.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise UserError(f"--device {cfg.device}: CUDA is not available ({why}); "
                        "use --device cpu or auto")
    count = torch.cuda.device_count()
    if ":" in cfg.device and int(cfg.device.split(":")[1]) >= count:
        raise UserError(f"--device {cfg.device}: only {count} GPU(s) are visible "
                        f"(cuda:0 to cuda:{count - 1})")


# ---- questions -------------------------------------------------------------------------------

def load_all_examples(cfg: Config):
    """Every example of the set, and how many of them the run uses (None: all)."""
    arith = cfg.data_path is None and cfg.dataset.upper().startswith("ARITH-TTT")
    n = cfg.num_questions or (ARITH_DEFAULT_QUESTIONS if arith else None)
    examples = load_dataset(name=None if cfg.data_path else cfg.dataset,
                            data_path=cfg.data_path, data_dir=cfg.data_dir,
                            arith_n=n or 100, seed=cfg.seed)
    return examples, n


def load_examples(cfg: Config):
    examples, n = load_all_examples(cfg)
    return examples[:n] if n else examples


def check_references(cfg: Config, examples: list[Example]) -> None:
    """--reward oracle trains on the reference answers: every question needs one."""
    missing = [ex.question.id for ex in examples if ex.answer is None]
    if missing:
        source = cfg.data_path or cfg.dataset
        raise UserError(f"--reward oracle trains on the reference answers, and {source} has "
                        f"none for {len(missing)} question(s) (first: {missing[0]!r}); use "
                        "--reward vote, which needs no labels")


def data_digest(cfg: Config, examples) -> str | None:
    """sha256 of the whole set's ids, prompts, sources, tasks and answers (not of the cut that
    --num_questions takes, which may change). None for ARITH-TTT: the config determines it."""
    if cfg.data_path is None and cfg.dataset.upper().startswith("ARITH-TTT"):
        return None
    h = hashlib.sha256()
    for ex in examples:
        q = ex.question
        for part in (q.id, q.prompt, q.source, q.task, ex.answer or ""):
            h.update(part.encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()


def check_prompts(engine: Engine, examples: list[Example], prompt_family: str,
                  max_new_tokens: int) -> int:
    """Every prompt fits the engine's context with room for max_new_tokens; returns the longest
    prompt's tokens. The character bound comes first, so a huge prompt is never tokenised."""
    context = engine.max_context
    longest = 0
    for ex in examples:
        q = ex.question
        prompt = format_prompt(q, engine.tokenizer, prompt_family)
        if context and len(prompt) > MAX_CHARS_PER_TOKEN * context:
            raise UserError(f"question {q.id!r}: the prompt is {len(prompt):,} characters, far "
                            f"beyond the model's context of {context} tokens")
        tokens = len(encode_prompt(prompt, engine.tokenizer))
        if context and tokens + max_new_tokens > context:
            raise UserError(f"question {q.id!r}: the prompt is {tokens} tokens, and with "
                            f"--max_new_tokens {max_new_tokens} that passes the model's "
                            f"context of {context} tokens; lower --max_new_tokens or leave the "
                            "question out")
        longest = max(longest, tokens)
    return longest


def available_memory(device: str) -> int | None:
    """Free bytes where the local engine samples: the GPU's free memory, else MemAvailable."""
    if device.startswith("cuda"):
        import torch
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_sample_memory(engine: Engine, rows: int, prompt_tokens: int,
                        max_new_tokens: int) -> None:
    """The largest sampling call (`rows` samples of the longest prompt) fits in free memory,
    where the engine can tell what it needs."""
    need = engine.sampling_memory(rows, prompt_tokens, max_new_tokens)
    if need is None:
        return
    nbytes, device = need
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise UserError(f"sampling {rows} answers of up to {max_new_tokens} tokens needs about "
                        f"{nbytes / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on "
                        f"{device}; lower --n_votes / --n_eval or --max_new_tokens")


def check_dataset_checkpoint(path: Path) -> None:
    """A dataset-mode checkpoint that cannot be read is one line, before the engine loads
    (memory-mapped: the tensors are not read)."""
    if not (path.exists() or path.is_symlink()):
        return
    import torch

    try:
        state = torch.load(path, weights_only=False, map_location="cpu", mmap=True)
        if not isinstance(state, dict) or not {"engine", "step", "evals"} <= set(state) or \
                not isinstance(state["engine"], dict) or \
                not {"model", "adapter"} & set(state["engine"]):
            raise ValueError("not an STTRL dataset-mode checkpoint")
    except Exception as err:  # RuntimeError (bad zip), pickle errors, EOFError, OSError...
        raise UserError(f"{path} cannot be read ({brief(err)}); "
                        "delete it, steps.jsonl and evals.jsonl to start over") from None


# ---- the run ---------------------------------------------------------------------------------

def build_engine(kind: str, settings: EngineSettings, model: str) -> Engine:
    """The engine `kind` names (--engine), built from its settings on the model `model`
    (--model) resolves to."""
    from sttrl.engines.models import resolve_model

    if kind == "ray":
        from sttrl.engines.ray.engine import RayEngine as engine_class
    else:
        from sttrl.engines.local import LocalEngine as engine_class
    return engine_class(settings, resolve_model(model))


def tokenizer_family(cfg: Config, chosen: bool) -> str:
    """The resolved --prompt_family, settled by the model's tokenizer where the name cannot tell
    (a base model has no chat template). The engine later loads the same files again (cached:
    a GGUF's conversion, a hub model's download)."""
    from sttrl.data.prompts import FAMILIES, settle_family
    from sttrl.engines.models import load_tokenizer, resolve_model

    if FAMILIES.get(cfg.prompt_family) not in ("system", "user"):
        return cfg.prompt_family
    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.trust_remote_code)
    return settle_family(cfg.prompt_family, chosen, bool(getattr(tokenizer, "chat_template", None)),
                         cfg.model)


def run(cfg: Config) -> dict:
    """Run (or resume) a whole experiment; returns the summary that is also written to disk."""
    chosen = cfg.prompt_family is not None  # else guessed from the name, checked by the tokenizer
    cfg = resolve(cfg, on_gpu(cfg))
    check_device(cfg)
    out = Path(cfg.output_dir)
    made = missing_folders(out)
    prepare_output_dir(out)
    lock = lock_output_dir(out)
    try:
        remove_stale_temps(out)
        return run_locked(cfg, out, family_chosen=chosen)
    except BaseException:
        leave_no_trace(out, made)
        raise
    finally:
        unlock_output_dir(lock)


def run_locked(cfg: Config, out: Path, family_chosen: bool) -> dict:
    """The run in its locked folder. Below here nothing sees `cfg`: each layer gets its part."""
    everything, n = load_all_examples(cfg)
    cfg = dataclasses.replace(cfg, prompt_family=tokenizer_family(cfg, family_chosen))
    examples = everything[:n] if n else everything
    digest = data_digest(cfg, everything)
    run_parts = parts(cfg)
    config = run_parts.record
    check_saved_config(out, config, cfg.allow_config_change, digest, cfg.allow_data_change)
    if cfg.reward == "oracle":
        check_references(cfg, examples)

    def start() -> Engine:
        """The engine, once it has loaded and every prompt fits it; only then is the config
        saved, so a failed start leaves the folder as it was."""
        engine = build_engine(cfg.engine, run_parts.engine, cfg.model)
        try:
            longest = check_prompts(engine, examples, cfg.prompt_family, cfg.max_new_tokens)
            check_sample_memory(engine, run_parts.engine.max_sample_rows, longest,
                                cfg.max_new_tokens)
            save_config(out, config, digest)
        except BaseException:
            engine.close()
            raise
        return engine

    if cfg.mode == "dataset":
        from sttrl.modes.dataset import run_dataset
        check_dataset_checkpoint(out / "checkpoint.pt")
        engine = start()
        try:
            return run_dataset(run_parts, examples, engine)
        finally:
            engine.close()
    from sttrl.modes.question import run_questions
    summary = run_questions(run_parts, examples, start,
                            {ex.question.id for ex in everything}, config_sha(config, digest))
    save_config(out, config, digest)  # again: with nothing left to run, no engine saved it
    return summary
