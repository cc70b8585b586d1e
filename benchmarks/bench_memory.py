"""Peak memory of one training step, the chunked LM head against the full logits it replaced, side
by side in one run; writes results/memory.json.

Each point is `rows` responses of `length` tokens to one prompt, trained in micro-batches of at
most `micro_batch` rows, for one GRPO step (kl_coef 0.001) of the local engine on the bundled
model, fp32, from its initial weights. Each point and path runs in its own child process, so
each peak is its own:
- `new`: the engine as it is (`sequences.response_logprobs`: the head in chunks, recomputed in
  the backward);
- `old`: the same engine with the full-logits functions of `full_logits.py` (the engines'
  code before the chunked head) swapped in.
Measured: on the CPU the child's peak RSS (and its RSS just before the step: the model,
tokenizer, the reset snapshot and the runtime); on a GPU `torch.cuda.max_memory_allocated`
during the step (and the memory allocated before it). The old path is skipped where it would
come near the free memory (it would swap or be killed): the table says so.
The responses are random token ids: the memory of a step depends on the shapes, not the tokens.

    .venv/bin/python benchmarks/bench_memory.py [--points 16x1024@8 1x4096@1 ...]
        [--gradient_checkpointing] [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import machine_info, peak_rss_mib, rnd, write_result

PROMPT = "What is 12 * 7 - 5? Put your final answer within \\boxed{}."
# rows x length @ micro-batch: response lengths 128 to 4,096 one row at a time, micro-batches
# of 1 to 8 rows at 1,024 tokens, and the point: 16 responses of 1,024 tokens at the
# default micro-batch of 8
POINTS = ["1x128@1", "1x512@1", "1x1024@1", "1x2048@1", "1x4096@1", "4x1024@4",
          "16x1024@8"]
# The old path holds about 3 fp32 [b, T, V] tensors at its peak (profile_logprob_chunks.py:
# 2,322 MiB for 4,096 tokens of a 49K vocabulary); it runs only where its new side's peak plus
# those stay under --free_fraction of the machine's free memory.
OLD_LOGIT_COPIES = 3


def parse(point: str) -> tuple[int, int, int]:
    shape, mb = point.split("@")
    rows, length = shape.split("x")
    return int(rows), int(length), int(mb)


def free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.mem_get_info()[0]
    import psutil
    return psutil.virtual_memory().available


def child(path_kind: str, point: str, model: str | None, ckpt: bool, out: str) -> None:
    import psutil
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import full_logits
    import sttrl.engines.local as local
    from sttrl.algorithms.grpo import group_advantages, grpo_loss
    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model
    from sttrl.types import TrainBatch

    rows, length, mb = parse(point)
    if path_kind == "old":
        local.response_logprobs = full_logits.response_logprobs
        local.shared_prompt_logprobs = full_logits.shared_prompt_logprobs
    cuda = torch.cuda.is_available()
    cfg = resolve(Config(device="cuda" if cuda else "cpu", micro_batch_size=mb,
                         gradient_checkpointing=ckpt), on_gpu=cuda)
    engine = LocalEngine(parts(cfg).engine, resolve_model(model))
    vocab = engine.model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    low = min(100, vocab // 2)  # clear of the special tokens at the start of the vocabulary
    responses = torch.randint(low, vocab, (rows, length), generator=gen).tolist()
    batch = TrainBatch.shared(engine.encode(PROMPT), responses,
                              group_advantages([1.0, 0.0] * (rows // 2) + [1.0] * (rows % 2)))
    before_rss = psutil.Process().memory_info().rss / 2**20
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_gpu = torch.cuda.memory_allocated() / 2**20
    start = time.perf_counter()
    engine.train(batch, grpo_loss, {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef}, steps=1)
    seconds = time.perf_counter() - start
    result = {"path": path_kind, "point": point, "rows": rows, "length": length,
              "micro_batch": mb, "vocab": vocab, "step_s": rnd(seconds, 2),
              "rss_before_step_mib": rnd(before_rss, 1), "peak_rss_mib": peak_rss_mib()}
    if cuda:
        result.update(gpu_before_step_mib=rnd(before_gpu, 1),
                      gpu_peak_mib=rnd(torch.cuda.max_memory_allocated() / 2**20, 1))
    Path(out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=POINTS,
                        help="rows x length @ micro-batch, e.g. 16x1024@8")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--name", default=None, help="result name (default: memory, or memory_ckpt)")
    parser.add_argument("--free_fraction", type=float, default=0.75,
                        help="run the old side only where its estimate is under this share of free memory")
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.point, args.model, args.gradient_checkpointing, args.out)
        return

    import torch

    from sttrl.engines.models import load_model, resolve_model

    machine = machine_info()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_model(resolve_model(args.model), torch.float32, "cpu")
    vocab = model.get_output_embeddings().weight.shape[0]
    del model
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        for point in args.points:
            rows, length, mb = parse(point)
            row = {"point": point, "rows": rows, "length": length, "micro_batch": mb}
            for kind in ("new", "old"):
                if kind == "old" and "peak_rss_mib" in row["new"]:
                    key = "gpu_peak_mib" if device == "cuda" else "peak_rss_mib"
                    need = (row["new"][key] * 2**20
                            + min(rows, mb) * length * vocab * 4 * OLD_LOGIT_COPIES)
                    if need > args.free_fraction * free_bytes(device):
                        row["old"] = {"skipped": f"would need ~{need / 2**30:.1f} GiB"}
                        print(f"{point} old: skipped ({row['old']['skipped']})", flush=True)
                        continue
                out = Path(tmp) / f"{kind}-{point}.json"
                cmd = [sys.executable, __file__, "--child", kind, "--point", point,
                       "--out", str(out)]
                cmd += ["--gradient_checkpointing"] if args.gradient_checkpointing else []
                cmd += ["--model", args.model] if args.model else []
                done = subprocess.run(cmd)
                if done.returncode != 0:
                    row[kind] = {"failed": f"exit status {done.returncode}"}
                    print(f"{point} {kind}: failed ({done.returncode})", flush=True)
                    continue
                row[kind] = json.loads(out.read_text())
                r = row[kind]
                print(f"{point} {kind}: peak RSS {r['peak_rss_mib']} MiB (before the step "
                      f"{r['rss_before_step_mib']}), step {r['step_s']} s", flush=True)
            key = "gpu_peak_mib" if device == "cuda" else "peak_rss_mib"
            if "peak_rss_mib" in row.get("old", {}) and "peak_rss_mib" in row["new"]:
                row["old_over_new"] = rnd(row["old"][key] / row["new"][key], 2)
                base = "gpu_before_step_mib" if device == "cuda" else "rss_before_step_mib"
                row["step_old_over_new"] = rnd((row["old"][key] - row["old"][base])
                                               / (row["new"][key] - row["new"][base]), 2)
            rows_out.append(row)
    settings = {"model": args.model or "SmolLM2-135M-Instruct (embedded)", "device": device,
                "dtype": "float32", "vocab": vocab, "steps": 1, "loss": "grpo, kl_coef 0.001",
                "gradient_checkpointing": args.gradient_checkpointing,
                "measure": "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS"}
    name = args.name or ("memory_ckpt" if args.gradient_checkpointing else "memory")
    path = write_result(name, machine, settings, {"points": rows_out}, notes=[
        "Each point and path ran in its own child process; old = full_logits.py swapped in.",
        "Responses are random token ids: memory depends on shapes, not on tokens.",
        "Seconds were taken on whatever load the machine had: compare memory, not time.",
    ])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
