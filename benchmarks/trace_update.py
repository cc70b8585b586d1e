"""Trace a per-question update step by step against fresh samples: what the step-by-step
measurements (KL to the initial model, KL per step, the agreement estimates) say, against
what the policy actually does after each step.

For every question: the votes come from the untouched model (cached with benchmarks/accuracy.py's
cache, so the same votes as every study point), then the update runs for exactly --steps steps
(its stop rule is recorded, not obeyed), and after each step `--fresh` new samples are drawn at
the rollout temperature (seeded per question and step): their share agreeing with the vote is
the truth the agreement estimates are judged against, and their share agreeing with the
reference answer shows what the step did to accuracy. One JSON line per question in
--out/trace.jsonl; --summary prints the estimators' bias and correlation over all steps.

    .venv/bin/python benchmarks/trace_update.py --data_path runs/devsets/gain2.json \\
        --out runs/trace/adam --num_questions 40 --steps 5 --flags "--lr 3e-5"
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

FRESH_SEED = 424_242  # offsets the question's seed: fresh samples share no draws with the votes


class Tracing:
    """The engine, with `train`'s stop rule replaced by one that records every step's stats and
    a fresh-sample measurement of the policy, and never stops early."""

    def __init__(self, engine, fresh):
        self.engine, self.fresh, self.steps = engine, fresh, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def train(self, batch, loss_fn, loss_kwargs, steps, mini_batches=None, lrs=None, stop=None,
              trust=None):
        def record(stats):
            self.steps.append({"stats": dict(stats),
                               "rule_would_stop": bool(stop(stats)) if stop else False,
                               **self.fresh(len(self.steps) + 1)})
            return False
        return self.engine.train(batch, loss_fn, loss_kwargs, steps, mini_batches, lrs,
                                 stop=record, trust=trust)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", help="samples cache of benchmarks/accuracy.py (default: --out)")
    parser.add_argument("--num_questions", type=int, default=40)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fresh", type=int, default=16)
    parser.add_argument("--flags", default="", help="main.py flags for the update")
    parser.add_argument("--summary", action="store_true", help="only print the summary")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.summary:
        trace(args, out)
    print(summary(out / "trace.jsonl"))


def trace(args, out: Path) -> None:
    from accuracy import CachedSamples

    from sttrl.algorithms import METHODS
    from sttrl.parts import parts
    from sttrl.rewards.label import pseudo_label
    from sttrl.cli import parse_config
    from sttrl.config import resolve
    from sttrl.data import format_prompt
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model
    from sttrl.modes.common import Timer, question_seed
    from sttrl.rewards import extract_answer, grade
    from sttrl.run import load_examples

    argv = shlex.split(args.flags) + ["--data_path", args.data_path, "--num_questions",
                                      str(args.num_questions), "--steps_per_question",
                                      str(args.steps), "--progress", "false"]
    cfg = resolve(parse_config(argv), on_gpu=False)
    out.mkdir(parents=True, exist_ok=True)
    path = resolve_model(cfg.model)
    run = parts(cfg)
    engine = CachedSamples(LocalEngine(run.engine, path), Path(args.cache or out) / "samples.jsonl", path)
    done = set()
    if (out / "trace.jsonl").exists():
        done = {json.loads(x)["id"] for x in (out / "trace.jsonl").read_text().splitlines()}
    for ex in load_examples(cfg):
        q = ex.question
        if q.id in done:
            continue
        prompt = format_prompt(q, engine.tokenizer, cfg.prompt_family)
        seed = question_seed(cfg.seed, q.id)
        votes = engine.generate(prompt, cfg.n_votes, cfg.temperature, cfg.top_p,
                                cfg.max_new_tokens, seed)
        _, label, _ = pseudo_label(votes, q.task, run.vote)

        def fresh(step):
            samples = engine.engine.generate(prompt, args.fresh, cfg.temperature, cfg.top_p,
                                             cfg.max_new_tokens, seed + FRESH_SEED + step)
            answers = [extract_answer(s.text, q.task) for s in samples]
            agree = [a is not None and label is not None and grade(a, label, q.task,
                                                                   form=cfg.answer_form)
                     for a in answers]
            right = [a is not None and grade(a, ex.answer, q.task, form=cfg.answer_form)
                     for a in answers]
            return {"fresh_agree": sum(agree) / len(agree), "fresh_correct": sum(right) / len(right)}

        tracing = Tracing(engine, fresh)
        engine.reset()
        engine.set_lr(cfg.lr)
        adapted = METHODS[cfg.adaptation_method].adapt(tracing, q, prompt, run.sampling,
                                                       run.vote, run.update, seed, Timer(),
                                                       votes=votes)
        for step, stats in zip(tracing.steps, adapted.train):
            step["stats"] = stats  # with the log-ratios turned into agreement estimates
        base = fresh(0) if tracing.steps else {}
        line = {"id": q.id, "label": label, "label_correct": bool(
                    label is not None and grade(label, ex.answer, q.task, form=cfg.answer_form)),
                "majority_ratio": adapted.vote.majority_ratio, "skip_reason": adapted.skip_reason,
                "base": base, "steps": tracing.steps}
        with open(out / "trace.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{q.id}: {len(tracing.steps)} steps", flush=True)
    engine.reset()


def summary(path: Path) -> str:
    """Bias, mean absolute error and correlation of each agreement estimate against the fresh
    samples' agreement, over every traced step."""
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    pairs: dict[str, list] = {"heldout": [], "trained": []}
    for r in rows:
        for s in r["steps"]:
            for name in pairs:
                if s["stats"].get(f"agree_{name}") is not None:
                    pairs[name].append((s["stats"][f"agree_{name}"], s["fresh_agree"]))
    lines = [f"{len(rows)} questions traced"]
    for name, xy in pairs.items():
        if len(xy) < 2:
            lines.append(f"{name}: too few points")
            continue
        n = len(xy)
        bias = sum(x - y for x, y in xy) / n
        mae = sum(abs(x - y) for x, y in xy) / n
        mx, my = sum(x for x, _ in xy) / n, sum(y for _, y in xy) / n
        cov = sum((x - mx) * (y - my) for x, y in xy)
        sx = math.sqrt(sum((x - mx) ** 2 for x, _ in xy))
        sy = math.sqrt(sum((y - my) ** 2 for _, y in xy))
        corr = cov / (sx * sy) if sx and sy else float("nan")
        lines.append(f"{name}: n {n}, bias {bias:+.3f}, mean abs error {mae:.3f}, "
                     f"correlation {corr:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
