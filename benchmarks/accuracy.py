"""The development benchmark: a grid of configurations on a development set, one table.

Every grid point is an ordinary STTRL run (its own folder under --out/points/, resumable), all
points on one engine. Samples drawn from the untouched model (the votes and the evaluation
before the update, and the evaluation after a skipped update) are cached on disk by
(model, prompt, sampling arguments, seed): points that share them sample once, and points added
later reuse them. The samples are exactly those the run would draw itself, since the local
engine's sampling depends only on those arguments. Two points may run at once in two
processes on one --out: each reads what the other added before drawing a missing entry.

    .venv/bin/python benchmarks/accuracy.py --data_path runs/devsets/gain.json \\
        --out runs/accuracy/gain --point default= --point lr3e-6="--lr 3e-6"

`--point NAME=FLAGS`: FLAGS are `main.py` flags added to the shared ones (`--common`). The table
(`--out/table.md`, `table.csv`) is rebuilt from every point folder present, over the questions
every point finished (so the rows are paired), and a later call with new points appends rows. Columns: pass@1 before and after, the paired gain with its 95%
bootstrap interval over questions, maj@N, label accuracy, questions up / down / same, the gain
on questions whose vote was right and on those whose vote was wrong, seconds per question
(train and after-evaluation only: the cached phases cost nothing after the first point), and
the number of questions whose vote was right that went down (the damage).

`--weak_vote 0.3,0.4` adds, for every point whose resolved `--min_majority_ratio` is 0, the row that
rule would give at each threshold. Such a row is exact, not an estimate: in reset mode a skipped
question's after-evaluation is the untouched model sampled with the before-evaluation's seed,
so its after equals its before, and the other questions are unchanged
(`with_weak_vote_rule`; tests/test_accuracy_bench.py checks it against a real run).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class CachedSamples:
    """A LocalEngine (the only engine the benchmark runs; `pristine`: its weights are the
    initial ones) whose samples from the untouched model come from (and go to) a disk cache."""

    def __init__(self, engine, path: Path, model: str):
        self.engine, self.path, self.model = engine, path, model
        self.cache: dict[str, list[dict]] = {}
        self.hits = self.misses = 0
        self.offset = 0  # bytes of the file read so far
        self.refresh()

    def refresh(self) -> None:
        """Read the lines appended since the last read, whole lines only: another point's
        process may share the cache and be writing its next line."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].decode().splitlines():
            if line.strip():
                entry = json.loads(line)
                self.cache[entry["key"]] = entry["samples"]
        self.offset += end

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def key(self, *args) -> str:
        return hashlib.sha1(json.dumps([self.model, *args]).encode()).hexdigest()

    def generate(self, prompt, n, temperature, top_p, max_new_tokens, seed):
        from sttrl.types import Sample

        untouched = self.engine.pristine and self.engine.head_hook is None
        if not untouched:
            return self.engine.generate(prompt, n, temperature, top_p, max_new_tokens, seed)
        key = self.key(prompt, n, temperature, top_p, max_new_tokens, seed)
        if key not in self.cache:
            self.refresh()
        if key in self.cache:
            self.hits += 1
            return [Sample(**s) for s in self.cache[key]]
        self.misses += 1
        with self.claim([key]) as missing:
            if missing:
                samples = self.engine.generate(prompt, n, temperature, top_p, max_new_tokens, seed)
                self.store(key, samples)
        return [Sample(**s) for s in self.cache[key]]

    def store(self, key: str, samples) -> None:
        from sttrl.files import append_jsonl

        self.cache[key] = [asdict(s) for s in samples]
        append_jsonl(self.path, {"key": key, "samples": self.cache[key]})

    @contextlib.contextmanager
    def claim(self, keys: list[str]):
        """Yield the keys still missing once no other live process is drawing them: a marker
        file per key (holding its pid) tells the others to wait and read the cache instead of
        drawing the same samples twice; a dead holder's marker is taken over."""
        markers = [Path(f"{self.path}.{k}.drawing") for k in keys]
        while True:
            self.refresh()
            missing = [k for k in keys if k not in self.cache]
            busy = [m for m, k in zip(markers, keys) if k in missing and held_by_other(m)]
            if not busy:
                break
            time.sleep(2)
        for m, k in zip(markers, keys):
            if k in missing:
                m.write_text(str(os.getpid()))
        try:
            yield missing
        finally:
            for m, k in zip(markers, keys):
                if k in missing:
                    m.unlink(missing_ok=True)

    def generate_groups(self, prompt, groups, max_new_tokens):
        """Each group from the cache under generate's key; the missing ones in one batch (the
        engine draws a group in a batch as generate draws it alone)."""
        from sttrl.types import Sample

        untouched = self.engine.pristine and self.engine.head_hook is None
        if not untouched:
            return self.engine.generate_groups(prompt, groups, max_new_tokens)
        keys = [self.key(prompt, g.n, g.temperature, g.top_p, max_new_tokens, g.seed)
                for g in groups]
        if any(k not in self.cache for k in keys):
            self.refresh()
        with self.claim([k for k in keys if k not in self.cache]) as absent:
            missing = [i for i, k in enumerate(keys) if k in absent]
            self.hits += len(groups) - len(missing)
            self.misses += len(missing)
            if missing:
                drawn = self.engine.generate_groups(prompt, [groups[i] for i in missing],
                                                    max_new_tokens)
                for i, samples in zip(missing, drawn):
                    self.store(keys[i], samples)
        return [[Sample(**s) for s in self.cache[k]] for k in keys]

    def close(self):
        """The engine outlives each point; the caller closes it at the end."""


