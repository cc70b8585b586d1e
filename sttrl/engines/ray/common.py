"""What every part of the scale engine shares: the actors' settings (the engine's own plus what
the driver derives), where an actor runs, one-line errors, and the one way the driver waits on
Ray (`wait`).

The actors (`rollout.RolloutActor`, `trainer.TrainerActor` and `ReferenceActor`,
`critic.CriticActor`) are plain classes: `placement.spawn_actors` wraps them with
`ray.remote(...)`. Constructors only store their arguments (so placement can be checked without
loading anything); `setup()` loads the model. Heavy imports (torch, vllm, deepspeed) happen
inside methods, after the environment is set: vLLM and DeepSpeed read their settings at import
time, and Ray must be able to pickle the classes without pickling those modules.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

from sttrl.errors import EngineError
from sttrl.settings import EngineSettings

PROMPT_ROOM = 4096  # tokens of prompt vLLM must have room for beyond max_new_tokens

# FutureWarnings the installed stack prints from inside the actors on every successful run
# (vLLM's dispatcher probes torch.distributed.reduce_op; DeepSpeed's ZeRO-3 gathers call
# all_gather_into_tensor): deprecations in other projects' code that the user can do nothing
# about. Exactly these are silenced, each by its message; every other warning still shows.
KNOWN_WARNINGS = (r"`torch\.distributed\.reduce_op` is deprecated",
                  r"`torch\.distributed\.all_gather_into_tensor` is deprecated")


def quiet_known_warnings() -> None:
    """Silence KNOWN_WARNINGS in this process (an actor calls it first thing)."""
    import warnings

    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


@dataclass(frozen=True)
class RaySnapshot:
    """A snapshot held by the actor and critic ranks (their partitions and optimizer state) under
    `key`, of the weights with this version (weight_sync.WeightSync)."""

    key: str
    version: int


@dataclass(frozen=True)
class ActorSettings(EngineSettings):
    """What every actor needs to know, fixed for the engine's lifetime (frozen and plain: it
    pickles to the actors): the engine's own settings, and what the driver derives from the
    model and the environment (`derive`)."""

    model_path: str
    """The model's directory, which every actor loads."""
    pad_id: int
    """The tokenizer's padding token id."""
    max_model_len: int
    """The longest prompt + response vLLM is started for (the engine's max_context)."""
    train_threads: int | None
    """CPU threads per actor rank and per vLLM engine (None: the machine's cores shared among
    the ranks, or among the engines: training and sampling never run at the same time)."""

    @classmethod
    def derive(cls, settings: EngineSettings, model_path: str, pad_id: int,
               position_limit: int | None = None) -> "ActorSettings":
        """`settings` and the derived fields (`position_limit`: the model's
        max_position_embeddings)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(EngineSettings)},
                   model_path=model_path, pad_id=pad_id,
                   max_model_len=min(position_limit or 10**9,
                                     settings.max_new_tokens + PROMPT_ROOM),
                   train_threads=user_omp_threads())


def user_omp_threads() -> int | None:
    """OMP_NUM_THREADS as set for this run (Ray overrides it inside actors), else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def on_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def placement_info(role: str, index: int, bundles: list[int]) -> dict:
    """Where this actor runs, as Ray sees it (the bundle index is what it was created with)."""
    import ray

    ctx = ray.get_runtime_context()
    return {"role": role, "index": index, "bundles": bundles, "gpu_ids": ray.get_gpu_ids(),
            "placement_group": ctx.get_placement_group_id(), "node": ctx.get_node_id(),
            "pid": os.getpid()}


def error_line(err: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def wait(refs, what: str, timeout: float, labels: dict[str, str]):
    """ray.get of one ref or a list, within `timeout` seconds in all, failing fast on the first
    dead actor or error with a one-line `EngineError` that says `what` failed and, for a dead
    actor, which (`labels`: actor id hex -> "vLLM engine 0" etc.)."""
    import ray
    from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

    single = not isinstance(refs, list)
    todo = [refs] if single else list(refs)
    deadline = time.monotonic() + timeout
    try:
        while todo:  # one at a time: a plain ray.get would sit on a rank waiting for a dead peer
            ready, todo = ray.wait(todo, num_returns=1,
                                   timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise EngineError(f"{what} did not finish within --sync_timeout "
                                  f"{timeout:g} s (a hung or overloaded Ray actor)")
            ray.get(ready)  # raises now if that call failed
        out = ray.get([refs] if single else refs)
    except RayActorError as err:
        who = labels.get(str(err.actor_id), "a Ray actor")
        raise EngineError(f"{what} failed: {who} died") from None
    except RayTaskError as err:
        cause = err.cause if err.cause is not None else err
        text = str(cause).strip().splitlines()
        if isinstance(cause, RayActorError):
            who = labels.get(str(cause.actor_id), "a Ray actor")
            raise EngineError(f"{what} failed: {who} died") from None
        raise EngineError(f"{what} failed: {type(cause).__name__}: "
                          f"{text[-1] if text else ''}") from None
    except OutOfMemoryError as err:  # Ray's memory monitor killed a worker (a busy machine)
        text = str(err).strip().splitlines()
        raise EngineError(f"{what} failed: {text[0] if text else 'out of memory'}") from None
    return out[0] if single else out
