"""What the policy's and the critic's DeepSpeed ZeRO-3 ranks share: the DeepSpeed config, the
rank base class (`ZeroRank`: start-up, micro-batches with dummy rows, the optimiser-step loop,
snapshots, checkpoints, gathered weights), and the driver's side of data parallelism: how a
batch is dealt to the ranks (`shard`, `micro_batches`) and their step stats merged
(`merge_steps`). `trainer.TrainerActor` and `critic.CriticActor` add their model and loss.

Every rank method that touches the model is a collective: the engine calls it on all ranks of
a group at once, and every rank runs the same number of forward and backward passes.
"""
from __future__ import annotations

import copy
import datetime
import os
import socket
import time

from sttrl.engines.ray.common import ActorSettings, on_gpu, placement_info, quiet_known_warnings
from sttrl.engines.ray.weight_sync import gathered, tied_output_embedding, weight_groups

# ZeRO-3 keeps parameters below this many elements whole on every rank (DeepSpeed's default is
# 1e5). 0 partitions every parameter: a little more communication, and small test models then
# exercise the same partitioned code paths as large ones.
ZERO_PERSISTENCE_THRESHOLD = 0


def ds_config(s: ActorSettings, train: bool = True) -> dict:
    gpu = on_gpu()
    config = {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: we feed our own micro-batches
        "gradient_accumulation_steps": 1,
        # backward() only accumulates, step() reduces and updates: one optimiser step per
        # train step however many micro-batches went in (as in the local engine)
        "managed_gradient_accumulation": False,
        "zero_optimization": {"stage": 3, "overlap_comm": False,
                              "stage3_param_persistence_threshold": ZERO_PERSISTENCE_THRESHOLD},
        "bf16": {"enabled": gpu},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train:
        config["gradient_clipping"] = s.grad_clip
        # torch.optim.AdamW (no compiled DeepSpeed op), the local engine's optimiser
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": s.lr, "weight_decay": s.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8,
            "torch_adam": True}}
    return config


