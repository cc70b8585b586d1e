"""The weight sync, both ends side by side: actor rank 0 gathers the ZeRO-3 weights and sends them
(`WeightSender`, mixed into `trainer.TrainerActor`), every vLLM engine receives and loads them in
place (`WeightReceiver`, mixed into `rollout.RolloutActor`), and the driver keeps count of which
weights each side holds and starts the calls (`WeightSync`).

After every `train`, `restore` and `load_state_dict` that changed the weights, all actor ranks
gather the parameters one at a time (a collective) and rank 0 buffers whole module groups
(`weight_groups`: whole decoder layers, whole vLLM modules) up to SYNC_CHUNK_BYTES, which every
engine then loads in place. Two ways to send it (`--weight_sync`):

- `broadcast` (default): a process group of its own (rank 0: actor rank 0, rank i: vLLM engine
  i - 1), set up once at start-up (`sync_group`); rank 0 broadcasts each tensor, the engines
  know every shape and dtype in advance (`WeightSender.sync_plan`). Backend gloo on CPU; nccl
  on GPUs (same code, not yet run on a GPU here), gloo again where NCCL cannot work
  (`sync_backend`). The default because it measured faster on CPU (benchmarks/
  bench_weight_sync.py, docs/PERFORMANCE.md) and on GPUs it skips host memory.
- `object_store`: rank 0 `ray.put`s each group and every engine loads it from Ray's object
  store, at most two groups in flight.

A dead engine fails the sync with a one-line error naming it; rank 0 keeps gathering so the
other ranks' collectives complete, and an engine whose reload fails keeps receiving without
loading. After a failed broadcast its group is unusable: the run ends, and re-running resumes.
A reset sends nothing: each engine reloads the initial checkpoint from disk
(`WeightReceiver.load_initial_weights`) while the ranks restore their own copies.

A tied output embedding (tie_word_embeddings: SmolLM2, Qwen2.5-Math-1.5B) is one tensor under
two names; HF lists it once, vLLM's reload does not follow the tie: every send adds it under
its own name too (`add_tied`).
"""
from __future__ import annotations

import itertools
import re

from sttrl.engines.ray.common import error_line
from sttrl.errors import EngineError

# Each vLLM reload call has a fixed cost (it re-processes every module it touches), so a sync
# sends as few calls as it can: module groups go together up to this many bytes, which is the
# extra memory a sync holds on actor rank 0 and on each engine. Numbers per way of sending:
# benchmarks/profile_vllm_reload.py, docs/PERFORMANCE.md.
SYNC_CHUNK_BYTES = 512 * 2**20


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


def tied_output_embedding(model) -> dict[str, str]:
    """{input embedding weight name: output embedding weight name} when the two are one tensor
    (tie_word_embeddings); HF lists only the first as a parameter."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is None or out is None or out.weight is not inp.weight:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    return {f"{names[id(inp)]}.weight": f"{names[id(out)]}.weight"}


def add_tied(chunk: dict, tied: dict[str, str]) -> dict:
    """`chunk` (name -> tensor) with each tied tensor it holds also under its tied name (the
    same tensor, no copy): vLLM's reload does not follow the tie, so a send holds both."""
    for src, dst in tied.items():
        if src in chunk:
            chunk[dst] = chunk[src]
    return chunk


def sync_backend(settings) -> str:
    """The weight-sync group's backend: nccl between GPUs, gloo otherwise. NCCL refuses two ranks
    on one GPU (colocated engines), and a tp>1 engine's front actor holds no GPU: gloo then."""
    from sttrl.engines.ray.common import on_gpu

    gpu = on_gpu() and settings.vllm_tensor_parallel_size == 1 and not settings.colocate
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


def gathered(module, groups: list[list[str]], tied: dict[str, str], keep: bool,
             device: str = "cpu"):
    """Yield (names, {name: tensor on device}) per module group of a ZeRO-3 `module`, tied names
    added; the tensors only where `keep` (rank 0), empty dicts elsewhere.

    Every rank must run this loop: gathering a ZeRO-3 parameter is a collective.
    """
    import deepspeed

    params = dict(module.named_parameters())
    for names in groups:
        chunk = {}
        for name in names:
            with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=None):
                if keep:
                    chunk[name] = params[name].data.detach().to(device, copy=True)
        yield names, add_tied(chunk, tied)


class _SyncMember:
    """Either end of the --weight_sync broadcast group."""

    sync_group = None
    sync_device = "cpu"
    plan: dict | None = None

    def join_sync_group(self, addr: str, port: int, rank: int, world: int, plan: dict) -> None:
        """Join the weight-sync group, hosted by actor rank 0 (group rank 0); `plan`
        (`WeightSender.sync_plan`) says what each broadcast will hold."""
        self.plan = plan
        self.sync_device = "cuda" if plan["backend"] == "nccl" else "cpu"
        self.sync_group = sync_group(addr, port, rank, world, plan["backend"],
                                     self.settings.sync_timeout)


