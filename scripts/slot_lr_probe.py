"""How far SLOT's delta moves the embedded model's first answer token, per lr (issue #21, item 6).

For each ARITH-TTT question: fit SLOT's delta on the prompt as `--adaptation_method slot` does
(5 AdamW steps), then compare the next-token distribution at the answer's first position with
and without the delta: the KL (nats), whether the most likely token changes, and the delta's
norm against the hidden state's. No sampling, so it runs in seconds where a 10-question run
takes an hour on a busy 2-core machine.

    .venv/bin/python scripts/slot_lr_probe.py --questions 10 --lrs 0.1 0.0375 0.016
"""
from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    from sttrl.algorithms.slot import fit_delta
    from sttrl.config import Config, resolve
    from sttrl.data import format_prompt, load_dataset
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model
    from sttrl.parts import parts

    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.0375, 0.016])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    cfg = resolve(Config(device="cpu", adaptation_method="slot"), on_gpu=False)
    run = parts(cfg)
    engine = LocalEngine(run.engine, resolve_model(cfg.model))
    examples = load_dataset(cfg.dataset)[:args.questions]
    rows = {lr: {"kl": [], "top1_changed": [], "delta_over_hidden": []} for lr in args.lrs}
    for ex in examples:
        ids = engine.encode(format_prompt(ex.question, engine.tokenizer, cfg.prompt_family))
        hidden = engine.prompt_hidden(ids)  # [P, d]
        with torch.no_grad():
            base = torch.log_softmax(engine.head_logits(hidden[-1]).float(), -1)  # [V]
        for lr in args.lrs:
            delta, _ = fit_delta(engine, ids, lr, args.steps)
            with torch.no_grad():
                moved = torch.log_softmax(engine.head_logits(hidden[-1] + delta).float(), -1)
            rows[lr]["kl"].append(float((moved.exp() * (moved - base)).sum()))
            rows[lr]["top1_changed"].append(float(moved.argmax() != base.argmax()))
            rows[lr]["delta_over_hidden"].append(float(delta.norm() / hidden[-1].norm()))
    out = {lr: {k: sum(v) / len(v) for k, v in r.items()} for lr, r in rows.items()}
    print(json.dumps({"hidden": int(hidden.shape[-1]), "questions": len(examples),
                      "by_lr": out}, indent=1))


if __name__ == "__main__":
    main()
