"""The policy's DeepSpeed ZeRO-3 ranks (`TrainerActor`: scoring, the policy loss, its end of the
weight sync) and the frozen reference model on its own GPU (`ReferenceActor`). The rank base is
`zero.ZeroRank`; the weight sync is `weight_sync.WeightSender`."""
from __future__ import annotations

import contextlib

from sttrl.engines.ray.common import ActorSettings, on_gpu, placement_info, quiet_known_warnings
from sttrl.engines.ray.weight_sync import WeightSender
from sttrl.engines.ray.zero import ZeroRank, ds_config


class TrainerActor(WeightSender, ZeroRank):
    """One data-parallel DeepSpeed ZeRO-3 rank of the policy, plus its shard of the reference
    (the frozen initial weights, built on first need)."""

    def __init__(self, rank: int, world: int, bundle: int, settings: ActorSettings):
        super().__init__(rank, world, bundle, settings)
        self.ref_engine = None

    def _pretrained(self, dtype):
        from transformers import AutoModelForCausalLM

        s = self.settings
        return AutoModelForCausalLM.from_pretrained(s.model_path, dtype=dtype,
                                                    trust_remote_code=s.trust_remote_code)

    def _adapt(self, model):
        s = self.settings
        if not s.lora_rank:
            return model
        from sttrl.engines import lora

        # after checkpointing is switched on (it zeroes every dropout, the adapter's too)
        model = lora.wrap(model, s)
        if s.gradient_checkpointing:  # as in the local engine: adapters inside checkpointed
            model.enable_input_require_grads()  # layers need inputs that require grad
        self.adapter_names = [n for n, p in model.named_parameters() if p.requires_grad]
        return model

    def adapter_weights(self) -> dict | None:
        """The adapter under peft's saved names, on rank 0 (None elsewhere); a collective."""
        from sttrl.engines.lora import peft_key
        from sttrl.engines.ray.weight_sync import gathered

        _, chunk = next(gathered(self.engine.module, [self.adapter_names], {}, self.rank == 0))
        return {peft_key(n): t for n, t in chunk.items()} if self.rank == 0 else None

    def _reference(self):
        if self.ref_engine is None:
            import deepspeed

            model = self._load(train=False)
            self.ref_engine, *_ = deepspeed.initialize(model=model,
                                                       config=ds_config(self.settings, False))
            self.ref_engine.eval()
        return self.ref_engine

    def score(self, micro_batches: list[dict], with_logsumexp: bool = False,
              reference: bool = False, temperature: float = 1.0) -> list:
        """Per micro-batch: token log-probs [b, T] at `temperature` (and the raw logits'
        logsumexp [b, T]) as CPU tensors."""
        import torch

        from sttrl.engines.sequences import response_logprobs

        adapter_off = reference and self.settings.lora_rank
        model = self._reference() if reference and not adapter_off else self.engine
        out = []
        # with LoRA the reference is the base model: the same ranks with the adapter off
        with torch.no_grad(), (self.engine.module.disable_adapter() if adapter_off
                               else contextlib.nullcontext()):
            for mb in micro_batches:
                ids, attn, pos, mask, dummy = self._batch(mb)
                got = response_logprobs(model, ids, attn, pos, mask.shape[1], with_logsumexp,
                                        temperature)
                got = got if with_logsumexp else (got,)
                out.append(None if dummy else tuple(g.float().cpu() for g in got))
        return out

    def train(self, micro_batches: list[dict], loss_fn, loss_kwargs: dict, steps: int,
              n_tokens: float, use_ref: bool, temperature: float = 1.0) -> list[dict]:
        """`steps` optimiser steps of `loss_fn` on this rank's micro-batches (token mean over the
        whole batch: see `ZeroRank._steps`), log-probs at the rollout `temperature`; old
        log-probs from mb["old"] when the engine fixed them, else the first step's own. Per
        step, stat sums and grad norm."""
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
                       for r in self.score(micro_batches, reference=True,
                                           temperature=temperature)]
        # the engine's fixed old log-probs (mini-batches), else the first step's own (on-policy)
        old = [None if mb.get("old") is None else mb["old"].to(self.device)
               for mb in micro_batches]

        def loss(j, mb, ids, attn, pos, mask):
            new = response_logprobs(self.engine, ids, attn, pos, mask.shape[1],
                                    temperature=temperature)  # [b, T]
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


class ReferenceActor:
    """The frozen initial model on its own bundle (--separate_ref_gpu): scores, never trains."""

    def __init__(self, bundle: int, settings: ActorSettings):
        quiet_known_warnings()
        self.bundle, self.settings = bundle, settings
        self.model = None

    def info(self) -> dict:
        return placement_info("ref", 0, [self.bundle])

    def setup(self) -> float:
        return 0.0  # the model is loaded on first use: reset-mode runs never need it

    def score(self, prompts: list[list[int]], responses: list[list[int]],
              temperature: float = 1.0):
        """Token log-probs [B, T] (CPU) under the initial weights at `temperature`."""
        import torch

        from sttrl.engines.models import load_model
        from sttrl.engines.sequences import pad_batch, response_logprobs

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
                lp = response_logprobs(self.model, ids, attn, pos, mask.shape[1],
                                       temperature=temperature)
                out.append(torch.nn.functional.pad(lp.float().cpu(), (0, T - mask.shape[1])))
        return torch.cat(out)