class WeightSender(_SyncMember):
    """Actor ranks' end (rank 0 sends, the others take part in the gathers). Needs the host's
    `engine` (DeepSpeed), `groups`, `tied`, `rank` and `settings`."""

    def sync_plan(self) -> dict:
        """What the vLLM engines must know to receive rank 0's broadcasts: the backend, per
        module group each tensor's (name, full shape, dtype) (a ZeRO-3 parameter keeps its full
        shape in ds_shape), and the tied output embedding, which vLLM needs under its own name."""
        params = dict(self.engine.module.named_parameters())
        groups = [[(n, tuple(getattr(params[n], "ds_shape", params[n].shape)), params[n].dtype)
                   for n in names] for names in self.groups]
        return {"backend": sync_backend(self.settings), "groups": groups, "tied": self.tied}

    def push_weights(self, rollouts: list, timeout: float) -> str | None:
        """Send the weights to every vLLM engine, one module group at a time, via the object store.

        At most two groups are in flight (one loading, one gathered). If an engine fails, rank 0
        stops sending but keeps gathering, so the other ranks' collectives complete; the error
        comes back as a string for the driver to raise.
        """
        import ray

        error, pending = None, []

        def settle():
            nonlocal error, pending
            for i, ref in enumerate(pending):  # pending[i] belongs to vLLM engine i
                if error is None:
                    try:
                        ray.get(ref, timeout=timeout)
                    except ray.exceptions.RayActorError:
                        error = f"vLLM engine {i} died"
                    except Exception as err:  # noqa: BLE001 - reported to the driver below
                        error = f"vLLM engine {i}: {error_line(err)}"
            pending = []

        for _, chunk in gathered(self.engine.module, self.groups, self.tied, self.rank == 0):
            if self.rank != 0 or error is not None:
                continue
            ref = ray.put(chunk)
            settle()
            if error is None:
                pending = [r.load_weights.remote(ref) for r in rollouts]
        if self.rank == 0:
            settle()
            if error is None:
                pending = [r.weights_loaded.remote() for r in rollouts]
                settle()
        return error

    def broadcast_weights(self) -> str | None:
        """Broadcast the weights from rank 0 to every vLLM engine, one module group at a time.

        All ranks gather (a collective). If a broadcast fails (an engine died), rank 0 stops
        sending but keeps gathering, so the other ranks' collectives complete; the error comes
        back as a string for the driver to raise. The group is unusable afterwards. The tied
        name is not sent (the receiver adds it): only the plan's names go over the group.
        """
        error = None
        for names, chunk in gathered(self.engine.module, self.groups, self.tied,
                                     self.rank == 0, self.sync_device):
            if self.rank != 0 or error is not None:
                continue
            try:
                for work in [self.sync_group.broadcast(chunk[n], 0) for n in names]:
                    work.wait()
            except Exception as err:  # noqa: BLE001 - reported to the driver
                error = f"broadcasting to the vLLM engines: {error_line(err)}"
        return error


