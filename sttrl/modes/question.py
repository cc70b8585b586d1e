"""The per-question mode: for each question, evaluate, adapt, evaluate again, reset, record.

    question -> samples -> answers -> vote -> rewards -> update -> evaluation -> results

The reference answer enters only `evaluate`; the adaptation methods receive a `Question`,
which has no answer field.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sttrl.algorithms import METHODS
from sttrl.config import Config
from sttrl.data import format_prompt
from sttrl.errors import UserError
from sttrl.files import has_non_finite, write_atomic, write_json_atomic
from sttrl.modes.common import Timer, generate_shared, question_seed, sample_answers
from sttrl.reporting.results import ResultsFile, summarize
from sttrl.rewards import extract_answer
from sttrl.rewards.metrics import label_accuracy, maj_at_n, pass_at_1, reward_accuracy
from sttrl.rewards.oracle import OracleReward
from sttrl.types import Adaptation, SampleGroup

MAX_ANSWER_CHARS = 200  # answers kept in results.jsonl are cut to this length (a display cut)


def evaluate(reference: str, task: str, before: list, after: list, adapted: Adaptation,
             form: str = "strict") -> dict:
    """Every metric that needs the ground truth, in one place."""
    n_train = len(adapted.rewards)
    return {
        "pass@1_before": pass_at_1(before, reference, task, form=form),
        "pass@1_after": pass_at_1(after, reference, task, form=form),
        "maj@N_before": maj_at_n(adapted.answers, reference, task, form=form),
        "label_correct": label_accuracy(adapted.label, reference, task, form=form),
        "reward_accuracy": reward_accuracy(adapted.rewards, adapted.answers[:n_train],
                                           reference, task, form=form),
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
    method = METHODS[cfg.adaptation_method]
    votes = None
    # Before and after share a sampling seed: a paired comparison with less noise.
    if method.votes is not None:
        # The method's votes come from the same prompt and weights: one batch draws both, each
        # group from its own seed as a separate call would (LocalEngine.generate_groups). The
        # votes are handed to the method; the evaluation samples never reach it. The call's
        # seconds are split between eval and generate by the tokens each group generated.
        groups = [SampleGroup(cfg.n_eval, cfg.val_temp, cfg.val_top_p, seed + 1),
                  method.votes(cfg, seed)]
        drawn, votes = generate_shared(engine, prompt, groups, ["eval", "generate"],
                                       cfg.max_new_tokens, timer)
        with timer("eval"):
            before = [extract_answer(s.text, q.task) for s in drawn]
    else:
        with timer("eval"):
            before = sample_answers(engine, *eval_args, seed + 1)
    version = engine.policy_version
    # --reward oracle is the one path on which the reference reaches a method: named, and marked
    oracle = OracleReward(example.answer, q.task, cfg.answer_form) if cfg.reward == "oracle" else None
    adapted = method.adapt(engine, q, prompt, cfg, seed, timer, oracle, votes=votes)
    if engine.policy_version == version:
        # Nothing the samples come from changed (a skipped update): the same seed would draw
        # the same samples again, so the before-evaluation is the after-evaluation.
        after = list(before)
    else:
        with timer("eval"):
            after = sample_answers(engine, *eval_args, seed + 1)
    metrics = evaluate(example.answer, q.task, before, after, adapted, cfg.answer_form)
    stats = adapted.vote
    rewards = adapted.rewards
    record = {
        "index": index,
        "reward": cfg.reward,
        "id": q.id,
        "pseudo_label": adapted.label,
        "vote": {"majority_ratio": stats.majority_ratio, "n_voting": stats.n_voting,
                 "n_none": stats.n_none, "clusters": stats.cluster_counts},
        "rewards": {"n": len(rewards), "positive": sum(r > 0 for r in rewards),
                    "mean": sum(rewards) / len(rewards) if rewards else 0.0},
        "skipped": adapted.skip_reason is not None,
        "skip_reason": adapted.skip_reason,
        "flagged": adapted.label is None,
        "train": adapted.train,
        "answers_before": cut(before),
        "answers_after": cut(after),
        **metrics,
    }
    if adapted.extra is not None:
        record["extra"] = adapted.extra
    if has_non_finite(adapted.train):
        # a NaN or infinite training statistic (written as null): the update diverged
        record["diverged"] = True
    record["seconds"] = dict(timer.seconds)
    return record


def run_questions(cfg: Config, examples: list, engine_factory) -> dict:
    """Run (or resume) the per-question experiment; returns the summary also written to disk.

    `engine_factory()` builds the engine, only when a question is left to run."""
    out = Path(cfg.output_dir)
    config = dataclasses.asdict(cfg)
    results = ResultsFile(out)
    checkpoint = out / "checkpoint.pt"
    use_checkpoint = False
    if cfg.continuous:
        use_checkpoint = recover_pending(results, checkpoint, cfg.allow_missing_checkpoint)
    done = results.done_ids()
    todo = [(i, ex) for i, ex in enumerate(examples) if ex.question.id not in done]
    if todo:
        engine = engine_factory()
        try:
            if use_checkpoint:
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
                    bar.set_postfix_str(f"pass@1 {s['pass@1_before']:.3f} -> "
                                        f"{s['pass@1_after']:.3f}, maj@N {s['maj@N_before']:.3f}")
                    bar.update(1)
            if bar is not None:
                bar.close()
            close_loggers(loggers)
        finally:
            engine.close()
    summary = summarize(results.records, config)
    write_json_atomic(out / "summary.json", summary)
    return summary


# ---- continuous-mode checkpoints -----------------------------------------------------------
# In continuous mode the weights are part of the result, so each question's weights are saved
# together with its results line *before* that line is appended. A run killed between the two
# finds the line in the checkpoint and appends it on resume: nothing lost, nothing twice.
# Results lines without a readable checkpoint would mean continuing from the initial weights, a
# different experiment: that is refused unless --allow_missing_checkpoint accepts it.

START_OVER = "delete results.jsonl and checkpoint.pt to start over"


def save_checkpoint(engine, path: Path, record: dict) -> None:
    import torch

    state = {"engine": engine.state_dict(), "record": record}
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: Path, map_location=None) -> dict:
    """The checkpoint's contents; an unreadable one is a one-line UserError."""
    import torch

    try:
        state = torch.load(path, weights_only=False, map_location=map_location)
        if not isinstance(state, dict) or "engine" not in state:
            raise ValueError("not an STTRL checkpoint")
    except Exception as err:  # torch raises RuntimeError, pickle errors, EOFError, OSError...
        text = str(err).strip().splitlines()
        raise UserError(f"{path} cannot be read ({text[0] if text else type(err).__name__}); "
                        f"pass --allow_missing_checkpoint to continue from the initial weights, "
                        f"or {START_OVER}") from None
    return state


def load_checkpoint(engine, path: Path) -> None:
    engine.load_state_dict(read_checkpoint(path)["engine"])


def recover_pending(results: ResultsFile, path: Path, allow_missing: bool = False) -> bool:
    """Append the line a kill left only in the checkpoint; whether to load the checkpoint."""
    if not path.exists():
        if results.records and not allow_missing:
            raise UserError(f"{path.parent} holds {len(results.records)} finished question(s) of "
                            f"a --continuous run but no checkpoint.pt, so their adapted weights "
                            f"are lost; pass --allow_missing_checkpoint to continue from the "
                            f"initial weights, or {START_OVER}")
        return False
    try:
        state = read_checkpoint(path, map_location="cpu")
    except UserError:
        if allow_missing:
            return False
        raise
    record = state.get("record")
    if isinstance(record, dict) and "id" in record and str(record["id"]) not in results.done_ids():
        results.append(record)
    return True


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
