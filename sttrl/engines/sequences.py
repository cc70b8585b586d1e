"""Sequences as both engines' training and scoring see them: padding, stop tokens, length
buckets and the log-probs of a response given its prompt.

The local engine and the scale engine's trainer ranks import these, so both score and train
on exactly the same tensors.
"""
from __future__ import annotations

import math

import torch

TOP_K_CONFIDENCE = 20  # DeepConf's k for token confidence
# What one more forward and backward pass costs, in tokens of work (length_buckets). Measured
# for SmolLM2 on a CPU (docs/PERFORMANCE.md, benchmarks/profile_train.py); not measured on a
# GPU, where the engines use the same figure until someone does.
PASS_COST_TOKENS = 96
# Sharing a prompt's KV cache takes a second forward call: worth it once the copies of the
# prompt it saves add up to this many tokens.
SHARE_MIN_TOKENS = 64


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
    """log softmax(logits / temperature) at the targets: [B, T, V], [B, T] -> [B, T]."""
    t = logit_temperature(temperature)
    scaled = logits if t == 1.0 else logits / t
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def response_logprobs(model, ids, attn, pos, T: int, with_logsumexp: bool = False,
                      temperature: float = 1.0):
    """log p(response token) [B, T] under softmax(logits / temperature) (and, if asked, the
    logsumexp of the raw, untempered logits [B, T])."""
    # Only the last T+1 positions predict response tokens: skip the LM head on the prompt.
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                   logits_to_keep=T + 1, use_cache=False).logits[:, :-1, :].float()  # [B, T, V]
    targets = ids[:, -T:]  # [B, T]
    logp = tempered_logprobs(logits, targets, temperature)
    if with_logsumexp:
        return logp, torch.logsumexp(logits, dim=-1)
    return logp


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
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1:, :].expand(b, 1, -1)  # [b, 1, V]: predicts the first token
    if T > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(b)
        pos = torch.arange(P, P + T - 1, device=device).expand(b, -1)  # [b, T-1]
        # Right padding needs no attention mask: causal attention never looks ahead to it.
        rest = model(input_ids=resp[:, :-1], past_key_values=cache, position_ids=pos,
                     use_cache=True).logits  # [b, T-1, V]
        logits = torch.cat([logits, rest], dim=1)
    logits = logits.float()  # [b, T, V]
    logp = tempered_logprobs(logits, resp, temperature)
    if with_logsumexp:
        return logp, torch.logsumexp(logits, dim=-1)
    return logp


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