class WeightReceiver(_SyncMember):
    """A vLLM engine's end. Needs the host's `llm` (vllm.LLM), `index` and `settings`."""

    def load_weights(self, chunk: dict) -> None:
        """Replace the weights of whole modules in place (HF names -> tensors)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(chunk.items())})

    def weights_loaded(self) -> None:
        """After the last chunk: cached prompt KV was computed with the old weights."""
        self.llm.reset_prefix_cache()

    def load_initial_weights(self, tied: dict[str, str]) -> bool:
        """Reload the checkpoint this engine started from, from disk (reset mode): no gather or
        transfer, and it runs while the actor ranks restore their own copy. `tied`: as in a
        sync, the tied output embedding is sent under its own name too (the checkpoint lists it
        once). False when the model is not a local safetensors directory (a hub name): the
        driver syncs from the actor instead."""
        import glob
        import os

        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(self.settings.model_path, "*.safetensors")))
        if not files:
            return False
        handles = [safe_open(f, framework="pt") for f in files]
        where = {name: h for h in handles for name in h.keys()}
        chunk, size = {}, 0
        for unit in weight_groups(sorted(where)):  # sorted: a layer's tensors are consecutive
            tensors = add_tied({name: where[name].get_tensor(name) for name in unit}, tied)
            unit_size = sum(t.nbytes for t in tensors.values())
            if chunk and size + unit_size > SYNC_CHUNK_BYTES:
                self.load_weights(chunk)
                chunk, size = {}, 0
            chunk.update(tensors)
            size += unit_size
        self.load_weights(chunk)
        self.weights_loaded()
        return True

    def receive_weights(self) -> str | None:
        """Receive rank 0's broadcasts (`WeightSender.broadcast_weights`) and load each module
        group, the previous group loading while the next one arrives. If loading fails, keep
        receiving without loading, so rank 0 is never left waiting on this engine; the error
        comes back as a string for the driver.

        With vllm_tensor_parallel_size > 1 this front actor receives on CPU (gloo) and
        `load_weights`' collective_rpc relays the tensors to vLLM's Ray workers (untested: needs
        GPUs).
        """
        import torch

        error, arrived = None, None  # arrived: the last group received, not loaded yet

        def load(chunk: dict) -> None:
            nonlocal error
            if error is not None:
                return
            try:
                self.load_weights(add_tied(chunk, self.plan["tied"]))
            except Exception as err:  # noqa: BLE001 - reported to the driver
                error = f"vLLM engine {self.index}: {error_line(err)}"

        for group in self.plan["groups"]:
            chunk = {name: torch.empty(shape, dtype=dtype, device=self.sync_device)
                     for name, shape, dtype in group}
            try:
                works = [self.sync_group.broadcast(t, 0) for t in chunk.values()]
                if arrived is not None:
                    load(arrived)
                for work in works:
                    work.wait()
            except Exception as err:  # noqa: BLE001 - rank 0 died or timed out: the group is gone
                return f"vLLM engine {self.index}: {error_line(err)}"
            arrived = chunk
        if arrived is not None:
            load(arrived)
        if error is None:
            self.weights_loaded()
        return error


class WeightSync:
    """The driver's end: which weights the actor ranks and the vLLM engines hold, and the calls
    that make the engines hold the actor's.

    Each distinct set of actor weights has a version: 0 is the checkpoint on disk the engines
    start from, every train and every loaded checkpoint get a new number, and a restore returns
    to its snapshot's. `sync` sends only when the engines hold another version, so a skipped
    question's reset sends nothing. `get(refs, what)` is the engine's bounded Ray wait.
    """

    def __init__(self, how: str, trainers: list, rollouts: list, get):
        self.how, self.trainers, self.rollouts, self._get = how, trainers, rollouts, get
        self.actor = 0  # the version the actor ranks hold
        self.engines = 0  # the version the vLLM engines hold
        self._versions = itertools.count(1)
        self.plan: dict = {}

    def open(self) -> None:
        """At start-up, after the actors' set-up: what each sync holds (the engines need its
        tied embedding to reload from disk too) and, for broadcast, the group: actor rank 0
        (group rank 0) and vLLM engine i (group rank i + 1) join it once. It lives as long as
        the actors: `RayEngine.close` kills them, which closes it."""
        rank0 = self.trainers[0]
        self.plan = self._get(rank0.sync_plan.remote(), "actor start-up")
        if self.how != "broadcast":
            return
        world = len(self.rollouts) + 1
        addr, port = self._get(rank0.master_address.remote(), "weight-sync group start-up")
        calls = [rank0.join_sync_group.remote(addr, port, 0, world, self.plan)]
        calls += [r.join_sync_group.remote(addr, port, i + 1, world, self.plan)
                  for i, r in enumerate(self.rollouts)]
        self._get(calls, f"weight-sync group start-up ({self.plan['backend']})")

    def changed(self) -> None:
        """The actor ranks now hold weights no one held before (a train step, a checkpoint)."""
        self.actor = next(self._versions)

    def reload_calls(self, version: int) -> list:
        """Restoring `version`: when it is 0 and the engines hold another, each engine reloads
        the checkpoint from disk itself, started now so that it runs while the ranks restore
        (pass the results to `reloaded`); else no calls."""
        if version != 0 or self.engines == 0:
            return []
        return [r.load_initial_weights.remote(self.plan["tied"]) for r in self.rollouts]

    def reloaded(self, results: list) -> None:
        if results and all(results):  # False: not a safetensors directory; `sync` sends then
            self.engines = 0

    def sync(self, timeout: float) -> None:
        """Make every vLLM engine hold the actor's weights (nothing to do if it already does)."""
        if self.engines == self.actor:
            return
        if self.how == "broadcast":  # every rank gathers, engines receive at once
            calls = [t.broadcast_weights.remote() for t in self.trainers]
            calls += [r.receive_weights.remote() for r in self.rollouts]
        else:
            calls = [t.push_weights.remote(self.rollouts, timeout) for t in self.trainers]
        # a dead engine raises here, naming it; other failures come back as strings
        errors = [e for e in self._get(calls, "weight sync to the vLLM engines") if e]
        if errors:
            raise EngineError(f"weight sync to the vLLM engines failed: {errors[0]}")
        self.engines = self.actor
