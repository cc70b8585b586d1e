"""Sequences as both engines' training and scoring see them: padding, stop tokens, length
buckets and the log-probs of a response given its prompt.

The local engine and the scale engine's trainer ranks import these, so both score and train
on exactly the same tensors. Log-probs never hold the logits of a whole response: the LM head
runs over chunks of its tokens (`logprob_head`), [B, T, d] hidden states in, [B, T] out.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch.utils.checkpoint import checkpoint

from sttrl.errors import UserError

TOP_K_CONFIDENCE = 20  # DeepConf's k for token confidence
# What one more forward and backward pass costs, in tokens of work (length_buckets). Measured
# for SmolLM2 on a CPU (docs/PERFORMANCE.md, benchmarks/profile_train.py); not measured on a
# GPU, where the engines use the same figure until someone does.
PASS_COST_TOKENS = 96
# Sharing a prompt's KV cache takes a second forward call: worth it once the copies of the
# prompt it saves add up to this many tokens.
SHARE_MIN_TOKENS = 64
# The LM head runs over chunks of the response of this many logits (chunked_head_logprobs).
# 2^24 fp32 logits are 64 MiB: a chunk and the few copies its backward makes stay a few hundred
# MB whatever the batch, and on a CPU a buffer over glibc's 32 MiB mmap threshold goes back to
# the system when freed (smaller ones fragment the heap: chunks of 128 tokens held as much
# memory as no chunks, benchmarks/profile_logprob_chunks.py). It is 341 tokens of a 49K
# vocabulary and 130 of a 128K one: rows enough for the chunk's matrix product.
LOGIT_CHUNK_ELEMENTS = 2**24
# Chunks up to this many logits keep their log-softmax for the backward instead of running the
# head again in it (at most 256 MiB held): the CPU default's micro-batches (8 x 128 tokens) then
# cost no recomputation, which would add a third of the head's work (a fifth of SmolLM2's).
LOGIT_KEEP_ELEMENTS = 2**26


def stop_token_ids(generation_config, tokenizer) -> list[int]:
    """Token ids that end a response: the generation config's EOS ids and the tokenizer's."""
    ids = generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def pad_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device: str):
    """Left-pad prompts and right-pad responses so every prompt ends at the same column.

    Returns input ids and attention mask [B, P+T], position ids [B, P+T] and the response
    mask [B, T]; the last T+1 logits of every row then predict exactly the response tokens.
    """
    P = max(len(p) for p in prompts)
    T = max(1, max(len(r) for r in responses))
    ids = torch.full((len(responses), P + T), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp_mask = torch.zeros(len(responses), T)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P + len(r)] = torch.tensor(p + r)
        attn[i, P - len(p):P + len(r)] = 1
        resp_mask[i, :len(r)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
    return ids.to(device), attn.to(device), pos.to(device), resp_mask.to(device)


def length_buckets(lengths: list[int], max_rows: int, pass_cost: int) -> list[list[int]]:
    """Row indices in micro-batches of at most max_rows: the rows sorted longest first, cut where
    the padding saved pays for another pass.

    A micro-batch is padded to its longest row and costs pass_cost + rows x longest tokens of
    work; the cuts minimise the sum exactly (dynamic programming over cut points). One long
    sample among short ones made training cost 3x its tokens when every micro-batch was padded
    to its longest row whatever the rest were.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[k]: cheapest way to cut the k longest rows
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + pass_cost + (end - start) * lengths[order[start]]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    out, end = [], n
    while end:
        out.append(order[cut[end]:end])
        end = cut[end]
    return out[::-1]


def logit_temperature(temperature: float) -> float:
    """What training divides the logits by: the sampling temperature, except that greedy
    rollouts (temperature <= 0) have no tempered distribution and train untempered."""
    return temperature if temperature > 0 else 1.0


