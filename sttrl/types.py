"""The records passed between layers: a question, samples out of an engine, a batch into it,
what a method's adaptation of one question produced, and that question's results line.

Nothing here imports torch or any other STTRL module, so every layer can read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Question:
    """What the model and the training loop see for one test item: no reference answer, so a
    label cannot leak into a reward by accident."""

    id: str
    """Unique within its set; seeds the question's sampling."""
    prompt: str
    """The bare question; prompt templates add the instruction."""
    source: str
    """Where the question comes from (a data set's name)."""
    task: str
    """math, or gpqa (multiple choice: the answer is a letter)."""


@dataclass(frozen=True)
class Example:
    """A question with its reference answer, which only evaluation (and the oracle) may read."""

    question: Question
    """The part the methods see."""
    answer: str | None
    """The reference answer (None: the file gives none, so pass@1 cannot be measured)."""


@dataclass
class Sample:
    """One generated response and the per-token summaries the voting functions need.

    All lists have one entry per generated token (the response only, never the prompt).
    """

    text: str
    """Decoded response, special tokens stripped."""
    token_ids: list[int]
    """Generated token ids, including the end-of-sequence token when one was produced."""
    logprobs: list[float] = field(default_factory=list)
    """log p(token_t | prefix) under the untempered model (temperature 1, no top-p)."""
    logsumexp: list[float] = field(default_factory=list)
    """logsumexp of the raw logits z_t at each step; energy E = -mean_t logsumexp(z_t)."""
    topk_logprob_mean: list[float] = field(default_factory=list)
    """Mean of the top-k (k=20) untempered log-probs at each step; DeepConf confidence is its negation."""
    finished: bool = True
    """False when generation stopped at max_new_tokens rather than at end-of-sequence."""


@dataclass(frozen=True)
class SampleGroup:
    """One group of an engine's `generate_groups` call: n samples of the prompt at this
    temperature and top-p, whose random numbers come from a generator seeded with `seed`, as
    `generate(prompt, n, temperature, top_p, max_new_tokens, seed)` would draw them."""

    n: int
    temperature: float
    top_p: float
    seed: int


@dataclass
class TrainBatch:
    """What an update trains on: responses, each continuing its own prompt, with advantages."""

    prompts: list[list[int]]
    """Prompt token ids, one list per response (per-question methods repeat one prompt)."""
    responses: list[list[int]]
    """Token ids of each response, as generated."""
    advantages: list[float]
    """One scalar per response (GRPO: group-normalised reward; SFT: 1 keeps a response)."""
    rewards: list[float] | None = None
    """Each response's outcome reward, for an engine with a critic (gae), which then computes
    per-token advantages itself and ignores `advantages`; None for every other update."""
    temperature: float = 1.0
    """The temperature the responses were sampled at. The engines compute the training
    log-probs (new, old and reference) from logits / temperature, so the ratio and its clip are
    those of the policy that sampled (as TRL, verl and OpenRLHF do). 1.0 for SFT on the samples
    (ttft: TRL's SFT uses untempered logits); <= 0 (greedy rollouts) trains as 1.0."""

    probe: list[list[int]] | None = None
    """Responses to prompts[0] drawn with the trained ones but not trained on (the votes after
    n_train). A measured update (`train(..., trust=...)`) reports after each step every probe
    response's summed log-ratio, current policy over the one that sampled, at `temperature`
    (`probe_logratio`; `train_logratio` likewise for the trained responses): importance
    weights from samples the step never saw."""

    @classmethod
    def shared(cls, prompt_ids: list[int], responses: list[list[int]],
               advantages: list[float], rewards: list[float] | None = None,
               temperature: float = 1.0, probe: list[list[int]] | None = None) -> "TrainBatch":
        """All responses continue the same prompt."""
        return cls([prompt_ids] * len(responses), responses, advantages, rewards, temperature,
                   probe)


@dataclass(frozen=True)
class TrustRegion:
    """How far each optimiser step of a per-question update may move the policy, measured as
    the mean per-token k3 KL over the question's own trained responses, in a forward pass after
    the step. A step past either budget is undone exactly and retried smaller."""

    max_step_kl: float
    """Budget of one step's KL to the policy before it (0: none)."""
    max_kl: float
    """Budget of the KL to the initial (reference) model after any step (0: none)."""
    backtracks: int = 4
    """How often an overshooting step is undone and retried smaller before the update ends."""
    max_lr_scale: float = 16.0
    """How far steps well inside the step budget may grow the learning rate (times the base)."""


@dataclass
class Adaptation:
    """What a method's `adapt` did with one question, for the results line and the metrics.

    Alignment rule: `rewards[i]` is the reward of `answers[i]` for i < len(rewards); the
    answers after those are the voted samples that were not trained on.
    """

    answers: list[str | None]
    """Every voted sample's extracted answer (None: nothing extractable), trained ones first."""
    label: str | None
    """The pseudo-label the vote elected; None when no sample had an answer."""
    vote: Any
    """The vote's statistics (sttrl.rewards.vote.VoteStats)."""
    rewards: list[float]
    """The reward of each trained sample, aligned with answers[:len(rewards)]."""
    skip_reason: str | None = None
    """Why no update was taken (None: it was)."""
    train: list[dict] = field(default_factory=list)
    """One stats dict per optimiser step taken."""
    extra: dict | None = None
    """Method-specific numbers for the results line (MEMO: the marginal's entropy)."""


