"""The per-question mode: for each question, evaluate, adapt, evaluate again, reset, record.

    question -> samples -> answers -> vote -> rewards -> update -> evaluation -> results

The reference answer enters only evaluation (`evaluate.question_metrics`) and, with --reward
oracle, the oracle; the adaptation methods receive a `Question`, which has no answer field.
"""
from __future__ import annotations

import time
from pathlib import Path

from sttrl.algorithms import METHODS
from sttrl.data import format_prompt
from sttrl.engines.base import Engine
from sttrl.errors import UserError, brief
from sttrl.files import has_non_finite, write_json_atomic, write_torch_atomic
from sttrl.modes.carry import Carry
from sttrl.modes.common import Timer, generate_shared, question_seed, sample_answers
from sttrl.modes.evaluate import question_metrics
from sttrl.modes.logger import RunLogger
from sttrl.reporting.results import NO_REFERENCES, ResultsFile, summarize
from sttrl.rewards import extract_answer
from sttrl.rewards.oracle import OracleReward
from sttrl.settings import RunParts
from sttrl.types import Example, QuestionResult, SampleGroup

MAX_ANSWER_CHARS = 200  # answers kept in results.jsonl are cut to this length (a display cut)
SCALARS = ("pass@1_before", "pass@1_after", "maj@N_before", "label_correct", "reward_accuracy")


def cut(answers: list) -> list:
    return [a if a is None else a[:MAX_ANSWER_CHARS] for a in answers]


def run_question(engine: Engine, example: Example, index: int, parts: RunParts) -> QuestionResult:
    """Evaluate, adapt and evaluate again; the caller resets or carries the weights on."""
    q = example.question
    sampling, vote, update = parts.sampling, parts.vote, parts.update
    timer = Timer()
    prompt = format_prompt(q, engine.tokenizer, sampling.prompt_family)
    seed = question_seed(sampling.seed, q.id)
    eval_args = (prompt, q.task, sampling.n_eval, sampling.val_temp, sampling.val_top_p,
                 sampling.max_new_tokens)
    method = METHODS[update.method]
    votes = None
    # Before and after share a sampling seed: a paired comparison with less noise.
    if method.votes is not None:
        # The method's votes come from the same prompt and weights: one batch draws both, each
        # group from its own seed as a separate call would (LocalEngine.generate_groups). The
        # votes are handed to the method; the evaluation samples never reach it. The call's
        # seconds are split between eval and generate by the tokens each group generated.
        groups = [SampleGroup(sampling.n_eval, sampling.val_temp, sampling.val_top_p, seed + 1),
                  method.votes(sampling, seed)]
        drawn, votes = generate_shared(engine, prompt, groups, ["eval", "generate"],
                                       sampling.max_new_tokens, timer)
        with timer("eval"):
            before = [extract_answer(s.text, q.task) for s in drawn]
    else:
        with timer("eval"):
            before = sample_answers(engine, *eval_args, seed + 1)
    label_votes = {}
    if vote.label_model == "base" and not engine.pristine:
        # --label_model base: the same group from the initial model votes the label; the
        # trained samples stay the current policy's (`votes`)
        with timer("generate"), engine.base_policy():
            label_votes["label_votes"] = engine.generate_groups(
                prompt, [method.votes(sampling, seed)], sampling.max_new_tokens)[0]
    version = engine.policy_version
    # --reward oracle is the one path on which the reference reaches a method: named, and marked
    oracle = OracleReward.of(example, vote.answer_form) if vote.reward == "oracle" else None
    adapted = method.adapt(engine, q, prompt, sampling, vote, update, seed, timer, oracle,
                           votes=votes, **label_votes)
    if engine.policy_version == version:
        # Nothing the samples come from changed (a skipped update): the same seed would draw
        # the same samples again, so the before-evaluation is the after-evaluation.
        after = list(before)
    else:
        with timer("eval"):
            after = sample_answers(engine, *eval_args, seed + 1)
    stats, rewards = adapted.vote, adapted.rewards
    return QuestionResult(
        index=index, id=q.id, reward=vote.reward, pseudo_label=adapted.label,
        vote={"majority_ratio": stats.majority_ratio, "answered_ratio": stats.answered_ratio,
              "margin": stats.margin, "n_voting": stats.n_voting,
              "n_none": stats.n_none, "clusters": stats.cluster_counts,
              **({"from": "base"} if label_votes else {})},
        rewards={"n": len(rewards), "positive": sum(r > 0 for r in rewards),
                 "mean": sum(rewards) / len(rewards) if rewards else 0.0},
        skipped=adapted.skip_reason is not None, skip_reason=adapted.skip_reason,
        flagged=adapted.label is None, train=adapted.train, answers_before=cut(before),
        answers_after=cut(after),
        **question_metrics(example, before, after, adapted, vote.answer_form),
        extra=adapted.extra,
        # a NaN or infinite training statistic (written as null): the update diverged
        diverged=has_non_finite(adapted.train),
        seconds=dict(timer.seconds))


