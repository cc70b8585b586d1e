"""The scale engine's DeepSpeed ZeRO-3 actors: trainer ranks (the policy), the reference model
on its own GPU, critic ranks (PPO). See `ray_actors` for what the actors share."""
from __future__ import annotations

import copy
import datetime
import os
import socket
import time

from sttrl.engines.ray.common import (ActorSettings, error_line, on_gpu, placement_info,
                                      sync_backend, sync_group, tied_output_embedding,
                                      weight_groups)

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


class TrainerActor:
    """One data-parallel DeepSpeed ZeRO-3 rank of the policy, plus its shard of the reference.

    Every method that touches the model is a collective: the engine calls it on all ranks at
    once, and every rank runs the same number of forward and backward passes.
    """

    def __init__(self, rank: int, world: int, bundle: int, settings: ActorSettings):
        self.rank, self.world, self.bundle, self.settings = rank, world, bundle, settings
        self.engine = None
        self.ref_engine = None  # the frozen initial weights, built on first need
        self.snapshots: dict = {}
        self.sync_group, self.sync_device = None, "cpu"  # rank 0, --weight_sync broadcast only

    def info(self) -> dict:
        return placement_info("actor", self.rank, [self.bundle])

    def master_address(self) -> tuple[str, int]:
        """Rank 0 picks the rendezvous address of the process group (its node, a free port)."""
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
            # DeepSpeed's CPU collectives would JIT-build a shared-memory op (95 s, and ranks
            # race to build it); marking it unavailable makes them plain gloo collectives.
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
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=ds_config(self.settings))
        self.engine.eval()  # no dropout in training either, as in the local engine
        # a ZeRO-3 parameter keeps its full size in ds_numel
        nbytes = {n: getattr(p, "ds_numel", p.numel()) * p.element_size()
                  for n, p in self.engine.module.named_parameters()}
        self.groups = weight_groups(list(nbytes), nbytes)
        self.tied = tied_output_embedding(self.engine.module)
        self.snapshot("initial")
        return time.perf_counter() - start

    def _load(self, train: bool):
        """The HF model, partitioned across ranks while it loads (ZeRO-3 init)."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.integrations import HfDeepSpeedConfig

        s = self.settings
        config = ds_config(s, train)
        config["train_batch_size"] = self.world
        self._hf_ds = HfDeepSpeedConfig(config)  # must stay alive: from_pretrained checks it
        model = self._pretrained(AutoModelForCausalLM,
                                 torch.bfloat16 if on_gpu() else torch.float32)
        if train and s.gradient_checkpointing:
            from sttrl.engines.models import enable_gradient_checkpointing
            enable_gradient_checkpointing(model)
        if not train:
            model.requires_grad_(False)
        return model

    def _pretrained(self, auto_class, dtype):
        s = self.settings
        return auto_class.from_pretrained(s.model_path, dtype=dtype,
                                          trust_remote_code=s.trust_remote_code)

    def _reference(self):
        if self.ref_engine is None:
            import deepspeed

            model = self._load(train=False)
            self.ref_engine, *_ = deepspeed.initialize(model=model,
                                                       config=ds_config(self.settings, False))
            self.ref_engine.eval()
        return self.ref_engine

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

    def score(self, micro_batches: list[dict], with_logsumexp: bool = False,
              reference: bool = False) -> list:
        """Per micro-batch: token log-probs [b, T] (and logsumexp [b, T]) as CPU tensors."""
        import torch

        from sttrl.engines.sequences import response_logprobs

        model = self._reference() if reference else self.engine
        out = []
        with torch.no_grad():
            for mb in micro_batches:
                ids, attn, pos, mask, dummy = self._batch(mb)
                got = response_logprobs(model, ids, attn, pos, mask.shape[1], with_logsumexp)
                got = got if with_logsumexp else (got,)
                out.append(None if dummy else tuple(g.float().cpu() for g in got))
        return out

    def train(self, micro_batches: list[dict], loss_fn, loss_kwargs: dict, steps: int,
              n_tokens: float, use_ref: bool) -> list[dict]:
        """`steps` optimiser steps on this rank's micro-batches; per step, stat sums and grad norm.

        The loss is summed over tokens and divided by the token count of the *whole* batch (all
        ranks); DeepSpeed averages gradients over the ranks, so each rank scales by the world
        size and the update is the local engine's token mean over the whole batch.
        """
        import torch

        from sttrl.engines.sequences import response_logprobs

        kl = loss_kwargs.get("kl_coef", 0.0) > 0
        ref = None  # reference log-probs per micro-batch: from --separate_ref_gpu's actor, or ours
        if kl and use_ref:
            if any("ref" in mb for mb in micro_batches):
                ref = [mb.get("ref") for mb in micro_batches]
                ref = [None if r is None else r.to(self.device) for r in ref]
            else:
                ref = [None if r is None else r[0].to(self.device)
                       for r in self.score(micro_batches, reference=True)]
        old = [None] * len(micro_batches)  # the first step's own log-probs: that step is on-policy

        def loss(j, mb, ids, attn, pos, mask):
            new = response_logprobs(self.engine, ids, attn, pos, mask.shape[1])  # [b, T]
            if old[j] is None:
                old[j] = new.detach()
            mb_ref = None
            if kl:  # while pristine the policy is the reference: no second model needed
                mb_ref = old[j] if ref is None or ref[j] is None else ref[j]
            adv = mb["advantages"]  # per response (a list), or per token (gae: [b, T] tensor)
            adv = adv.to(self.device) if isinstance(adv, torch.Tensor) else torch.tensor(
                adv or [0.0], dtype=torch.float32, device=self.device)  # [b] or [b, T]
            return loss_fn(new, old[j], mb_ref, adv, mask, **loss_kwargs)

        return self._steps(micro_batches, steps, n_tokens, loss)

    def _steps(self, micro_batches: list[dict], steps: int, n_tokens: float, loss) -> list[dict]:
        """`steps` optimiser steps; `loss(j, mb, ids, attn, pos, mask)` gives micro-batch j's
        (loss summed over tokens, stats). Every rank runs every micro-batch, dummies included."""
        history = []
        # Training mode only switches on checkpointing (dropout is off: see models.py).
        self.engine.module.train(self.settings.gradient_checkpointing)
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
    def snapshot(self, key: str) -> None:
        # state_dict() holds references to the live tensors: copy, or training edits the snapshot
        self.snapshots[key] = copy.deepcopy(self.engine.optimizer.state_dict())

    def restore(self, key: str) -> None:
        self._load_optimizer(self.snapshots[key])

    def drop(self, key: str) -> None:
        self.snapshots.pop(key, None)

    def _load_optimizer(self, state: dict) -> None:
        # Copy the rest again: loading keeps references to the Adam moments (and the loss
        # scaler), which later steps edit. The fp32 partition is copied into DeepSpeed's own
        # buffer (and from there into the model's partitioned weights): copying it first too
        # was 1 s of a 1.4 s reset for SmolLM2 (fresh pages).
        flat = "fp32_flat_groups"
        state = {**copy.deepcopy({k: v for k, v in state.items() if k != flat}), flat: state[flat]}
        # Each rank reads its own entry of the per-rank list.
        self.engine.optimizer.load_state_dict([state] * self.world)
        # A scoring forward leaves every parameter gathered; those full copies still hold the
        # old weights, and the next gather (the weight sync) would read them instead of the
        # restored partitions: vLLM kept the trained weights after a reset. Drop them. (The
        # engine's call adds a gc.collect(), ~0.25 s; in a reset it runs while vLLM reloads.)
        self.engine.empty_partition_cache()

    def optimizer_state(self) -> dict:
        return copy.deepcopy(self.engine.optimizer.state_dict())

    def load_optimizer_state(self, state: dict) -> None:
        self._load_optimizer(state)

    # -- full weights, gathered one parameter at a time ---------------------------------------
    def _gathered(self, device: str = "cpu"):
        """Yield (names, {name: tensor on device}) per whole-module group; only rank 0 gets tensors.

        Every rank must run this loop: gathering a ZeRO-3 parameter is a collective.
        """
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        for names in self.groups:
            chunk = {}
            for name in names:
                with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=None):
                    if self.rank == 0:
                        chunk[name] = params[name].data.detach().to(device, copy=True)
            for src, dst in self.tied.items():
                if src in chunk:
                    chunk[dst] = chunk[src]  # vLLM's reload does not follow the tie: send both
            yield names, chunk

    def full_weights(self) -> dict | None:
        """The whole state dict on rank 0 (None elsewhere), for checkpoints and tests."""
        weights = {}
        for _, chunk in self._gathered():
            weights.update(chunk)
        return weights if self.rank == 0 else None

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

        for _, chunk in self._gathered():
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

    # -- the other path: a process group from rank 0 to the vLLM engines ----------------------
    def sync_plan(self) -> dict:
        """What the vLLM engines must know to receive rank 0's broadcasts: the backend, per
        module group each tensor's (name, full shape, dtype) (a ZeRO-3 parameter keeps its full
        shape in ds_shape), and the tied output embedding, which vLLM needs under its own name."""
        params = dict(self.engine.module.named_parameters())
        groups = [[(n, tuple(getattr(params[n], "ds_shape", params[n].shape)), params[n].dtype)
                   for n in names] for names in self.groups]
        return {"backend": sync_backend(self.settings), "groups": groups, "tied": self.tied}

    def join_sync_group(self, addr: str, port: int, rank: int, world: int, plan: dict) -> None:
        """Rank 0 hosts the weight-sync group (see RolloutActor.join_sync_group)."""
        self.sync_device = "cuda" if plan["backend"] == "nccl" else "cpu"
        self.sync_group = sync_group(addr, port, rank, world, plan["backend"],
                                     self.settings.sync_timeout)

    def broadcast_weights(self) -> str | None:
        """Broadcast the weights from rank 0 to every vLLM engine, one module group at a time.

        All ranks gather (a collective). If a broadcast fails (an engine died), rank 0 stops
        sending but keeps gathering, so the other ranks' collectives complete; the error comes
        back as a string for the driver to raise. The group is unusable afterwards.
        """
        error = None
        for names, chunk in self._gathered(self.sync_device):
            if self.rank != 0 or error is not None:
                continue
            try:
                for work in [self.sync_group.broadcast(chunk[n], 0) for n in names]:
                    work.wait()
            except Exception as err:  # noqa: BLE001 - reported to the driver
                error = f"broadcasting to the vLLM engines: {error_line(err)}"
        return error


# ---- reference on its own GPU, critic ranks --------------------------------------------------

class ReferenceActor:
    """The frozen initial model on its own bundle (--separate_ref_gpu): scores, never trains."""

    def __init__(self, bundle: int, settings: ActorSettings):
        self.bundle, self.settings = bundle, settings
        self.model = None

    def info(self) -> dict:
        return placement_info("ref", 0, [self.bundle])

    def setup(self) -> float:
        return 0.0  # the model is loaded on first use: reset-mode runs never need it

    def score(self, prompts: list[list[int]], responses: list[list[int]]):
        """Token log-probs [B, T] (CPU) under the initial weights."""
        import torch

        from sttrl.engines.sequences import pad_batch, response_logprobs
        from sttrl.engines.models import load_model

        s = self.settings
        device = "cuda" if on_gpu() else "cpu"
        if self.model is None:
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            self.model = load_model(s.model_path, dtype, device, s.trust_remote_code)[0].eval()
            self.model.requires_grad_(False)
        T = max(1, max(len(r) for r in responses))
        out = []
        with torch.no_grad():
            for i in range(0, len(responses), s.micro_batch_size):
                ids, attn, pos, mask = pad_batch(prompts[i:i + s.micro_batch_size],
                                                 responses[i:i + s.micro_batch_size],
                                                 s.pad_id, device)
                lp = response_logprobs(self.model, ids, attn, pos, mask.shape[1])
                out.append(torch.nn.functional.pad(lp.float().cpu(), (0, T - mask.shape[1])))
        return torch.cat(out)


class CriticActor(TrainerActor):
    """One data-parallel DeepSpeed ZeRO-3 rank of PPO's critic (advantage_estimator gae).

    The critic ranks are their own Ray processes with their own process group (critic rank 0
    picks its rendezvous), and reuse the actor rank's ZeRO-3 set-up, micro-batching, dummy rows,
    snapshots and checkpoints; only the model and the loss differ. The value model is
    `AutoModelForTokenClassification` with one label: the policy's backbone plus a linear head
    on every position, one HF module that `from_pretrained` loads and partitions under ZeRO-3
    init like the actor (no hand-written wrapper whose head would need partitioning by hand);
    it exists for Llama, Qwen2 and Mistral. The head starts at zero, so every initial value is
    0 and the first advantages are the discounted reward, not a random head's noise.
    """

    def info(self) -> dict:
        return placement_info("critic", self.rank, [self.bundle])

    def _pretrained(self, auto_class, dtype):
        import deepspeed
        from transformers import AutoModelForTokenClassification

        s = self.settings
        try:
            model = AutoModelForTokenClassification.from_pretrained(
                s.model_path, num_labels=1, dtype=dtype, trust_remote_code=s.trust_remote_code)
        except ValueError as err:  # an architecture without a token-classification class
            first = str(err).splitlines()[0] if str(err) else ""
            raise ValueError("--advantage_estimator gae needs a model with a token-classification "
                             f"class in transformers for its critic: {first}") from None
        head = list(model.score.parameters())
        with deepspeed.zero.GatheredParameters(head, modifier_rank=0):  # partitioned: gather
            for p in head:
                p.data.zero_()
        return model

    def _values(self, ids, attn, pos, T: int):
        """V of the state before each response token [b, T]: the head on the position before it,
        the one whose logits predict that token in the policy."""
        out = self.engine(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        return out.logits[:, -T - 1:-1, 0].float()  # [b, T]

    def values(self, micro_batches: list[dict]) -> list:
        """Per micro-batch: values [b, T] as CPU tensors (None for a dummy)."""
        import torch

        out = []
        with torch.no_grad():
            for mb in micro_batches:
                ids, attn, pos, mask, dummy = self._batch(mb)
                values = self._values(ids, attn, pos, mask.shape[1])
                out.append(None if dummy else values.cpu())
        return out

    def train(self, micro_batches: list[dict], steps: int, n_tokens: float,
              value_clip: float) -> list[dict]:
        """`steps` optimiser steps of the clipped value loss towards mb["returns"] ([b, T]),
        clipped around mb["old_values"] ([b, T], the values GAE used); token mean as the actor."""
        from sttrl.algorithms.gae import value_loss

        def loss(j, mb, ids, attn, pos, mask):
            values = self._values(ids, attn, pos, mask.shape[1])  # [b, T]
            if mb["returns"] is None:  # a dummy row: fully masked, any targets will do
                return value_loss(values, values.detach(), values.detach(), mask, value_clip)
            return value_loss(values, mb["old_values"].to(self.device),
                              mb["returns"].to(self.device), mask, value_clip)

        return self._steps(micro_batches, steps, n_tokens, loss)