NUMBER = (int, float)
# What a resumed run and the summary read from a results line, and the JSON types each must have.
# The metrics are null for a question without a reference answer (a label-free data set).
MEASURED = NUMBER + (type(None),)
REQUIRED = {"id": (str, int), "pass@1_before": MEASURED, "pass@1_after": MEASURED,
            "maj@N_before": (bool, *MEASURED), "label_correct": (bool, *MEASURED),
            "reward_accuracy": NUMBER + (type(None),), "skipped": (bool,), "seconds": (dict,)}


@dataclass
class QuestionResult:
    """One question's line of results.jsonl: `to_json` writes it, `from_json` reads it back
    (on resume) and refuses anything that is not such a line."""

    index: int | None
    """The question's position in the run's set (None in lines written before it was kept)."""
    id: str | int
    """The question's id."""
    reward: str
    """What the update was trained on: vote, oracle or random."""
    pseudo_label: str | None
    """The label the vote elected; None when no sample had an answer."""
    vote: dict
    """majority_ratio (TTRL's, over all samples), answered_ratio, margin (the lead over the
    runner-up), n_voting, n_none and clusters (answer -> count) of the vote."""
    rewards: dict
    """n, positive and mean of the trained samples' rewards."""
    skipped: bool
    """Whether no update was taken."""
    skip_reason: str | None
    """Why not (None: it was taken)."""
    flagged: bool
    """No label: nothing could be extracted from any sample."""
    train: list[dict]
    """One stats dict per optimiser step taken."""
    answers_before: list
    """The before-evaluation's answers (cut to 200 characters)."""
    answers_after: list
    """The after-evaluation's answers."""
    pass1_before: float | None
    """pass@1 before the update (written as "pass@1_before"); None without a reference."""
    pass1_after: float | None
    """pass@1 after it ("pass@1_after"); None without a reference."""
    majN_before: float | None
    """1 if the vote before the update elected the reference ("maj@N_before")."""
    label_correct: float | None
    """1 if the pseudo-label is correct; None without a reference."""
    reward_accuracy: float | None
    """Share of trained samples whose reward equals the reference's."""
    seconds: dict
    """Wall seconds per phase (generate, vote, train, eval, reset) and their total."""
    extra: dict | None = None
    """Method-specific numbers (MEMO: the marginal's entropy); not written when None."""
    diverged: bool = False
    """A training statistic was NaN or infinite; written only when true."""
    config_sha: str | None = None
    """Which config produced the line (config_history.jsonl); None in lines from before it."""
    guard: dict | None = None
    """Continuous mode's collapse guard after this question (modes/carry.py): its readings, the
    signals that tripped, where it rolled back to, whether the state was kept as the last good
    one; not written when None."""

    def to_json(self) -> dict:
        out = {"index": self.index, "reward": self.reward, "id": self.id,
               "pseudo_label": self.pseudo_label, "vote": self.vote, "rewards": self.rewards,
               "skipped": self.skipped, "skip_reason": self.skip_reason, "flagged": self.flagged,
               "train": self.train, "answers_before": self.answers_before,
               "answers_after": self.answers_after, "pass@1_before": self.pass1_before,
               "pass@1_after": self.pass1_after, "maj@N_before": self.majN_before,
               "label_correct": self.label_correct, "reward_accuracy": self.reward_accuracy}
        if self.extra is not None:
            out["extra"] = self.extra
        if self.diverged:
            out["diverged"] = True
        if self.config_sha is not None:
            out["config_sha"] = self.config_sha
        if self.guard is not None:
            out["guard"] = self.guard
        out["seconds"] = self.seconds
        return out

    @staticmethod
    def problem(record) -> str | None:
        """Why `record` (a parsed JSON line) is not a results line, or None when it is one."""
        if not isinstance(record, dict):
            return f"a JSON {type(record).__name__}, not an object"
        for key, types in REQUIRED.items():
            if key not in record:
                return f"no {key!r}"
            if not isinstance(record[key], types):
                return f"{key!r} is {type(record[key]).__name__}"
        if not isinstance(record["seconds"].get("total"), NUMBER):
            return "no 'total' in 'seconds'"
        return None

    @classmethod
    def from_json(cls, record) -> "QuestionResult":
        """The line as a record; a ValueError saying why (`problem`) when it is not one. Keys
        that older lines lack take their defaults."""
        problem = cls.problem(record)
        if problem:
            raise ValueError(problem)
        r = record
        return cls(index=r.get("index"), id=r["id"], reward=r.get("reward", "vote"),
                   pseudo_label=r.get("pseudo_label"), vote=r.get("vote", {}),
                   rewards=r.get("rewards", {}), skipped=r["skipped"],
                   skip_reason=r.get("skip_reason"), flagged=r.get("flagged", False),
                   train=r.get("train", []), answers_before=r.get("answers_before", []),
                   answers_after=r.get("answers_after", []), pass1_before=r["pass@1_before"],
                   pass1_after=r["pass@1_after"], majN_before=r["maj@N_before"],
                   label_correct=r["label_correct"], reward_accuracy=r["reward_accuracy"],
                   seconds=r["seconds"], extra=r.get("extra"), diverged=bool(r.get("diverged")),
                   config_sha=r.get("config_sha") if isinstance(r.get("config_sha"), str) else None,
                   guard=r.get("guard"))