def tempered_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at the targets: [..., V], [...] -> [...]."""
    t = logit_temperature(temperature)
    scaled = logits if t == 1.0 else logits / t
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def logit_chunk_tokens(vocab: int) -> int:
    """How many tokens one chunk of the LM head covers: LOGIT_CHUNK_ELEMENTS logits."""
    return max(1, LOGIT_CHUNK_ELEMENTS // vocab)


def _head_chunk(head_forward, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                with_logsumexp: bool) -> torch.Tensor:
    """The LM head, temperature, log-softmax and gather on one chunk: hidden [c, d], targets [c]
    -> [c, 1] log-probs, or [c, 2] with the raw logits' logsumexp. The only place logits exist."""
    # fp32 before the softmax whatever the head computed in (bf16 under autocast on a GPU)
    logits = head_forward(hidden).float()  # [c, V]
    logp = tempered_logprobs(logits, targets, temperature)  # [c]
    if with_logsumexp:
        return torch.stack([logp, torch.logsumexp(logits, dim=-1)], dim=-1)  # [c, 2]
    return logp[:, None]


def chunked_head_logprobs(head_forward, hidden: torch.Tensor, targets: torch.Tensor,
                          temperature: float, with_logsumexp: bool, chunk: int,
                          keep: int = 0) -> torch.Tensor:
    """Token log-probs [B, n, k] (k = 2: and the raw logsumexp) from the hidden states that
    enter the head, [B or 1, >= n, d] (position i predicts targets[:, i], [B, n]).

    The head runs on `chunk` tokens at a time, so no [B, n, V] tensor ever exists, in the
    forward or in the backward. With gradients on, the first `keep` chunks keep their
    log-softmax [chunk, V] for the backward; every later one is checkpointed: its forward keeps
    only its hidden states, and the backward runs its head again.
    """
    B, n = targets.shape
    h = hidden[:, :n].expand(B, n, hidden.shape[-1]).reshape(B * n, -1)  # [B*n, d]
    y = targets.reshape(-1)  # [B*n]
    grad = torch.is_grad_enabled()
    pieces = []
    for i, s in enumerate(range(0, B * n, chunk)):
        args = (head_forward, h[s:s + chunk], y[s:s + chunk], temperature, with_logsumexp)
        pieces.append(checkpoint(_head_chunk, *args, use_reentrant=False) if grad and i >= keep
                      else _head_chunk(*args))
    return torch.cat(pieces).view(B, n, -1)  # [B, n, k]


@contextlib.contextmanager
def logprob_head(model, targets: torch.Tensor, temperature: float, with_logsumexp: bool,
                 chunk: int | None = None):
    """While inside, the model's LM head returns `chunked_head_logprobs` of its input, [B, n,
    k], in place of logits. Yields `run(**model_kwargs)`: the model's output, whose `.logits`
    are those log-probs.

    The head module itself is called, once per forward: its pre-hooks (the local engine's head
    hook) see the whole hidden states as before, and under ZeRO-3 its weight is gathered once
    for the forward and once for the backward (chunks recompute inside the backward of the
    head's output) rather than once per chunk. A model that changes the head's output before
    returning it (soft-capping, scaling) would have that change applied to log-probs: refused.
    """
    head = model.get_output_embeddings()
    vocab = getattr(head, "out_features", None) or model.config.get_text_config().vocab_size
    chunk = chunk or logit_chunk_tokens(vocab)
    keep = LOGIT_KEEP_ELEMENTS // (chunk * vocab)
    own = head.__dict__.get("forward")  # an instance-level forward (accelerate's hooks) stays
    original = head.forward

    def forward(hidden, *args, **kwargs):  # [B or 1, L, d] -> [B, n, k]
        return chunked_head_logprobs(original, hidden, targets, temperature, with_logsumexp,
                                     chunk, keep)

    seen = []
    head.forward = forward
    handle = head.register_forward_hook(lambda module, inputs, output: seen.append(output))

    def run(**kwargs):
        seen.clear()
        out = model(**kwargs)
        # wrappers (ZeRO-3's backward hooks) may hand on a copy; a change shows in the values
        if not seen or not torch.equal(out.logits, seen[-1]):
            name = getattr(getattr(model, "config", None), "model_type", None)
            raise UserError(f"{name or type(model).__name__} changes the LM head's output before "
                            "returning its logits (soft-capping or scaling), which the chunked "
                            "log-probs do not apply: this model is not supported")
        return out

    try:
        yield run
    finally:
        handle.remove()
        if own is None:
            del head.forward
        else:
            head.forward = own