class ZeroRank:
    """One data-parallel DeepSpeed ZeRO-3 rank of a trained model; subclasses say which model
    (`_pretrained`) and what it computes."""

    role = "actor"  # as placement_info reports it

    def __init__(self, rank: int, world: int, bundle: int, settings: ActorSettings):
        quiet_known_warnings()
        self.rank, self.world, self.bundle, self.settings = rank, world, bundle, settings
        self.engine = None
        self.snapshots: dict = {}  # key -> optimiser state dict: "initial" and at most one more

    def info(self) -> dict:
        return placement_info(self.role, self.rank, [self.bundle])

    def master_address(self) -> tuple[str, int]:
        """Rank 0 picks the rendezvous address of a process group (its node, a free port)."""
        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def setup(self, addr: str, port: int) -> float:
        start = time.perf_counter()
        import torch

        gpu = on_gpu()
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world), MASTER_ADDR=addr,
                          MASTER_PORT=str(port), LOCAL_RANK="0" if gpu else str(self.rank),
                          LOCAL_WORLD_SIZE="1" if gpu else str(self.world))
        if not gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed

        if not gpu:
            # DeepSpeed's CPU collectives would JIT-build a shared-memory op (a long build, and
            # the ranks race to build it); marked unavailable, they are plain gloo collectives.
            import deepspeed.ops
            from deepspeed.ops.op_builder.all_ops import ALL_OPS
            deepspeed.ops.__compatible_ops__ = dict.fromkeys(ALL_OPS, False)
        self.device = "cuda" if gpu else "cpu"
        if gpu:
            torch.cuda.set_device(0)  # Ray shows this actor its own GPU only
        else:
            # Ray gives a fractional-CPU actor one thread; training is the only work while it
            # runs (rollouts wait), so use this rank's share of the machine, as the local engine
            # does (or OMP_NUM_THREADS, when the user set it for the run).
            torch.set_num_threads(self.settings.train_threads
                                  or max(1, (os.cpu_count() or 1) // self.world))
        # A hung collective (a dead peer) fails after sync_timeout instead of never.
        deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo",
                                   auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(seconds=self.settings.sync_timeout))
        model = self._load(train=True)
        # only what trains gets fp32 partitions and Adam moments (all of it but a frozen base)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable,
                                               config=ds_config(self.settings))
        self.engine.eval()  # no dropout in training either, as in the local engine
        # a ZeRO-3 parameter keeps its full size in ds_numel
        nbytes = {n: getattr(p, "ds_numel", p.numel()) * p.element_size()
                  for n, p in self.engine.module.named_parameters()}
        self.groups = weight_groups(list(nbytes), nbytes)  # gathers go module group by group
        self.tied = tied_output_embedding(self.engine.module)
        self.snapshot("initial")
        return time.perf_counter() - start

    def _load(self, train: bool):
        """The HF model, partitioned across ranks while it loads (ZeRO-3 init)."""
        import torch
        from transformers.integrations import HfDeepSpeedConfig

        s = self.settings
        config = ds_config(s, train)
        config["train_batch_size"] = self.world
        self._hf_ds = HfDeepSpeedConfig(config)  # must stay alive: from_pretrained checks it
        model = self._pretrained(torch.bfloat16 if on_gpu() else torch.float32)
        if train and s.gradient_checkpointing:
            from sttrl.engines.models import enable_gradient_checkpointing
            enable_gradient_checkpointing(model)
        if not train:
            model.requires_grad_(False)
        return self._adapt(model) if train else model

    def _adapt(self, model):
        """The model as it trains (the policy's ranks wrap a LoRA adapter around it here)."""
        return model

    def _pretrained(self, dtype):
        """This rank's HF model, from settings.model_path (loaded under ZeRO-3 init)."""
        raise NotImplementedError

    def _batch(self, mb: dict):
        """Pad one micro-batch; an empty one becomes a fully masked dummy row (see `shard`)."""
        from sttrl.engines.sequences import pad_batch

        dummy = not mb["responses"]
        prompts = [mb["dummy"][0]] if dummy else mb["prompts"]
        responses = [mb["dummy"][1]] if dummy else mb["responses"]
        ids, attn, pos, mask = pad_batch(prompts, responses, self.settings.pad_id, self.device)
        if dummy:
            mask = mask.zero_()
        return ids, attn, pos, mask, dummy

    def _steps(self, micro_batches: list[dict], steps: int, n_tokens: float, loss) -> list[dict]:
        """`steps` optimiser steps; `loss(j, mb, ids, attn, pos, mask)` gives micro-batch j's
        (loss summed over tokens, stats). Every rank runs every micro-batch, dummies included.

        The loss is divided by the token count of the *whole* batch (all ranks); DeepSpeed
        averages gradients over the ranks, so each rank scales by the world size and the update
        is the local engine's token mean over the whole batch. Per step: stat sums, grad norm.
        """
        history = []
        # Training mode only switches on checkpointing (dropout is off: see models.py).
        self.engine.module.train(self.settings.gradient_checkpointing)
        if self.settings.lora_dropout:  # the adapter's dropout: on in these forwards only
            from sttrl.engines.lora import set_dropout
            set_dropout(self.engine.module, True)
        try:
            for _ in range(steps):
                sums: dict = {}
                for j, mb in enumerate(micro_batches):
                    ids, attn, pos, mask, dummy = self._batch(mb)
                    loss_sum, stats = loss(j, mb, ids, attn, pos, mask)
                    self.engine.backward(loss_sum * (self.world / n_tokens), scale_wrt_gas=False)
                    if not dummy:
                        for k, v in stats.items():
                            sums[k] = sums.get(k, 0.0) + v
                self.engine.step()
                norm = self.engine.get_global_grad_norm()
                history.append({"sums": sums,
                                "grad_norm": float(norm) if norm is not None else 0.0})
        finally:
            self.engine.module.eval()
        return history

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    # -- snapshots: this rank's fp32 partition, Adam moments and step counts ------------------
    def snapshot(self, key: str, replaces: str | None = None) -> None:
        """Keep the state under `key`, dropping the snapshot `replaces` first (the engine keeps
        the initial snapshot and at most one other: each holds a full optimiser state)."""
        if replaces != "initial":
            self.snapshots.pop(replaces, None)
        # state_dict() holds references to the live tensors: copy, or training edits the snapshot
        self.snapshots[key] = copy.deepcopy(self.engine.optimizer.state_dict())

    def restore(self, key: str) -> None:
        self._load_optimizer(self.snapshots[key])

    def release(self, key: str) -> None:
        """Drop the snapshot `key` (each holds a full copy of the optimiser state)."""
        if key != "initial":
            self.snapshots.pop(key, None)

    def distance_sq(self, key: str) -> float:
        """Squared L2 distance of this rank's fp32 partition from the snapshot `key`'s: the
        ranks' sum is how far the weights moved since it."""
        now = self.engine.optimizer.state_dict()["fp32_flat_groups"]
        then = self.snapshots[key]["fp32_flat_groups"]
        return float(sum(((a.float() - b.float()) ** 2).sum() for a, b in zip(now, then)))

    def reset_optimizer(self) -> None:
        """Adam's moments and step counts as the initial snapshot holds them (empty), this rank's
        fp32 partition as it is now: the reset's load, keeping the weights."""
        flat = "fp32_flat_groups"
        now = self.engine.optimizer.state_dict()[flat]
        self._load_optimizer({**{k: v for k, v in self.snapshots["initial"].items() if k != flat},
                              flat: [p.detach().clone() for p in now]})

    def pull_back(self, rho: float) -> None:
        """This rank's fp32 partition to initial + rho (now - initial), its moments kept: every
        rank pulls its own shard back against its own initial shard."""
        flat = "fp32_flat_groups"
        state = self.engine.optimizer.state_dict()
        start = self.snapshots["initial"][flat]
        self._load_optimizer({**{k: v for k, v in state.items() if k != flat},
                              flat: [b + rho * (a.detach() - b) for a, b in zip(state[flat], start)]})

    def snapshot_keys(self) -> list[str]:
        """The snapshots this rank holds (what the tests count)."""
        return list(self.snapshots)

    def _load_optimizer(self, state: dict) -> None:
        # Copy the rest again: loading keeps references to the Adam moments (and the loss
        # scaler), which later steps edit. The fp32 partition is copied into DeepSpeed's own
        # buffer (and from there into the model's partitioned weights): copying it first too
        # would fill fresh pages as large as the partition, most of a reset's time
        # (docs/PERFORMANCE.md).
        flat = "fp32_flat_groups"
        state = {**copy.deepcopy({k: v for k, v in state.items() if k != flat}), flat: state[flat]}
        # Each rank reads its own entry of the per-rank list.
        self.engine.optimizer.load_state_dict([state] * self.world)
        # A scoring forward leaves every parameter gathered; those full copies still hold the
        # old weights, and the next gather (the weight sync) would read them instead of the
        # restored partitions: vLLM kept the trained weights after a reset. Drop them. (The
        # call runs a gc.collect(); in a reset it overlaps vLLM's reload from disk.)
        self.engine.empty_partition_cache()

    def optimizer_state(self) -> dict:
        return copy.deepcopy(self.engine.optimizer.state_dict())

    def load_optimizer_state(self, state: dict) -> None:
        """A checkpoint's: the fp32 partition is in it, so this restores the weights too."""
        self._load_optimizer(state)

    def full_weights(self) -> dict | None:
        """The whole state dict on rank 0 (None elsewhere), for checkpoints and tests; gathered
        one parameter at a time by every rank (a collective)."""
        weights = {}
        for _, chunk in gathered(self.engine.module, self.groups, self.tied, self.rank == 0):
            weights.update(chunk)
        return weights if self.rank == 0 else None


