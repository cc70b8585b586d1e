"""How well label-free signals tell a right vote from a wrong one: one AUROC per signal, and
of a logistic combination fitted and cross-validated on the development sets.

Reads what `benchmarks/accuracy.py` left: the untouched model's votes (its samples cache) and
whether each vote was right (a `--steps_per_question 0` point's results.jsonl: `label_correct`,
read here for evaluation only). With --harmony it draws, once per question and cached beside the
votes, the samples of a second phrasing of the instruction (prompt variant 1, as MEMO uses) for
the Self-Harmony signal.

    .venv/bin/python benchmarks/reliability.py --run runs/acc/gain2 --run runs/acc/noharm2 \\
        --data runs/devsets/gain2.json --data runs/devsets/noharm2.json --harmony \\
        --out runs/reliability

Writes --out/features.csv (one row per question) and --out/auroc.md.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

HARMONY_SEED = 1000  # variant v's seed offset, as MEMO's variant_group draws phrasing 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True,
                        help="an accuracy.py --out folder with a base point (repeatable)")
    parser.add_argument("--data", action="append", required=True,
                        help="the TTT file of each --run, in the same order")
    parser.add_argument("--point", default="base", help="the no-update point's name")
    parser.add_argument("--harmony", action="store_true", help="draw the second phrasing")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run, data in zip(args.run, args.data):
        rows += question_rows(Path(run), data, args.point, args.harmony)
    write_csv(out / "features.csv", rows)
    text = auroc_table(rows)
    (out / "auroc.md").write_text(text)
    print(text)


def question_rows(run: Path, data: str, point: str, harmony: bool) -> list[dict]:
    from accuracy import CachedSamples

    from sttrl.config import Config, resolve
    from sttrl.data import format_prompt, load_ttt
    from sttrl.engines.models import resolve_model
    from sttrl.modes.common import question_seed
    from sttrl.types import Sample

    saved = json.loads((run / "points" / point / "summary.json").read_text())["config"]
    cfg = resolve(Config(**{k: v for k, v in saved.items() if k in Config.__dataclass_fields__}),
                  on_gpu=False)
    results = {r["id"]: r for r in map(json.loads,
                                       (run / "points" / point / "results.jsonl").read_text()
                                       .splitlines())}
    path = resolve_model(cfg.model)
    engine = None
    if harmony:
        from sttrl.engines.local import LocalEngine
        from sttrl.parts import parts
        engine = LocalEngine(parts(cfg).engine, path)
    cache = CachedSamples(engine, run / "samples.jsonl", path)
    from transformers import AutoTokenizer
    tokenizer = engine.tokenizer if engine else AutoTokenizer.from_pretrained(path)
    rows = []
    for ex in load_ttt(data):
        q = ex.question
        if q.id not in results:
            continue
        prompt = format_prompt(q, tokenizer, cfg.prompt_family)
        seed = question_seed(cfg.seed, q.id)
        key = cache.key(prompt, cfg.n_votes, cfg.temperature, cfg.top_p, cfg.max_new_tokens, seed)
        votes = [Sample(**s) for s in cache.cache[key]]
        second = None
        if harmony:
            text = format_prompt(q, tokenizer, cfg.prompt_family, variant=1)
            second = cache.generate(text, cfg.n_votes, cfg.temperature, cfg.top_p,
                                    cfg.max_new_tokens, seed + HARMONY_SEED)
        rows.append({"id": q.id, "set": Path(data).stem,
                     "right": bool(results[q.id]["label_correct"]),
                     **features(votes, second, q.task, cfg.answer_form)})
    return rows


def features(votes, second, task: str, form: str) -> dict:
    """Label-free signals of how far the vote over `votes` can be trusted (`second`: the same
    question's samples under another phrasing, or None)."""
    from sttrl.rewards import extract_answer, grade, vote

    answers = [extract_answer(s.text, task) for s in votes]
    label, stats = vote(answers, None, task, form=form)
    n = len(answers)
    counts = sorted(stats.cluster_counts.values(), reverse=True) + [0, 0]
    top = counts[0]
    shares = [c / n for c in counts if c]
    none_share = stats.n_none / n
    entropy = -sum(p * math.log(p) for p in shares) - (
        none_share * math.log(none_share) if none_share else 0.0)

    def conf(s):  # DeepConf's trace confidence: mean over tokens of -(mean top-k log-prob)
        return sum(-v for v in s.topk_logprob_mean) / len(s.topk_logprob_mean) \
            if s.topk_logprob_mean else 0.0

    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else 0.0

    win = [i for i, c in enumerate(stats.sample_cluster) if c is not None and c == stats.winner]
    rest = [i for i in range(n) if i not in win]
    row = {
        "ratio_all": top / n,  # TTRL's majority ratio: all samples in the denominator
        "ratio_answered": stats.majority_ratio,
        "margin": (counts[0] - counts[1]) / n,
        "neg_entropy": -entropy,
        "answered": 1 - none_share,
        "conf_winner": mean(conf(votes[i]) for i in win),
        "conf_gap": mean(conf(votes[i]) for i in win) - mean(conf(votes[i]) for i in rest),
        "logprob_winner": mean(mean(votes[i].logprobs) for i in win),
        "neg_clusters": -len(stats.cluster_counts),
    }
    # stability: the label's share in each half of the votes, the smaller of the two
    half = n // 2
    if label is None:
        row["split_half"] = 0.0
    else:
        in_half = [sum(1 for i in win if lo <= i < hi) / max(1, hi - lo)
                   for lo, hi in ((0, half), (half, n))]
        row["split_half"] = min(in_half)
    if second is not None:
        other = [extract_answer(s.text, task) for s in second]
        share2 = (sum(1 for a in other if a is not None and label is not None
                      and grade(a, label, task, form=form)) / len(other))
        share1 = top / n
        row["harmony"] = (2 * share1 * share2 / (share1 + share2)) if share1 + share2 else 0.0
        row["second_share"] = share2
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def auroc(scores: list[float], labels: list[bool]) -> float:
    """P(score of a right vote > score of a wrong one), ties counting half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def fit_logistic(X: list[list[float]], y: list[bool], l2: float = 1.0, iters: int = 50):
    """L2-regularised logistic regression by Newton's method on standardised features; returns
    a scoring function."""
    import numpy as np

    A = np.array(X, dtype=float)
    mu, sd = A.mean(0), A.std(0) + 1e-9
    Z = np.hstack([np.ones((len(A), 1)), (A - mu) / sd])
    t = np.array(y, dtype=float)
    w = np.zeros(Z.shape[1])
    reg = l2 * np.eye(Z.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-Z @ w))
        grad = Z.T @ (p - t) + reg @ w
        hess = (Z * (p * (1 - p))[:, None]).T @ Z + reg
        w -= np.linalg.solve(hess, grad)

    def score(x):
        z = np.hstack([[1.0], (np.array(x, dtype=float) - mu) / sd])
        return float(1 / (1 + np.exp(-z @ w)))
    score.weights = dict(zip(["bias"] + [f"z{i}" for i in range(len(mu))], w.round(3)))
    return score


def cross_validated(rows, names, folds: int = 5, repeats: int = 20, seed: int = 0) -> float:
    """Mean out-of-fold AUROC of the logistic combination of `names`, over repeated k-fold splits
    stratified by nothing but a seeded shuffle."""
    rng = random.Random(seed)
    results = []
    for _ in range(repeats):
        order = list(range(len(rows)))
        rng.shuffle(order)
        scores = [0.0] * len(rows)
        for k in range(folds):
            test = set(order[k::folds])
            train = [rows[i] for i in range(len(rows)) if i not in test]
            model = fit_logistic([[r[n] for n in names] for r in train], [r["right"] for r in train])
            for i in test:
                scores[i] = model([rows[i][n] for n in names])
        results.append(auroc(scores, [r["right"] for r in rows]))
    return sum(results) / len(results)


def auroc_table(rows: list[dict]) -> str:
    names = [k for k in rows[0] if k not in ("id", "set", "right")]
    sets = sorted({r["set"] for r in rows})
    groups = [("all", rows)] + [(s, [r for r in rows if r["set"] == s]) for s in sets]
    head = "| signal | " + " | ".join(f"{g} (n={len(rs)}, right {sum(r['right'] for r in rs)})"
                                     for g, rs in groups) + " |"
    lines = [head, "|---" * (len(groups) + 1) + "|"]
    for name in names:
        cells = [f"{auroc([r[name] for r in rs], [r['right'] for r in rs]):.3f}" for _, rs in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    combos = {"logistic, all signals": names,
              "logistic, ratio_all + margin + conf_gap": ["ratio_all", "margin", "conf_gap"]}
    if "harmony" in names:
        combos["logistic, ratio_all + harmony"] = ["ratio_all", "harmony"]
    for label, use in combos.items():
        cells = [f"{cross_validated(rs, use):.3f}" if len({r['right'] for r in rs}) == 2 else "-"
                 for _, rs in groups]
        lines.append(f"| {label} (5-fold CV) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
