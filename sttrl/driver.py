"""The per-question driver: for each question, evaluate, adapt, evaluate again, reset, record.

    question -> samples -> answers -> vote -> rewards -> update -> evaluation -> results

The reference answer enters only `evaluate`; the adaptation methods receive a `Question`,
which has no answer field.
"""
from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from sttrl.config import NON_RESULT_FIELDS, Config, resolve
from sttrl.data import format_prompt, load_dataset
from sttrl.errors import UserError
from sttrl.reporting.results import ResultsFile, summarize, write_json_atomic
from sttrl.rewards import extract_answer
from sttrl.rewards.metrics import label_accuracy, maj_at_n, pass_at_1, reward_accuracy

ARITH_DEFAULT_QUESTIONS = 5
MAX_ANSWER_CHARS = 200  # answers kept in results.jsonl are cut to this length


class Timer:
    """Accumulates wall seconds per phase: `with timer("train"): ...`."""

    def __init__(self):
        self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


def question_seed(seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on order, so a resumed run samples the same."""
    return (seed * 1_000_003 + zlib.crc32(question_id.encode())) % (2**31 - 1)


def method_adapt(name: str):
    """The method's `adapt(engine, question, prompt, cfg, seed, timer)`; imported on use."""
    import importlib
    return importlib.import_module(f"sttrl.algorithms.{name}").adapt


def sample_answers(engine, prompt: str, task: str, n: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int) -> list[str | None]:
    samples = engine.generate(prompt, n, temperature, top_p, max_new_tokens, seed)
    return [extract_answer(s.text, task) for s in samples]


def evaluate(reference: str, task: str, before: list, after: list, adapted: dict) -> dict:
    """Every metric that needs the ground truth, in one place."""
    n_train = len(adapted["rewards"])
    return {
        "pass@1_before": pass_at_1(before, reference, task),
        "pass@1_after": pass_at_1(after, reference, task),
        "maj@N_before": maj_at_n(adapted["answers"], reference, task),
        "label_correct": label_accuracy(adapted["label"], reference, task),
        "reward_accuracy": reward_accuracy(adapted["rewards"], adapted["answers"][:n_train],
                                           reference, task),
    }


def cut(answers: list) -> list:
    return [a if a is None else a[:MAX_ANSWER_CHARS] for a in answers]


def run_question(engine, example, index: int, cfg: Config) -> dict:
    """Evaluate, adapt and evaluate again; the caller resets or carries the weights on."""
    q = example.question
    timer = Timer()
    prompt = format_prompt(q, engine.tokenizer, cfg.prompt_family)
    seed = question_seed(cfg.seed, q.id)
    eval_args = (prompt, q.task, cfg.n_eval, cfg.val_temp, cfg.val_top_p, cfg.max_new_tokens)
    with timer("eval"):
        # Before and after share a sampling seed: a paired comparison with less noise.
        before = sample_answers(engine, *eval_args, seed + 1)
    adapted = method_adapt(cfg.adaptation_method)(engine, q, prompt, cfg, seed, timer)
    with timer("eval"):
        after = sample_answers(engine, *eval_args, seed + 1)
    metrics = evaluate(example.answer, q.task, before, after, adapted)
    stats = adapted["vote"]
    rewards = adapted["rewards"]
    record = {
        "index": index,
        "id": q.id,
        "pseudo_label": adapted["label"],
        "vote": {"majority_ratio": stats.majority_ratio, "n_voting": stats.n_voting,
                 "n_none": stats.n_none, "clusters": stats.cluster_counts},
        "rewards": {"n": len(rewards), "positive": sum(r > 0 for r in rewards),
                    "mean": sum(rewards) / len(rewards) if rewards else 0.0},
        "skipped": adapted["skip_reason"] is not None,
        "skip_reason": adapted["skip_reason"],
        "flagged": adapted["label"] is None,
        "train": adapted["train"],
        "answers_before": cut(before),
        "answers_after": cut(after),
        **metrics,
    }
    for key in ("method", "extra"):
        if key in adapted:
            record[key] = adapted[key]
    record["seconds"] = dict(timer.seconds)
    return record


def build_engine(cfg: Config):
    from sttrl.engines.models import resolve_model

    if cfg.engine == "ray":
        from sttrl.engines.ray_engine import RayEngine
        return RayEngine(cfg, resolve_model(cfg.model))
    from sttrl.engines.local import LocalEngine, pick_device

    device = pick_device(cfg.device)
    ref_device = None
    if cfg.separate_ref_gpu:
        import torch
        if not device.startswith("cuda") or torch.cuda.device_count() < 2:
            raise UserError("--separate_ref_gpu needs at least two visible GPUs")
        index = int(device.split(":")[1]) if ":" in device else 0
        ref_device = f"cuda:{(index + 1) % torch.cuda.device_count()}"
    return LocalEngine(resolve_model(cfg.model), device=device, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                       micro_batch_size=cfg.micro_batch_size,
                       gradient_checkpointing=cfg.gradient_checkpointing,
                       ref_device=ref_device, trust_remote_code=cfg.trust_remote_code,
                       generation_threads=cfg.generation_threads or None)


def shutdown_engine(engine) -> None:
    """Scale engine: release its Ray actors, vLLM engines and (if it started it) Ray itself."""
    if hasattr(engine, "shutdown"):
        engine.shutdown()


def on_gpu(cfg: Config) -> bool:
    if cfg.device == "cpu":
        return False
    import torch
    return torch.cuda.is_available()


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
    config = dataclasses.asdict(cfg)
    check_saved_config(out, config, cfg.allow_config_change)
    if cfg.mode == "dataset":
        from sttrl.dataset_driver import run_dataset
        engine = build_engine(cfg)
        try:
            return run_dataset(cfg, examples, engine)
        finally:
            shutdown_engine(engine)
    results = ResultsFile(out)
    checkpoint = out / "checkpoint.pt"
    if cfg.continuous:
        recover_pending(results, checkpoint)
    done = results.done_ids()
    todo = [(i, ex) for i, ex in enumerate(examples) if ex.question.id not in done]
    if todo:
        engine = build_engine(cfg)
        try:
            if cfg.continuous and checkpoint.exists():
                load_checkpoint(engine, checkpoint)
            loggers = open_loggers(cfg, out)
            bar = progress(cfg, len(examples), len(done))
            for i, ex in todo:
                record = run_question(engine, ex, i, cfg)
                if not cfg.continuous:
                    start = time.perf_counter()
                    engine.reset()
                    record["seconds"]["reset"] = time.perf_counter() - start
                record["seconds"]["total"] = sum(record["seconds"].values())
                if cfg.continuous:
                    save_checkpoint(engine, checkpoint, record)
                results.append(record)
                s = summarize(results.records, config)
                write_json_atomic(out / "summary.json", s)
                log_question(loggers, record, len(results.records))
                if bar is not None:
                    bar.set_postfix_str(f"pass@1 {s['pass@1_before']:.3f} -> {s['pass@1_after']:.3f}")
                    bar.update(1)
            if bar is not None:
                bar.close()
            close_loggers(loggers)
        finally:
            shutdown_engine(engine)
    summary = summarize(results.records, config)
    write_json_atomic(out / "summary.json", summary)
    return summary


# ---- continuous-mode checkpoints -----------------------------------------------------------
# In continuous mode the weights are part of the result, so each question's weights are saved
# together with its results line *before* that line is appended. A run killed between the two
# finds the line in the checkpoint and appends it on resume: nothing lost, nothing twice.

def save_checkpoint(engine, path: Path, record: dict) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"engine": engine.state_dict(), "record": record}, tmp)
    tmp.replace(path)


