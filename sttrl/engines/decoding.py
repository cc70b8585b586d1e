"""The local engine's sampling loop: a hand-written decode rather than `model.generate`.

Three reasons: the prompt is prefilled once and its KV cache shared by all samples; finished
samples leave the batch at once; and the per-token summaries the voting functions need
(log-prob of the chosen token, logsumexp of the logits, mean top-k log-prob) come out of the
same pass for free.
"""
from __future__ import annotations

import torch

from sttrl.engines.sampling import Streams, sample_next
from sttrl.engines.sequences import TOP_K_CONFIDENCE
from sttrl.types import Sample, SampleGroup


@torch.inference_mode()
def decode(model, tokenizer, prompt_ids: list[int], groups: list[SampleGroup],
           max_new_tokens: int, stop_ids: list[int], device) -> list[list[Sample]]:
    """Sample every group's rows from one prompt in one batch; one list of samples per group."""
    gens = [torch.Generator(device=device).manual_seed(g.seed) for g in groups]
    group = [k for k, g in enumerate(groups) for _ in range(g.n)]  # each row's group
    n = len(group)
    if n == 0:
        return [[] for _ in groups]
    temps = [groups[k].temperature for k in group]
    tops = [groups[k].top_p for k in group]
    ids = torch.tensor([prompt_ids], device=device)  # [1, P]
    out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n)  # share the prompt's KV across all n samples
    logits = out.logits[:, -1, :].float().expand(n, -1)  # [N, V]
    stop = torch.tensor(stop_ids, device=device)
    alive = torch.arange(n, device=device)  # original index of each row still running
    tokens = [[] for _ in range(n)]
    lps, lses, topks = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
    finished = [False] * n
    pos = len(prompt_ids)
    for _ in range(max_new_tokens):
        rows = alive.tolist()
        # untempered log p = logits - logsumexp: no [N, V] log-softmax tensor needed
        lse = torch.logsumexp(logits, dim=-1)  # [N]
        nxt = sample_next(logits, [temps[i] for i in rows], [tops[i] for i in rows],
                          Streams(gens, [group[i] for i in rows]))  # [N]
        chosen = logits.gather(-1, nxt[:, None]).squeeze(-1) - lse
        k = min(TOP_K_CONFIDENCE, logits.shape[-1])
        topk = logits.topk(k, dim=-1).values.mean(-1) - lse
        done = torch.isin(nxt, stop)
        # One host transfer per quantity per step, not one per row.
        step = zip(rows, nxt.tolist(), chosen.tolist(), lse.tolist(), topk.tolist(),
                   done.tolist())
        for i, tok, lp, ls, tk, dn in step:
            tokens[i].append(tok)
            lps[i].append(lp)
            lses[i].append(ls)
            topks[i].append(tk)
            finished[i] = dn
        keep = (~done).nonzero().squeeze(-1)
        if keep.numel() == 0:
            break
        if keep.numel() < alive.numel():
            cache.batch_select_indices(keep)
            alive, nxt = alive[keep], nxt[keep]
        pos_ids = torch.full((alive.numel(), 1), pos, device=device)
        out = model(input_ids=nxt[:, None], past_key_values=cache, position_ids=pos_ids,
                         use_cache=True)
        logits = out.logits[:, -1, :].float()
        pos += 1
    samples = [Sample(text=tokenizer.decode(tokens[i], skip_special_tokens=True),
                      token_ids=tokens[i], logprobs=lps[i], logsumexp=lses[i],
                      topk_logprob_mean=topks[i], finished=finished[i]) for i in range(n)]
    return [[s for s, k in zip(samples, group) if k == g] for g in range(len(groups))]
