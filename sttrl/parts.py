"""A resolved `Config` split by consumer, once, at the top of a run: the engine, the sampling,
the vote, the update and the mode's loop each get their own settings (sttrl/settings.py), and
nothing below `run.py` sees the `Config` itself."""
from __future__ import annotations

import dataclasses

from sttrl.algorithms import METHODS
from sttrl.config import Config
from sttrl.settings import (EngineSettings, LoopSettings, RunParts, SamplingSettings,
                            UpdateSettings, VoteSettings)


def pick(kind, cfg: Config, **derived):
    """A settings record whose fields that are named like Config fields take their values."""
    same = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(kind)
            if f.name not in derived}
    return kind(**same, **derived)


def sample_rows(cfg: Config) -> int:
    """The most samples one sampling call draws: a method that names its votes has them drawn
    in the before-evaluation's batch (modes/question.py), n_votes + n_eval rows at once."""
    votes = METHODS[cfg.adaptation_method].votes
    shared = 0
    if votes is not None and cfg.mode == "question":
        shared = votes(pick(SamplingSettings, cfg), cfg.seed).n + cfg.n_eval
    return max(cfg.n_votes, cfg.n_eval, shared)


def parts(cfg: Config) -> RunParts:
    """The run's parts from a resolved config (every None default filled by `resolve`)."""
    return RunParts(
        engine=pick(EngineSettings, cfg, max_sample_rows=sample_rows(cfg),
                    need_logsumexp=cfg.voting_function == "energy"),
        sampling=pick(SamplingSettings, cfg),
        vote=pick(VoteSettings, cfg),
        update=pick(UpdateSettings, cfg, method=cfg.adaptation_method,
                    steps=cfg.steps_per_question),
        loop=pick(LoopSettings, cfg),
        record=dataclasses.asdict(cfg))
