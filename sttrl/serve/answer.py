"""One request's test-time RL, on the engine the worker owns: sample the votes, elect the
pseudo-label, adapt with the run's method (its own `adapt`, unchanged), then answer with the
adapted model. The caller resets the engine afterwards, whatever happened here.

    prompt -> votes -> pseudo-label -> rewards -> update -> answer samples -> their majority

The method sees the engine through `Watched`, which checks the request's cancel flag before
every sampling call and after every optimiser step, so a client that leaves stops the work at
the next phase boundary.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

from sttrl.algorithms import METHODS
from sttrl.modes.common import Timer, question_seed
from sttrl.rewards.label import pseudo_label
from sttrl.serve.schema import BadRequest, Job
from sttrl.settings import RunParts
from sttrl.types import Question


class Cancelled(Exception):
    """The client went away; the request's work stops at the next phase boundary."""


class Watched:
    """The engine as one request's method sees it: every call that samples or trains first
    checks the request's cancel flag, and an update ends after the step during which it was
    set. Everything else passes through to the engine."""

    def __init__(self, engine, cancelled: threading.Event):
        self._engine, self._cancelled = engine, cancelled

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def check(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled()

    def generate(self, *args, **kwargs):
        self.check()
        return self._engine.generate(*args, **kwargs)

    def generate_groups(self, *args, **kwargs):
        self.check()
        return self._engine.generate_groups(*args, **kwargs)

    def train(self, batch, loss_fn, loss_kwargs, steps, mini_batches=None, lrs=None, stop=None,
              trust=None):
        self.check()

        def halt(stats: dict) -> bool:
            return self._cancelled.is_set() or (stop is not None and stop(stats))

        history = self._engine.train(batch, loss_fn, loss_kwargs, steps, mini_batches, lrs, halt,
                                     trust)
        self.check()
        return history


@dataclass
class Outcome:
    """What the HTTP layer turns into a completion."""

    choices: list[tuple[str, str]]
    """(text, finish_reason) per choice."""
    prompt_tokens: int
    completion_tokens: int
    facts: dict = field(default_factory=dict)
    """The response's `sttrl` object."""


def check_length(engine, job: Job) -> int:
    """The prompt's tokens; a 400 when it and max_tokens do not fit the model's context."""
    tokens = len(engine.encode(job.prompt))
    context = engine.max_context
    if context and tokens + job.max_tokens > context:
        raise BadRequest(400, f"the prompt is {tokens} tokens, and with max_tokens "
                         f"{job.max_tokens} that passes the model's context of {context} tokens",
                         param="messages", code="context_length_exceeded")
    return tokens


def majority_first(samples, task: str, parts: RunParts):
    """The sample indices with those whose answer is the majority first (as drawn otherwise),
    every sample's answer, the majority answer, and the share of samples that agree with it."""
    answers, label, stats = pseudo_label(samples, task, parts.vote)
    if label is None:
        return list(range(len(samples))), answers, None, 0.0
    agree = [i for i, c in enumerate(stats.sample_cluster) if c == stats.winner]
    rest = [i for i in range(len(samples)) if stats.sample_cluster[i] != stats.winner]
    return agree + rest, answers, label, len(agree) / len(samples)


def run_job(engine, job: Job, parts: RunParts, timer: Timer) -> Outcome:
    """Adapt on the job's prompt and answer with the adapted model (the engine is left adapted:
    the worker resets it, or keeps it for the job's session)."""
    prompt_tokens = check_length(engine, job)
    sampling = dataclasses.replace(parts.sampling, n_votes=job.n_votes, n_train=job.n_train,
                                   max_new_tokens=job.max_tokens)
    update = dataclasses.replace(parts.update, steps=job.steps,
                                 min_majority_ratio=job.min_majority_ratio)
    # the same prompt gets the same votes and answer unless the client asks for another seed
    seed = job.seed if job.seed is not None else question_seed(sampling.seed, job.prompt)
    question = Question(id=job.id, prompt=job.prompt, source="serve", task=job.task)
    method = METHODS[update.method]
    votes = None
    if method.votes is not None:
        with timer("generate"):
            votes = engine.generate_groups(job.prompt, [method.votes(sampling, seed)],
                                           job.max_tokens)[0]
    version = engine.policy_version
    adapted = method.adapt(engine, question, job.prompt, sampling, parts.vote, update, seed,
                           timer, votes=votes)
    temperature = sampling.val_temp if job.temperature is None else job.temperature
    top_p = sampling.val_top_p if job.top_p is None else job.top_p
    unchanged = engine.policy_version == version
    reuse = (job.answer_mode == "majority" and unchanged and votes is not None
             and job.temperature is None and job.top_p is None and len(votes) >= job.n)
    if reuse:
        # nothing changed the model, so the votes already are its answers: no second draw
        samples = votes
    else:
        count = job.n if job.answer_mode == "sample" else max(sampling.n_eval, job.n)
        with timer("answer"):
            samples = engine.generate(job.prompt, count, temperature, top_p, job.max_tokens,
                                      seed + 1)
    with timer("vote"):
        order, answers, label, agreement = majority_first(samples, job.task, parts)
    chosen = [samples[i] for i in (order if job.answer_mode == "majority" else range(len(samples)))]
    chosen = chosen[:job.n]
    stats = adapted.vote
    facts = {
        "method": update.method,
        "pseudo_label": adapted.label,
        "majority_ratio": stats.majority_ratio,
        "votes": {"n": len(adapted.answers), "n_none": stats.n_none,
                  "clusters": stats.cluster_counts},
        "rewards": {"n": len(adapted.rewards), "positive": sum(r > 0 for r in adapted.rewards)},
        "steps": len(adapted.train),
        "skipped": adapted.skip_reason is not None or job.steps == 0,
        "skip_reason": adapted.skip_reason or ("steps is 0" if job.steps == 0 else None),
        "answer_mode": job.answer_mode,
        "answer": label,
        "answer_agreement": agreement,
        "answers_from_votes": reuse,
        "answers": answers,
        "train": adapted.train,
    }
    return Outcome(choices=[(s.text, "stop" if s.finished else "length") for s in chosen],
                   prompt_tokens=prompt_tokens,
                   completion_tokens=sum(len(s.token_ids) for s in chosen), facts=facts)