def held_by_other(marker: Path) -> bool:
    """Whether another live process holds this marker."""
    try:
        pid = int(marker.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid in (0, os.getpid()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_points(points: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for text in points:
        name, sep, flags = text.partition("=")
        if not sep or not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise SystemExit(f"--point must be NAME=FLAGS with a plain NAME, got {text!r}")
        out.append((name, shlex.split(flags)))
    return out


def run_points(args) -> None:
    from sttrl.cli import parse_config
    from sttrl.config import resolve
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model
    from sttrl.modes.question import run_questions
    from sttrl.parts import parts
    from sttrl.run import load_examples, on_gpu

    out = Path(args.out)
    engine = None
    for name, flags in parse_points(args.point):
        argv = shlex.split(args.common) + flags + ["--data_path", args.data_path, "--output_dir",
                                                   str(out / "points" / name), "--progress",
                                                   "false"]
        cfg = parse_config(argv)
        cfg = resolve(cfg, on_gpu(cfg))
        if cfg.engine != "local":
            raise SystemExit("the development benchmark runs on the local engine")
        examples = load_examples(cfg)
        run = parts(cfg)
        if engine is None:
            path = resolve_model(cfg.model)
            engine = CachedSamples(LocalEngine(run.engine, path), out / "samples.jsonl", path)
        engine.reset()
        engine.set_lr(run.engine.lr)  # one engine for every point, each at its own lr
        print(f"[{name}] {' '.join(flags) or '(shared flags only)'}", flush=True)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "flags.txt").write_text(" ".join(argv) + "\n")
        run_questions(run, examples, lambda: engine)
        print(f"[{name}] cached samples used {engine.hits}, drawn {engine.misses}", flush=True)


def with_weak_vote_rule(recs: list[dict], threshold: float) -> list[dict]:
    """The lines a run with `--min_majority_ratio threshold` writes, derived from a run without
    it: a question whose vote is weaker is not updated, and its after-evaluation then draws
    the untouched model's samples with the before-evaluation's seed, so after == before
    exactly; every other question is unchanged (reset mode: questions do not interact)."""
    out = []
    for r in recs:
        if r["vote"]["majority_ratio"] < threshold and not r["skipped"]:
            r = {**r, "pass@1_after": r["pass@1_before"], "skipped": True, "train": [],
                 # the cost column counts train and after-evaluation: a skipped question
                 # reuses the before-evaluation's samples
                 "seconds": {**r["seconds"], "train": 0.0, "eval": 0.0}}
        out.append(r)
    return out


def point_row(name: str, folder: Path, ids: set | None = None,
              weak_vote: float | None = None) -> dict | None:
    from sttrl.files import read_jsonl
    from sttrl.reporting.stats import paired_bootstrap_ci

    path = folder / "results.jsonl"
    if not path.exists():
        return None
    recs = [r for r in read_jsonl(path) if ids is None or str(r["id"]) in ids]
    if not recs:
        return None
    if weak_vote is not None:
        recs = with_weak_vote_rule(recs, weak_vote)
    n = len(recs)
    before = [r["pass@1_before"] for r in recs]
    after = [r["pass@1_after"] for r in recs]
    lo, hi = paired_bootstrap_ci(before, after)

    def gain_where(keep):
        rows = [r["pass@1_after"] - r["pass@1_before"] for r in recs if keep(r)]
        return (sum(rows) / len(rows) if rows else None), len(rows)

    right, n_right = gain_where(lambda r: r["label_correct"])
    hurt = sum(r["pass@1_after"] < r["pass@1_before"] for r in recs if r["label_correct"])
    wrong, n_wrong = gain_where(lambda r: not r["label_correct"])
    cost = [r["seconds"].get("train", 0) + r["seconds"].get("eval", 0) / 2 for r in recs]
    flags = flags_of(folder).strip()
    if weak_vote is not None:
        flags += f" --min_majority_ratio {weak_vote} (derived: with_weak_vote_rule)"
    return {"point": name, "questions": n, "pass@1_before": sum(before) / n,
            "pass@1_after": sum(after) / n, "gain": (sum(after) - sum(before)) / n,
            "gain_ci95_lo": lo, "gain_ci95_hi": hi,
            "maj@N": sum(float(r["maj@N_before"]) for r in recs) / n,
            "label_accuracy": sum(float(r["label_correct"]) for r in recs) / n,
            "up": sum(a > b for b, a in zip(before, after)),
            "down": sum(a < b for b, a in zip(before, after)),
            "same": sum(a == b for b, a in zip(before, after)),
            "gain_vote_right": right, "n_vote_right": n_right,
            "gain_vote_wrong": wrong, "n_vote_wrong": n_wrong, "down_vote_right": hurt,
            "updates_skipped": sum(bool(r["skipped"]) for r in recs),
            "seconds_per_question": sum(cost) / n, "flags": flags}


def write_table(out: Path, weak_votes: list[float] = ()) -> str:
    from sttrl.files import read_jsonl

    folders = [f for f in sorted((out / "points").glob("*")) if (f / "results.jsonl").exists()]
    # every row over the questions all points finished, so the rows are paired
    ids = set.intersection(*[{str(r["id"]) for r in read_jsonl(f / "results.jsonl")}
                             for f in folders]) if folders else set()
    rows = [row for folder in folders if (row := point_row(folder.name, folder, ids)) is not None]
    # derived rows only from points that ran without the rule
    rows += [row for t in weak_votes for folder in folders
             if not resolved(folder).get("min_majority_ratio")
             and (row := point_row(f"{folder.name}+mmr{t:g}", folder, ids, t)) is not None]
    if not rows:
        return "no finished points yet\n"
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def f3(x):
        return "-" if x is None else f"{x:+.3f}" if isinstance(x, float) and x < 0 else f"{x:.3f}"

    head = ("| point | n | pass@1 before | after | gain [95% CI] | maj@N | label acc | up/down/same "
            "| gain, vote right (n) | down, vote right | gain, vote wrong (n) | skipped | s/question |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        mark = "" if r["gain_ci95_lo"] > 0 or r["gain_ci95_hi"] < 0 else "°"
        lines.append(
            f"| {r['point']} | {r['questions']} | {r['pass@1_before']:.3f} | {r['pass@1_after']:.3f} "
            f"| {r['gain']:+.3f} [{r['gain_ci95_lo']:+.3f}, {r['gain_ci95_hi']:+.3f}]{mark} "
            f"| {r['maj@N']:.3f} | {r['label_accuracy']:.3f} | {r['up']}/{r['down']}/{r['same']} "
            f"| {f3(r['gain_vote_right'])} ({r['n_vote_right']}) | {r['down_vote_right']} "
            f"| {f3(r['gain_vote_wrong'])} ({r['n_vote_wrong']}) | {r['updates_skipped']} "
            f"| {r['seconds_per_question']:.1f} |")
    text = "\n".join(lines) + "\n\n° the interval includes zero.\n\nFlags per point:\n\n" + "".join(
        f"- `{r['point']}`: `{r['flags']}`\n" for r in rows)
    (out / "table.md").write_text(text)
    return text


def resolved(folder: Path) -> dict:
    """The point's resolved config (summary.json has it), or {} before its first question."""
    path = folder / "summary.json"
    return json.loads(path.read_text()).get("config", {}) if path.exists() else {}


def flags_of(folder: Path) -> str:
    return (folder / "flags.txt").read_text() if (folder / "flags.txt").exists() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True, help="a TTT file (benchmarks/devsets.py)")
    parser.add_argument("--out", required=True, help="folder for the points, the cache, the table")
    parser.add_argument("--point", action="append", default=[], help="NAME=FLAGS, repeatable")
    parser.add_argument("--common", default="", help="flags every point shares")
    parser.add_argument("--weak_vote", default="",
                        help="comma-separated thresholds: add the rows --min_majority_ratio T "
                             "would give, derived from each point run without it")
    args = parser.parse_args()
    try:
        weak = [float(t) for t in args.weak_vote.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--weak_vote takes comma-separated numbers, got {args.weak_vote!r}")
    if args.point:
        run_points(args)
    print(write_table(Path(args.out), weak))


if __name__ == "__main__":
    main()
