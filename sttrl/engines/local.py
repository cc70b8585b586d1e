"""The local engine: one process, Hugging Face transformers + PyTorch, on CPU or one GPU.

Generation is engines/decoding.py's sampling loop; training, scoring and reset are here.
"""
from __future__ import annotations

import contextlib
import copy

import torch

from sttrl.data.prompts import encode_prompt
from sttrl.engines import lora
from sttrl.engines.anchor import ContinuousOps
from sttrl.engines.decoding import decode
from sttrl.engines.models import enable_gradient_checkpointing, load_model, sampling_bytes
from sttrl.engines.sequences import (PASS_COST_TOKENS, SHARE_MIN_TOKENS,
                                     length_buckets, pad_batch, response_logprobs,
                                     response_mask, shared_prompt_logprobs, stop_token_ids)
from sttrl.errors import UserError
from sttrl.engines.measured import clip_gradient, train_measured
from sttrl.settings import EngineSettings
from sttrl.types import Sample, SampleGroup, TrainBatch, TrustRegion


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def reference_device(device: str, separate: bool) -> str:
    """Where the frozen reference model goes: the actor's device, or with separate_ref_gpu the
    next visible GPU."""
    if not separate:
        return device
    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        raise UserError("--separate_ref_gpu needs at least two visible GPUs")
    index = int(device.split(":")[1]) if ":" in device else 0
    return f"cuda:{(index + 1) % torch.cuda.device_count()}"


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    """AdamW, or plain SGD: with the gradient clipped to norm grad_clip, an SGD step is a step of
    length lr along the gradient, where a fresh AdamW's first step is lr x sign(g) on every
    weight. Fused AdamW: one kernel over all weights (docs/PERFORMANCE.md has the step times)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class LocalEngine(ContinuousOps):
    """Generate, train and reset one Hugging Face causal LM in this process."""

    def __init__(self, settings: EngineSettings, model_path: str):
        s = settings
        self.device = pick_device(s.device)
        self.ref_device = reference_device(self.device, s.separate_ref_gpu)
        # None: torch's default, all cores; 1 thread only pays while another job holds a core.
        self.generation_threads = s.generation_threads or None
        # Weights and AdamW state stay fp32 on every device; on a GPU the forward passes
        # (generation, scoring, training) run under bf16 autocast. bf16 weights updated in place
        # lose every step smaller than half a bf16 ulp (lr 5e-7 against a 0.02 weight: all of
        # them), as DeepSpeed's bf16 mode and verl's FSDP avoid with fp32 masters. One fp32 copy
        # is simpler than a bf16 model plus fp32 masters (no copy-back after each step; snapshot,
        # restore and checkpoints unchanged) and smaller (4 bytes a weight, not 2 + 4).
        # A test may set autocast_dtype to bf16 on the CPU to run the GPU's numerics there.
        # With LoRA the base never changes, so on a GPU it is stored in bf16 (half the memory);
        # only the adapter and its AdamW state need fp32 (lora.wrap).
        self.lora_rank, self.lora, self.lora_dropout = (s.lora_rank, s.lora_rank > 0,
                                                        s.lora_dropout > 0)
        on_cuda = self.device.startswith("cuda")
        self.dtype = torch.bfloat16 if self.lora and on_cuda else torch.float32
        self.autocast_dtype = torch.bfloat16 if on_cuda else None
        self.model_path, self.trust_remote_code = model_path, s.trust_remote_code
        self.model, self.tokenizer = load_model(model_path, self.dtype, self.device,
                                                s.trust_remote_code)
        self.model.eval()  # no dropout in training either: rollouts and updates see one policy
        # the longest prompt + response the model was built for (run.py checks prompts against it)
        self.max_context = getattr(self.model.config, "max_position_embeddings", None)
        self.gradient_checkpointing = s.gradient_checkpointing
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)  # before wrapping: it zeroes every dropout
        if self.lora:
            self.model = lora.wrap(self.model, s)
            if self.gradient_checkpointing:
                # The frozen embeddings' output has no grad, and a checkpointed layer whose
                # inputs need none returns none to the adapters inside it.
                self.model.enable_input_require_grads()
        self._head_hook = None  # applied to the hidden states entering the LM head (SLOT)
        self._head_hook_on = True
        self.model.get_output_embeddings().register_forward_pre_hook(self._apply_head_hook)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # the adapter's
        self.optimizer = make_optimizer(s.optimizer, self.params, s.lr, s.weight_decay)
        self.grad_clip = s.grad_clip
        self.micro_batch_size = s.micro_batch_size
        # Training runs each prompt once per micro-batch and shares its KV cache across the rows;
        # gradient checkpointing needs cache-free forwards, so it pads every row instead.
        self.share_prompt = not self.gradient_checkpointing
        self.ref_model = None  # built on first need from the initial weights (not with LoRA)
        self._sampler = None  # (model, device) that generate samples from instead (base_policy)
        self.initial = self.snapshot()
        self.pristine = True  # True while the weights equal the initial ones
        self.policy_version = 0  # changes whenever what generate samples from may have changed
        self.stop_ids = stop_token_ids(self.model.generation_config, self.tokenizer)

    def close(self) -> None:
        """Nothing to release: the model goes with the process."""

    def sampling_memory(self, rows: int, prompt_tokens: int,
                        max_new_tokens: int) -> tuple[int, str] | None:
        """What the largest sampling call holds at once (models.sampling_bytes), on this device."""
        need = sampling_bytes(self.model.config, self.dtype, rows, prompt_tokens + max_new_tokens)
        return None if need is None else (need, self.device)

    def _autocast(self):
        """The precision of every forward pass: bf16 autocast over fp32 weights, or plain.

        Entered per forward call and never across an optimiser step: autocast caches its bf16
        copies of the weights until the outermost context exits.
        """
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype)

    # ---- the LM-head hook (SLOT) ------------------------------------------------------------
    def _apply_head_hook(self, module, inputs):
        if self._head_hook is None or not self._head_hook_on:
            return None
        return (self._head_hook(inputs[0]),) + tuple(inputs[1:])

    @property
    def head_hook(self):
        return self._head_hook

    def set_head_hook(self, hook) -> None:
        self._head_hook = hook
        self.policy_version += 1

    @torch.no_grad()
    def prompt_hidden(self, prompt_ids: list[int]) -> torch.Tensor:
        """The final hidden states [P, d] that enter the LM head, without the hook."""
        captured = []
        head = self.model.get_output_embeddings()
        capture = head.register_forward_pre_hook(lambda m, inp: captured.append(inp[0]))
        self._head_hook_on = False
        try:
            ids = torch.tensor([prompt_ids], device=self.device)
            with self._autocast():
                self.model(input_ids=ids, logits_to_keep=0, use_cache=False)
        finally:
            capture.remove()
            self._head_hook_on = True
        return captured[0][0].float()

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states [..., d], without the hook: logits [..., V].

        The hidden states are cast to the head's dtype (SLOT hands fp32 states to what may be
        a bf16 head), under the engine's autocast."""
        head = self.model.get_output_embeddings()
        self._head_hook_on = False
        try:
            with self._autocast():
                return head(hidden.to(head.weight.dtype))
        finally:
            self._head_hook_on = True

    # ---- generation -------------------------------------------------------------------------
    def generate(self, prompt: str, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[Sample]:
        return self.generate_groups(prompt, [SampleGroup(n, temperature, top_p, seed)],
                                    max_new_tokens)[0]

    def generate_groups(self, prompt: str, groups: list[SampleGroup],
                        max_new_tokens: int) -> list[list[Sample]]:
        """Several groups of samples of one prompt in one batch, one list per group. A group
        draws from its own generator exactly as `generate` with it alone does (sampling.Streams;
        finished rows leave either way); only the forward's batch size differs. On a CPU in fp32
        that moves log-probs by ~1e-6 and no token in the tests (tests/test_batched_eval.py): a
        token could differ only where a uniform falls that close to a CDF boundary."""
        threads = torch.get_num_threads()
        if self.device == "cpu" and self.generation_threads:
            torch.set_num_threads(self.generation_threads)
        try:
            model, device = self._sampler or (self.model, self.device)
            with self._autocast():  # one region: the weights are cast to bf16 once per call
                return decode(model, self.tokenizer, self.encode(prompt), groups,
                              max_new_tokens, self.stop_ids, device)
        finally:
            torch.set_num_threads(threads)

    def encode(self, prompt: str) -> list[int]:
        return encode_prompt(prompt, self.tokenizer)

    # ---- scoring and training ---------------------------------------------------------------
    def _micro_batches(self, prompts: list[list[int]], responses: list[list[int]]):
        """Row indices per micro-batch: rows grouped by prompt, each group cut by length_buckets."""
        by_prompt: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            by_prompt.setdefault(tuple(p), []).append(i)
        out = []
        for rows in by_prompt.values():
            buckets = length_buckets([len(prompts[i]) + len(responses[i]) for i in rows],
                                     self.micro_batch_size, PASS_COST_TOKENS)
            out += [[rows[j] for j in bucket] for bucket in buckets]
        return out

    def _logprobs(self, model, prompt: list[int], responses: list[list[int]],
                  temperature: float = 1.0) -> torch.Tensor:
        """log p [b, T] of responses that continue one prompt, under softmax(logits / T)."""
        device = next(model.parameters()).device
        with self._autocast():
            if self.share_prompt and (len(responses) - 1) * len(prompt) >= SHARE_MIN_TOKENS:
                return shared_prompt_logprobs(model, prompt, responses,
                                              self.tokenizer.pad_token_id, device,
                                              temperature=temperature)
            ids, attn, pos, mask = pad_batch([prompt] * len(responses), responses,
                                             self.tokenizer.pad_token_id, device)
            return response_logprobs(model, ids, attn, pos, mask.shape[1],
                                     temperature=temperature)

    @torch.no_grad()
    def score(self, prompts: list[list[int]], responses: list[list[int]],
              model=None, temperature: float = 1.0) -> torch.Tensor:
        """Per-token log-probs [B, T] of responses (padding positions hold junk; mask them),
        under softmax(logits / temperature) (default: the untempered model)."""
        model = model or self.model
        width = max(1, max(len(r) for r in responses))
        out = torch.zeros(len(responses), width, device=self.device)
        for rows in self._micro_batches(prompts, responses):
            lp = self._logprobs(model, prompts[rows[0]], [responses[i] for i in rows],
                                temperature)  # [b, T]
            out[rows, :lp.shape[1]] = lp.to(self.device)
        return out

    def _reference_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        if self.lora:  # the base model is the reference: the same weights, adapter switched off
            self._head_hook_on = False  # as the separate reference model has no hook
            try:
                with self.model.disable_adapter():
                    return self.score(batch.prompts, batch.responses,
                                      temperature=batch.temperature)
            finally:
                self._head_hook_on = True
        return self.score(batch.prompts, batch.responses, model=self.reference_model(),
                          temperature=batch.temperature)

    def reference_model(self):
        """The frozen initial model (full weights only), loaded on first need."""
        if self.ref_model is None:
            # The initial weights are the ones on disk; loading them again is simpler than
            # deep-copying a model that carries this engine's hooks.
            self.ref_model, _ = load_model(self.model_path, self.dtype, self.ref_device,
                                           self.trust_remote_code)
            self.ref_model.eval().requires_grad_(False)
        return self.ref_model

    def train(self, batch: TrainBatch, loss_fn, loss_kwargs: dict, steps: int,
              mini_batches: list[list[int]] | None = None,
              lrs: list[float] | None = None, stop=None,
              trust: TrustRegion | None = None) -> list[dict]:
        """`steps` optimiser steps on the whole batch; or, with `mini_batches` (row indices),
        `steps` epochs of one optimiser step per mini-batch (PPO's epochs over mini-batches).

        Old log-probs are those of the policy that sampled: the weights as they are when train
        is called, at `batch.temperature`. The first step takes them from its own forward (so it
        is exactly on-policy); the other mini-batches' are computed before the first step.
        `lrs`, if given, is the learning rate of each optimiser step in order. The loss is a
        token mean over the rows of each step. `stop(stats)`, if given, ends the update after
        the step whose stats it accepts (the adaptive budget). With `trust` (a per-question
        update, no mini-batches) every step is measured by a forward pass after it and undone
        and retried smaller while it overshoots (algorithms/trust.py); its stats then describe
        the weights after the step (`kl_step`, `kl_ref`, `lr`, `undone`, `param_change`, and
        `probe_logratio` for `batch.probe`).
        """
        # Training mode only switches on checkpointing (dropout is off: see models.py).
        self.model.train(self.gradient_checkpointing)
        if self.lora_dropout:
            lora.set_dropout(self.model, False)  # on only for the gradient forwards (_train)
        try:
            if trust is not None:
                if mini_batches is not None:
                    raise ValueError("a trust region applies to one batch, not mini-batches")
                return train_measured(self, batch, loss_fn, loss_kwargs, steps, lrs, stop, trust)
            return self._train(batch, loss_fn, loss_kwargs, steps, mini_batches, lrs, stop)
        finally:
            self.model.eval()

    def _plan(self, batch: TrainBatch, rows: list[int]):
        """One optimiser step's micro-batches over `rows`: (rows, responses, mask [b, T],
        advantages [b]) each, and the step's token count."""
        micro = []
        for sub in self._micro_batches([batch.prompts[i] for i in rows],
                                       [batch.responses[i] for i in rows]):
            idx = [rows[j] for j in sub]
            responses = [batch.responses[i] for i in idx]
            adv = torch.tensor([batch.advantages[i] for i in idx], dtype=torch.float32,
                               device=self.device)
            micro.append((idx, responses, response_mask(responses, self.device), adv))
        return micro, float(max(1, sum(len(batch.responses[i]) for i in rows)))

    def _train(self, batch: TrainBatch, loss_fn, loss_kwargs: dict, steps: int,
               mini_batches, lrs, stop=None) -> list[dict]:
        kl = loss_kwargs.get("kl_coef", 0.0) > 0
        ref = None  # [B, T]: the initial weights' log-probs, once the weights have moved
        if kl and not self.pristine:
            ref = self._reference_logprobs(batch)
        groups = mini_batches if mini_batches is not None else [list(range(len(batch.responses)))]
        plans = [self._plan(batch, rows) for rows in groups]
        schedule = [plan for _ in range(steps) for plan in plans]  # one entry per optimiser step
        if lrs is not None and len(lrs) != len(schedule):
            raise ValueError(f"{len(lrs)} learning rates for {len(schedule)} optimiser steps")
        # old[(plan, micro)]: the first step fills its own from its forward; every other
        # mini-batch's is scored now, before any step, with the same micro-batches. With LoRA
        # dropout the first's too: its forward drops, the policy that sampled did not.
        old: dict = {}
        first = 0 if self.lora_dropout else 1
        with torch.no_grad():
            for p, (micro, _) in enumerate(plans[first:], start=first):
                for j, (rows, responses, _, _) in enumerate(micro):
                    old[p, j] = self._logprobs(self.model, batch.prompts[rows[0]], responses,
                                               batch.temperature)
        if self.lora_dropout:
            lora.set_dropout(self.model, True)
        history = []
        for step, (micro, n_tokens) in enumerate(schedule):
            p = step % len(plans)
            if lrs is not None:
                self.set_lr(lrs[step])
            self.optimizer.zero_grad(set_to_none=True)
            sums: dict = {}
            for j, (rows, responses, mask, adv) in enumerate(micro):
                new = self._logprobs(self.model, batch.prompts[rows[0]], responses,
                                     batch.temperature)  # [b, T]
                if (p, j) not in old:
                    old[p, j] = new.detach()
                mb_ref = None
                if kl:  # while pristine the policy that sampled is the reference: no 2nd model
                    mb_ref = old[p, j] if ref is None else ref[rows, :mask.shape[1]]
                loss_sum, stats = loss_fn(new, old[p, j], mb_ref, adv, mask, **loss_kwargs)
                (loss_sum / n_tokens).backward()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
            grad_norm = clip_gradient(self)
            self.optimizer.step()
            self.pristine, self.policy_version = False, self.policy_version + 1
            merged = {k: v / n_tokens for k, v in sums.items()}
            merged["grad_norm"] = float(grad_norm)
            history.append(merged)
            if stop is not None and stop(merged):
                break
        return history

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---- reset ------------------------------------------------------------------------------
    # snapshot/restore are this engine's own (no mode uses them, so they are not in the
    # contract): the initial snapshot is what reset restores.
    def snapshot(self) -> dict:
        return {"params": [p.detach().clone() for p in self.params],
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "head_hook": self._head_hook}

    @torch.no_grad()
    def restore(self, state: dict) -> None:
        for p, saved in zip(self.params, state["params"]):
            p.copy_(saved)
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._head_hook = state["head_hook"]
        self.pristine = state is self.initial
        self.policy_version += 1

    def reset(self) -> None:
        """Back to the weights and (empty) optimiser state the engine started with."""
        self.restore(self.initial)

    def state_dict(self) -> dict:
        """Weights (with LoRA only the adapter's) and optimiser state, for a continuous run's
        checkpoint."""
        return {**lora.weights_state(self.model, self.lora_rank),
                "optimizer": self.optimizer.state_dict(), "head_hook": self._head_hook}

    def load_state_dict(self, state: dict) -> None:
        lora.load_weights_state(self.model, state, self.lora_rank)
        self.optimizer.load_state_dict(state["optimizer"])
        self._head_hook = state.get("head_hook")
        self.pristine, self.policy_version = False, self.policy_version + 1

