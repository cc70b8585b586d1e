"""What the scale engine's Ray actors share: their settings, placement info, the weight-sync
groups and process group, error lines. The actors: `ray_rollout.RolloutActor` (vLLM) and
`ray_trainer` (DeepSpeed ZeRO-3 trainer ranks, reference, critic).

The actors are plain classes: `ray_engine` wraps them with `ray.remote(...)`. Constructors only
store their arguments (so placement can be checked without loading anything); `setup()` loads
the model.
Heavy imports (torch, vllm, deepspeed) happen inside methods, after the environment is set:
vLLM and DeepSpeed read their settings at import time, and Ray must be able to pickle the
classes without pickling those modules.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

# Each vLLM reload call has a fixed cost: reloading SmolLM2 took 1.13 s in 33 per-module calls,
# 0.62 s in 2 chunks of this size, 0.55 s in one call (benchmarks/profile_vllm_reload.py, CPU).
# Module groups are sent together up to this many bytes, which is the extra memory a sync holds
# on actor rank 0 and on each engine.
SYNC_CHUNK_BYTES = 512 * 2**20


@dataclass(frozen=True)
class ActorSettings:
    """What every actor needs to know, fixed for the engine's lifetime."""

    model_path: str
    trust_remote_code: bool = False
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    gradient_checkpointing: bool = False
    pad_id: int = 0
    max_model_len: int = 4096
    max_num_seqs: int = 64
    tensor_parallel_size: int = 1
    colocate: bool = False
    sync_timeout: float = 600.0
    seed: int = 0
    train_threads: int | None = None
    """CPU threads per actor rank and per vLLM engine (None: the machine's cores shared among
    the ranks, or among the engines: training and sampling never run at the same time)."""
    vllm_engines: int = 1
    """How many vLLM engines share the machine's cores while sampling."""


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


def weight_groups(names: list[str], nbytes: dict[str, int] | None = None,
                  budget: int = SYNC_CHUNK_BYTES) -> list[list[str]]:
    """Parameter names in pushes of whole modules, consecutive modules together up to `budget`
    bytes (`nbytes`: each parameter's size; without it, one push per module).

    vLLM's in-place reload rebuilds each of its modules from the tensors of one call, so a call
    must hold every HF tensor of the modules it touches (q, k and v for qkv_proj, ...). A decoder
    layer (`...layers.<i>.`) is such a unit; outside the layers each parameter's own module is.
    A unit larger than the budget goes alone: units are never split.
    """
    units: list[list[str]] = []
    last = None
    for name in names:
        m = re.match(r"(.*?\.layers\.\d+)\.", name)
        key = m.group(1) if m else name.rsplit(".", 1)[0]
        if key != last:
            units.append([])
            last = key
        units[-1].append(name)
    if nbytes is None:
        return units
    groups: list[list[str]] = []
    size = 0
    for unit in units:
        unit_size = sum(nbytes[n] for n in unit)
        if not groups or size + unit_size > budget:
            groups.append([])
            size = 0
        groups[-1].extend(unit)
        size += unit_size
    return groups


def sync_backend(settings: ActorSettings) -> str:
    """The weight-sync group's backend: nccl between GPUs, gloo otherwise. NCCL refuses two ranks
    on one GPU (colocated engines), and a tp>1 engine's front actor holds no GPU: gloo then."""
    gpu = on_gpu() and settings.tensor_parallel_size == 1 and not settings.colocate
    return "nccl" if gpu else "gloo"


def sync_group(addr: str, port: int, rank: int, world: int, backend: str, timeout: float):
    """The weight-sync process group (rank 0: actor rank 0; rank i: vLLM engine i - 1).

    Built on its own TCPStore (hosted by rank 0), not with init_process_group, so the default
    group of the process (DeepSpeed's on the actor, vLLM's in the engine) is left alone.
    Returns once every rank has joined; every collective fails after `timeout` seconds.
    """
    import datetime

    import torch.distributed as dist

    limit = datetime.timedelta(seconds=timeout)
    store = dist.TCPStore(addr, port, world, rank == 0, limit, wait_for_workers=False)
    if backend == "nccl":
        # Untested here (no GPU). NCCL fails asynchronously: a dead peer shows at the timeout,
        # when NCCL's watchdog ends this process; the driver has named the dead engine by then.
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = limit
        return dist.ProcessGroupNCCL(store, rank, world, options)
    return dist.ProcessGroupGloo(store, rank, world, limit)


def error_line(err: BaseException) -> str:
    """An exception as one line: its type and the last line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def tied_output_embedding(model) -> dict[str, str]:
    """{input embedding weight name: output embedding weight name} when the two are one tensor
    (tie_word_embeddings: SmolLM2, Qwen2.5-Math-1.5B); HF lists only the first as a parameter."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is None or out is None or out.weight is not inp.weight:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    return {f"{names[id(inp)]}.weight": f"{names[id(out)]}.weight"}
