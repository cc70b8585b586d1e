"""Continuous mode between questions: the collapse guard, the pull-back and the optimiser.

After each question of a --continuous run, in this order:

1. the collapse guard (--collapse_guard, on by default) reads label-free signals of the policy
   that would carry on, from the last WINDOW questions' after-evaluation answers and the
   update's KL to the base model; when one trips it rolls the weights back to the state kept
   after the last question that passed a full window (--guard_rollback last_good), or to the
   initial weights (base, or when no such state is kept yet), and the question's results line
   says so (`guard`);
2. otherwise the weights are pulled toward the initial ones (--anchor_rho) and the optimiser's
   moments are emptied (unless --carry_optimizer);
3. a question that passed a full window keeps the result as the new last good state, at most
   once every WINDOW questions; a trip whose first described question comes at or before the
   kept one's goes to the initial weights instead.

Nothing here reads a reference answer: the signals are what a deployed run could see.
"""
from __future__ import annotations

from collections import Counter

from sttrl.engines.base import Engine
from sttrl.settings import LoopSettings
from sttrl.types import QuestionResult

WINDOW = 5  # questions the signals look back over (since the start or the last rollback)
MIN_QUESTIONS = 3  # the window's signals wait for this many questions
SAME_ANSWER = 3  # one answer winning on this many of the window's questions (different ones)
MIN_DISTINCT = 3  # fewer distinct answers than this among the window's samples, most answered
MAX_UNANSWERED = 0.5  # share of the window's samples with no answer, and
UNANSWERED_RISE = 0.25  # this much above the base model's share (the run's first question)
MAX_KL = 0.5  # per-token KL to the base model after an update (2.5 x the trust region's budget)


def winner(answers: list) -> str | None:
    """The most common answer of one question's samples (None when none has one)."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def last_kl(train: list[dict]) -> float | None:
    """The KL to the base model after the question's last kept step (the trust region's
    kl_ref; else the loss's own k3 estimate), None without an update."""
    for stats in reversed(train):
        if stats.get("accepted", True):
            value = stats.get("kl_ref", stats.get("kl"))
            return None if value is None else float(value)
    return None


def unanswered(answers: list) -> float:
    return sum(a is None for a in answers) / max(1, len(answers))


def signals(window: list[QuestionResult], base_unanswered: float = 0.0) -> dict:
    """The guard's readings over the window (oldest first) and the names of those that trip.
    `base_unanswered`: the base model's share of unanswered samples, from the run's first
    question's before-evaluation (a model that rarely answers within --max_new_tokens is not
    collapsing when it keeps not answering)."""
    latest = window[-1]
    answers = [a for r in window for a in r.answers_after]
    wins: dict[str, list] = {}  # answer -> positions in the window of the questions it won
    for i, r in enumerate(window):
        w = winner(r.answers_after)
        if w is not None and str(r.id) not in {str(window[j].id) for j in wins.get(w, [])}:
            wins.setdefault(w, []).append(i)
    repeated = max(wins.values(), key=len, default=[])
    out = {"questions": len(window), "same_answer": len(repeated),
           "distinct": len({a for a in answers if a is not None}),
           "unanswered": unanswered(answers),
           "kl_ref": last_kl(latest.train)}
    tripped, since = [], len(window) - 1  # since: the first question the trip describes
    if out["kl_ref"] is not None and out["kl_ref"] > MAX_KL:
        tripped.append("kl_ref")
    if len(window) >= MIN_QUESTIONS:
        if out["same_answer"] >= SAME_ANSWER:
            tripped.append("same_answer")
            since = min(since, repeated[0])
        if out["distinct"] < MIN_DISTINCT and out["unanswered"] < 0.5:
            tripped.append("distinct")
            since = 0
        if out["unanswered"] > max(MAX_UNANSWERED, base_unanswered + UNANSWERED_RISE):
            tripped.append("unanswered")
            since = 0
    out["tripped"] = tripped
    if tripped:
        out["since"] = str(window[since].id)
    return out


class Carry:
    """What one continuous run carries between questions besides the weights: the guard's
    window and the last good state. Built after the checkpoint (if any) is loaded; `done` are
    the results lines already written, from which the window is rebuilt on resume."""

    def __init__(self, engine: Engine, loop: LoopSettings, done: list[QuestionResult]):
        self.engine, self.loop = engine, loop
        self.window: list[QuestionResult] = []
        self.age = 0  # questions since the last good state was kept (or the start)
        # the run starts from the initial weights: its first before-evaluation is the base's
        self.base_unanswered = unanswered(done[0].answers_before) if done else None
        for r in done:
            self._remember(r)
        self.last_good = None  # (engine snapshot, question id)
        if done and (done[-1].guard or {}).get("kept"):
            # the checkpoint just loaded is that question's kept state
            self.last_good = (engine.snapshot(), str(done[-1].id))

    def _remember(self, record: QuestionResult) -> None:
        self.age = 0 if (record.guard or {}).get("kept") else self.age + 1
        if (record.guard or {}).get("tripped"):
            self.window = []  # the signals described the weights that were rolled back
        else:
            self.window = (self.window + [record])[-WINDOW:]

    def after(self, record: QuestionResult) -> None:
        """Run between `record`'s question and the next; fills record.guard."""
        engine, loop = self.engine, self.loop
        if self.base_unanswered is None:
            self.base_unanswered = unanswered(record.answers_before)
        if loop.collapse_guard:
            window = (self.window + [record])[-WINDOW:]
            read = signals(window, self.base_unanswered)
            if read["tripped"]:
                ids = [str(r.id) for r in window]
                # a state kept after the first question the trip describes may already drift
                use_last = (loop.guard_rollback == "last_good" and self.last_good is not None
                            and self.last_good[1] not in ids[ids.index(read["since"]):])
                if use_last:
                    engine.restore(self.last_good[0])
                else:
                    engine.reset()
                # a second trip before a new state passes goes back to the base model
                read["rolled_back_to"] = self.last_good[1] if use_last else "base"
                self.last_good = None
                record.guard = read
                self._remember(record)
                return
            record.guard = read
        engine.pull_back(loop.anchor_rho)
        if not loop.carry_optimizer:
            engine.reset_optimizer()
        if (loop.collapse_guard and loop.guard_rollback == "last_good"
                and len(self.window) >= WINDOW - 1
                and (self.last_good is None or self.age + 1 >= WINDOW)):
            # kept at most once a window: an older good state survives the first questions of
            # a collapse, which the signals see only a few questions later
            self.last_good = (engine.snapshot(), str(record.id))
            record.guard["kept"] = True
        self._remember(record)
