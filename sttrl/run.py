"""One run, top to bottom: resolve the config, guard the output folder, load the questions,
build the engine, hand over to the mode."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sttrl.config import NON_RESULT_FIELDS, Config, resolve
from sttrl.data import load_dataset
from sttrl.errors import UserError
from sttrl.files import write_json_atomic

ARITH_DEFAULT_QUESTIONS = 5


def on_gpu(cfg: Config) -> bool:
    """Whether this run gets the GPU defaults (more samples, longer answers)."""
    if cfg.device == "cpu":
        return False
    import torch
    return torch.cuda.is_available()


def build_engine(cfg: Config):
    """The engine `cfg.engine` names, on the model `cfg.model` resolves to."""
    from sttrl.engines.models import resolve_model

    if cfg.engine == "ray":
        from sttrl.engines.ray.engine import RayEngine as engine_class
    else:
        from sttrl.engines.local import LocalEngine as engine_class
    return engine_class(cfg, resolve_model(cfg.model))


def check_saved_config(out: Path, config: dict, allow_change: bool) -> None:
    """Refuse to mix two different experiments' results in one folder."""
    path = out / "config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        # an option added since the run started counts as unchanged if it has its default
        defaults = {f.name: f.default for f in dataclasses.fields(Config)}
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
        diff = sorted(k for k in set(saved) | set(config)
                      if k not in NON_RESULT_FIELDS and saved.get(k) != config.get(k))
        if diff and not allow_change:
            raise UserError(f"{out} holds a run with a different config ({', '.join(diff)}); "
                            "use another --output_dir or pass --allow_config_change")
    write_json_atomic(path, config)


def load_examples(cfg: Config):
    arith = cfg.data_path is None and cfg.dataset.upper().startswith("ARITH-TTT")
    n = cfg.num_questions or (ARITH_DEFAULT_QUESTIONS if arith else None)
    examples = load_dataset(name=None if cfg.data_path else cfg.dataset,
                            data_path=cfg.data_path, data_dir=cfg.data_dir,
                            arith_n=n or 100, seed=cfg.seed)
    return examples[:n] if n else examples


def run(cfg: Config) -> dict:
    """Run (or resume) a whole experiment; returns the summary that is also written to disk."""
    cfg = resolve(cfg, on_gpu(cfg))
    examples = load_examples(cfg)
    out = Path(cfg.output_dir)
    check_saved_config(out, dataclasses.asdict(cfg), cfg.allow_config_change)
    if cfg.mode == "dataset":
        from sttrl.modes.dataset import run_dataset
        engine = build_engine(cfg)
        try:
            return run_dataset(cfg, examples, engine)
        finally:
            engine.close()
    from sttrl.modes.question import run_questions
    return run_questions(cfg, examples, lambda: build_engine(cfg))