def run_questions(parts: RunParts, examples: list[Example], engine_factory,
                  known_ids: set[str] | None = None, config_sha: str | None = None) -> dict:
    """Run (or resume) the per-question experiment; returns the summary also written to disk.

    `engine_factory()` builds the engine, only when a question is left to run. `known_ids`: the
    whole data set's ids (default: the examples'); a results line of any other is refused.
    `config_sha`: written into each results line (run.config_sha)."""
    loop = parts.loop
    out = Path(loop.output_dir)
    results = ResultsFile(out)
    results.check_ids(known_ids or {ex.question.id for ex in examples})
    checkpoint = out / "checkpoint.pt"
    use_checkpoint = False
    if loop.continuous:
        use_checkpoint = recover_pending(results, checkpoint, loop.allow_missing_checkpoint)
    done = results.done_ids()
    todo = [(i, ex) for i, ex in enumerate(examples) if ex.question.id not in done]
    if todo:
        engine: Engine = engine_factory()
        try:
            if use_checkpoint:
                load_checkpoint(engine, checkpoint)
            carry = Carry(engine, loop, results.records) if loop.continuous else None
            with RunLogger(loop, parts.record, len(examples), len(done), "questions", "q") as log:
                for i, ex in todo:
                    record = run_question(engine, ex, i, parts)
                    record.config_sha = config_sha
                    start = time.perf_counter()
                    if carry is None:
                        engine.reset()
                        record.seconds["reset"] = time.perf_counter() - start
                    else:  # the guard, the pull-back, the optimiser (modes/carry.py)
                        carry.after(record)
                        record.seconds["carry"] = time.perf_counter() - start
                    record.seconds["total"] = sum(record.seconds.values())
                    if loop.continuous:
                        save_checkpoint(engine, checkpoint, record, len(results.records) + 1)
                    results.append(record)
                    s = summarize(results.records, parts.record)
                    write_json_atomic(out / "summary.json", s)
                    line = record.to_json()
                    scalars = {k: float(line[k]) for k in SCALARS if line[k] is not None}
                    scalars.update({f"seconds/{k}": v for k, v in record.seconds.items()})
                    trips = s.get("guard_trips", 0)
                    if record.guard is not None:
                        scalars["guard_tripped"] = float(bool(record.guard["tripped"]))
                    log.log(scalars, len(results.records),
                            status(s) + (f", guard rolled back {trips}x" if trips else ""))
        finally:
            engine.close()
    summary = summarize(results.records, parts.record)
    write_json_atomic(out / "summary.json", summary)
    return summary


def status(summary: dict) -> str:
    """The progress bar's line: the run's pass@1 so far, or why there is none."""
    if summary["pass@1_before"] is None:
        return NO_REFERENCES
    return (f"pass@1 {summary['pass@1_before']:.3f} -> {summary['pass@1_after']:.3f}, "
            f"maj@N {summary['maj@N_before']:.3f}")


# ---- continuous-mode checkpoints -----------------------------------------------------------
# In continuous mode the weights are part of the result, so each question's weights are saved
# together with its results line *before* that line is appended. A run killed between the two
# finds the line in the checkpoint and appends it on resume: nothing lost, nothing twice.
# Results lines without a readable checkpoint would mean continuing from the initial weights, a
# different experiment: that is refused unless --allow_missing_checkpoint accepts it.

START_OVER = "delete results.jsonl and checkpoint.pt to start over"


def save_checkpoint(engine: Engine, path: Path, record: QuestionResult, lines: int) -> None:
    """The weights after `record`'s question, saved with that line and the number of results
    lines once it is appended (`lines`), so a resume can tell a results file that lost lines."""
    state = {"engine": engine.state_dict(), "record": record.to_json(), "lines": lines}
    write_torch_atomic(path, state)


def read_checkpoint(path: Path, map_location=None) -> dict:
    """The checkpoint's contents; an unreadable one is a one-line UserError."""
    import torch

    try:
        state = torch.load(path, weights_only=False, map_location=map_location)
        weights = state.get("engine") if isinstance(state, dict) else None
        if not isinstance(weights, dict) or not {"model", "adapter"} & set(weights):
            raise ValueError("not an STTRL checkpoint: no model weights")
    except Exception as err:  # torch raises RuntimeError, pickle errors, EOFError, OSError...
        raise UserError(f"{path} cannot be read ({brief(err)}); "
                        f"pass --allow_missing_checkpoint to continue from the initial weights, "
                        f"or {START_OVER}") from None
    return state


def load_checkpoint(engine: Engine, path: Path) -> None:
    try:
        engine.load_state_dict(read_checkpoint(path)["engine"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:  # another model's weights
        raise UserError(f"{path} does not fit this run's model ({brief(err)}); {START_OVER}, "
                        "or resume with the --model it was saved with") from None


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
    pending = isinstance(record, dict) and "id" in record and \
        str(record["id"]) not in results.done_ids()
    lines = state.get("lines")
    # the checkpoint came with its line: the file holds it, or a kill left it only here
    if isinstance(lines, int) and len(results.records) + pending != lines:
        have = len(results.records) + pending
        why = ("the weights have already learnt from questions that the results file lost"
               if have < lines else "the checkpoint is older than the results")
        raise UserError(f"{path} was saved after {lines} finished question(s), but "
                        f"{results.path} accounts for {have}: {why}; restore the matching "
                        f"files, or {START_OVER}")
    if pending:
        problem = QuestionResult.problem(record)
        if problem:
            raise UserError(f"{path} holds a question's line that is not a results record "
                            f"({problem}); {START_OVER}")
        results.append(QuestionResult.from_json(record))
    return True