# ---- the driver's side: dealing a batch to the ranks, merging what they return ---------------

def shard(prompts: list[list[int]], responses: list[list[int]], world: int,
          micro: int) -> list[list[list[int]]]:
    """Row indices per rank per micro-batch. Rows are dealt to the ranks longest first, in turn
    (so every rank gets about the same tokens), and each rank's rows are cut into length buckets
    as the local engine does (`sequences.length_buckets`: at most `micro` rows, cut where the
    padding saved pays for another pass, by the PASS_COST_TOKENS cost model). ZeRO-3's forward
    and backward are collectives, so every rank runs the same number of micro-batches: a rank
    with fewer gets empty ones, which it runs as a fully masked dummy row (zero loss, zero
    gradient)."""
    from sttrl.engines.sequences import PASS_COST_TOKENS, length_buckets

    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plan = []
    for rank in range(world):
        rows = order[rank::world]
        plan.append([[rows[j] for j in bucket]
                     for bucket in length_buckets([lengths[i] for i in rows], micro,
                                                  PASS_COST_TOKENS)])
    n_micro = max(1, max(len(p) for p in plan))
    return [p + [[] for _ in range(n_micro - len(p))] for p in plan]


def micro_batches(plan: list[list[int]], prompts, responses, advantages=None,
                  per_token: dict | None = None) -> list[dict]:
    """One rank's micro-batches (its `shard` plan) as plain lists. per_token: {name: [B, T]
    tensor} (reference log-probs, GAE's advantages, the critic's returns and old values), each
    sliced to the micro-batch's rows and length (None in a dummy)."""
    dummy = (prompts[0], responses[0])
    out = []
    for rows in plan:
        mb = {"prompts": [prompts[i] for i in rows], "responses": [responses[i] for i in rows],
              "advantages": [advantages[i] for i in rows] if advantages else [],
              "dummy": dummy}
        T = max([1] + [len(responses[i]) for i in rows])
        for name, x in (per_token or {}).items():
            mb[name] = x[rows, :T] if rows else None
        out.append(mb)
    return out


def merge_steps(per_rank: list[list[dict]], n_tokens: float) -> list[dict]:
    """Per step: every rank's stat sums added and divided by the batch's token count (a token
    mean over the whole batch), and the gradient norm (the same on every rank)."""
    history = []
    for step in zip(*per_rank):  # one entry per rank
        keys = list(dict.fromkeys(k for rank in step for k in rank["sums"]))
        merged = {k: sum(rank["sums"].get(k, 0.0) for rank in step) / n_tokens for k in keys}
        merged["grad_norm"] = step[0]["grad_norm"]
        history.append(merged)
    return history