def _split(got: torch.Tensor, with_logsumexp: bool):
    """[B, T, k] -> log-probs [B, T] (and logsumexp [B, T])."""
    return (got[..., 0], got[..., 1]) if with_logsumexp else got[..., 0]


def response_logprobs(model, ids, attn, pos, T: int, with_logsumexp: bool = False,
                      temperature: float = 1.0):
    """log p(response token) [B, T] under softmax(logits / temperature) (and, if asked, the
    logsumexp of the raw, untempered logits [B, T]), without materialising the logits."""
    targets = ids[:, -T:]  # [B, T]
    # Only the last T+1 positions predict response tokens: skip the LM head on the prompt.
    with logprob_head(model, targets, temperature, with_logsumexp) as run:
        got = run(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1,
                  use_cache=False).logits  # [B, T, k]
    return _split(got, with_logsumexp)


def shared_prompt_logprobs(model, prompt: list[int], responses: list[list[int]], pad_id: int,
                           device, with_logsumexp: bool = False, temperature: float = 1.0):
    """log p(response token) [b, T] under softmax(logits / temperature) for responses that all
    continue one prompt (and, if asked, the logsumexp of the raw logits [b, T]), running the
    prompt once instead of once per row.

    The prompt's keys and values are computed once and repeated for the b rows; they stay in
    the autograd graph, so the gradient is the one a full forward per row gives.
    """
    b, P = len(responses), len(prompt)
    T = max(1, max(len(r) for r in responses))
    resp = torch.full((b, T), pad_id, dtype=torch.long)
    for i, r in enumerate(responses):
        resp[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    resp = resp.to(device)
    # the prompt's last position predicts every row's first token
    with logprob_head(model, resp[:, :1], temperature, with_logsumexp) as run:
        out = run(input_ids=torch.tensor([prompt], device=device), use_cache=True,
                  logits_to_keep=1)
    got = out.logits  # [b, 1, k]
    if T > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(b)
        pos = torch.arange(P, P + T - 1, device=device).expand(b, -1)  # [b, T-1]
        # Right padding needs no attention mask: causal attention never looks ahead to it.
        with logprob_head(model, resp[:, 1:], temperature, with_logsumexp) as run:
            rest = run(input_ids=resp[:, :-1], past_key_values=cache, position_ids=pos,
                       use_cache=True).logits  # [b, T-1, k]
        got = torch.cat([got, rest], dim=1)
    return _split(got, with_logsumexp)


def response_mask(responses: list[list[int]], device) -> torch.Tensor:
    """1 on each response's tokens, 0 on the right padding: [b, T]."""
    mask = torch.zeros(len(responses), max(1, max(len(r) for r in responses)))
    for i, r in enumerate(responses):
        mask[i, :len(r)] = 1
    return mask.to(device)


def sequence_logratio(logprobs: torch.Tensor, base: torch.Tensor,
                      responses: list[list[int]]) -> list[float]:
    """Per response, the summed log-ratio sum_t (logprobs - base) over its own tokens: the log
    importance weight of the whole response ([B, T] each; padding ignored)."""
    mask = response_mask(responses, logprobs.device)  # [B, T_r]
    width = mask.shape[1]
    return (((logprobs[:, :width] - base[:, :width]) * mask).sum(-1)).double().tolist()


@torch.no_grad()
def param_distance(params, saved) -> float:
    """||theta - saved||_2 over every trainable tensor: how far a step moved the weights."""
    total = sum(float(((p.detach().float() - s.float()) ** 2).sum()) for p, s in zip(params, saved))
    return total ** 0.5