def load_checkpoint(engine, path: Path) -> None:
    import torch

    engine.load_state_dict(torch.load(path, weights_only=False)["engine"])


def recover_pending(results: ResultsFile, path: Path) -> None:
    if not path.exists():
        return
    import torch

    record = torch.load(path, weights_only=False, map_location="cpu")["record"]
    if str(record["id"]) not in results.done_ids():
        results.append(record)


# ---- progress and optional loggers ---------------------------------------------------------

def progress(cfg: Config, total: int, done: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=done, desc="questions", unit="q", dynamic_ncols=True)


def open_loggers(cfg: Config, out: Path) -> dict:
    loggers = {}
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        loggers["tb"] = SummaryWriter(str(out / "tb"))
    if cfg.wandb:
        import os
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install wandb") from None
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        loggers["wandb"] = wandb.init(project="sttrl", dir=str(out), mode=mode,
                                      config=dataclasses.asdict(cfg))
    return loggers


def log_question(loggers: dict, record: dict, step: int) -> None:
    scalars = {k: float(record[k]) for k in ("pass@1_before", "pass@1_after", "maj@N_before",
                                             "label_correct", "reward_accuracy")}
    scalars.update({f"seconds/{k}": v for k, v in record["seconds"].items()})
    if "tb" in loggers:
        for k, v in scalars.items():
            loggers["tb"].add_scalar(k, v, step)
    if "wandb" in loggers:
        loggers["wandb"].log(scalars, step=step)


def close_loggers(loggers: dict) -> None:
    if "tb" in loggers:
        loggers["tb"].close()
    if "wandb" in loggers:
        loggers["wandb"].finish()
