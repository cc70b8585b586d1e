"""The LM head alone, log-probs and their backward: the full logits against chunks of them, per
chunk size, and a checkpointed chunk (what `sequences.chunked_head_logprobs` does) against a
hand-written backward; writes results/logprob_chunks.json.

Evidence for the chunked head's design, not part of run_all.sh. One head of the bundled model's
shape (vocabulary x hidden, fp32, random) on `--tokens` hidden states; each variant computes
the tempered log-probs at random targets, a weighted sum, and its backward (to the hidden
states and the head's weight), in its own child process, whose peak RSS above its RSS before
the variant ran is reported, with the seconds (on whatever load the machine has).
- `full`: the engines before: [N, V] logits, log-softmax, gather (benchmarks/full_logits.py);
- `checkpoint_<c>`: chunks of c tokens, each under torch.utils.checkpoint (the engines now);
- `function_<c>`: chunks of c tokens in one autograd.Function whose backward recomputes each
  chunk's logits and writes the gradient (softmax - one-hot) in place: fewer [c, V] buffers,
  but the head must be a plain weight matrix (no module call: no pre-hooks, no LoRA on it).

    .venv/bin/python benchmarks/profile_logprob_chunks.py [--tokens 4096] [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchutil import machine_info, rnd, write_result

TEMPERATURE = 0.8


def chunked_function():
    import torch

    class ChunkedLogprobs(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk):
            out = []
            for s in range(0, hidden.shape[0], chunk):
                logits = (hidden[s:s + chunk] @ weight.T) / TEMPERATURE  # [c, V]
                out.append(logits.gather(1, targets[s:s + chunk, None]).squeeze(1)
                           - logits.logsumexp(-1))
            ctx.save_for_backward(hidden, weight, targets)
            ctx.chunk = chunk
            return torch.cat(out)

        @staticmethod
        def backward(ctx, grad):
            hidden, weight, targets = ctx.saved_tensors
            gh, gw = torch.empty_like(hidden), torch.zeros_like(weight)
            for s in range(0, hidden.shape[0], ctx.chunk):
                h, g = hidden[s:s + ctx.chunk], grad[s:s + ctx.chunk] / TEMPERATURE
                d = torch.softmax((h @ weight.T) / TEMPERATURE, -1)  # [c, V]
                d.mul_(-g[:, None]).scatter_add_(1, targets[s:s + ctx.chunk, None], g[:, None])
                gh[s:s + ctx.chunk] = d @ weight
                gw.addmm_(d.T, h)
            return gh, gw, None, None

    return ChunkedLogprobs


def child(variant: str, tokens: int, vocab: int, hidden_size: int) -> dict:
    import psutil
    import torch

    from benchutil import peak_rss_mib
    from sttrl.engines.sequences import chunked_head_logprobs, tempered_logprobs

    torch.manual_seed(0)  # the same head in every variant's process
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(1, tokens, hidden_size, generator=gen, requires_grad=True)
    targets = torch.randint(0, vocab, (1, tokens), generator=gen)
    w = torch.randn(1, tokens, generator=gen)
    before = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    if variant == "full":
        logp = tempered_logprobs(head(hidden).float(), targets, TEMPERATURE)
    elif variant.startswith("checkpoint_"):
        chunk = int(variant.split("_")[1])
        logp = chunked_head_logprobs(head.forward, hidden, targets, TEMPERATURE, False,
                                     chunk)[..., 0]
    else:
        chunk = int(variant.split("_")[1])
        logp = chunked_function().apply(hidden[0], head.weight, targets[0], chunk)[None]
    (logp * w).sum().backward()
    seconds = time.perf_counter() - start
    return {"variant": variant, "seconds": rnd(seconds, 2),
            "peak_above_start_mib": rnd(peak_rss_mib() - before, 1),
            "grad_hidden_norm": float(hidden.grad.norm()), "grad_head_norm": float(head.weight.grad.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--model", default=None)
    parser.add_argument("--variants", nargs="+",
                        default=["full", "checkpoint_128", "checkpoint_341", "checkpoint_1024",
                                 "checkpoint_4096", "function_341"])
    parser.add_argument("--name", default="logprob_chunks")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, *args.shape)))
        return

    from transformers import AutoConfig

    from sttrl.engines.models import resolve_model

    machine = machine_info()
    config = AutoConfig.from_pretrained(resolve_model(args.model))
    shape = [config.vocab_size, config.hidden_size]
    rows = []
    for variant in args.variants:
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--tokens",
                              str(args.tokens), "--shape", *map(str, shape)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    settings = {"tokens": args.tokens, "vocab": shape[0], "hidden": shape[1],
                "temperature": TEMPERATURE, "dtype": "float32"}
    path = write_result(args.name, machine, settings, {"variants": rows}, notes=[
        "Each variant in its own child process; peak RSS above the child's RSS before it ran.",
        "Seconds were taken on whatever load the machine had.",
    ])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
