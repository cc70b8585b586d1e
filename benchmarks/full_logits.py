"""Token log-probs the way the engines computed them before the chunked LM head: the whole
[B, T, V] logits out of the model, an fp32 copy, a log-softmax copy, and their gradients.

Kept only as the memory benchmark's "old" side (`bench_memory.py`) and the tests' oracle
(tests/test_logprobs.py); no engine calls it. Same signatures as `sttrl.engines.sequences`'
`response_logprobs` and `shared_prompt_logprobs`, so either can stand in for the other.
"""
from __future__ import annotations

import torch

from sttrl.engines.sequences import tempered_logprobs


def response_logprobs(model, ids, attn, pos, T: int, with_logsumexp: bool = False,
                      temperature: float = 1.0):
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos,
                   logits_to_keep=T + 1, use_cache=False).logits[:, :-1, :].float()  # [B, T, V]
    logp = tempered_logprobs(logits, ids[:, -T:], temperature)  # [B, T]
    if with_logsumexp:
        return logp, torch.logsumexp(logits, dim=-1)
    return logp


def shared_prompt_logprobs(model, prompt: list[int], responses: list[list[int]], pad_id: int,
                           device, with_logsumexp: bool = False, temperature: float = 1.0):
    b, P = len(responses), len(prompt)
    T = max(1, max(len(r) for r in responses))
    resp = torch.full((b, T), pad_id, dtype=torch.long)
    for i, r in enumerate(responses):
        resp[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    resp = resp.to(device)
    out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1:, :].expand(b, 1, -1)  # [b, 1, V]
    if T > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(b)
        pos = torch.arange(P, P + T - 1, device=device).expand(b, -1)  # [b, T-1]
        rest = model(input_ids=resp[:, :-1], past_key_values=cache, position_ids=pos,
                     use_cache=True).logits  # [b, T-1, V]
        logits = torch.cat([logits, rest], dim=1)
    logits = logits.float()  # [b, T, V]
    logp = tempered_logprobs(logits, resp, temperature)
    if with_logsumexp:
        return logp, torch.logsumexp(logits, dim=-1)
    return logp
