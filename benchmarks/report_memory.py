"""docs/PERFORMANCE.md's memory sections, for make_report.py: one training step's peak memory,
full logits against the chunked LM head (results/memory*.json, logprob_chunks.json), the
default run's memory by phase and role (results/memory_default*.json), and the arithmetic for
the paper's four models on one 80 GB GPU (from their public configs: not measured here).
"""
from __future__ import annotations

from make_report import command, fmt, table, verdict

# Public config.json values: parameters, layers, hidden, k/v width (kv heads x head dim),
# MLP width, vocabulary.
MODELS = {
    "Qwen2.5-Math-1.5B": dict(params=1.54e9, layers=28, hidden=1536, kv=256, inter=8960,
                              vocab=151936),
    "Qwen2.5-Math-7B": dict(params=7.62e9, layers=28, hidden=3584, kv=512, inter=18944,
                            vocab=152064),
    "Qwen2.5-7B": dict(params=7.62e9, layers=28, hidden=3584, kv=512, inter=18944, vocab=152064),
    "Llama-3.1-8B-Instruct": dict(params=8.03e9, layers=32, hidden=4096, kv=1024, inter=14336,
                                  vocab=128256),
}
GPU_GB, CUDA_GB = 80, 5  # one 80 GB GPU, ~5 GB of it for the CUDA context and fragmentation
TOKENS, LORA_RANK = 3072, 16
OLD_LOGIT_BYTES = 14  # per logit: bf16 out of the head, fp32 copy, / T, log-softmax (+ backward)
# the chunked head: at most LOGIT_KEEP_ELEMENTS fp32 log-softmaxes kept (256 MiB) and one
# chunk's few copies in flight (4 x 64 MiB), whatever the micro-batch
NEW_LOGIT_GB = (2**28 + 4 * 2**26) / 1e9


def adapter_params(m: dict, rank: int = LORA_RANK) -> int:
    d, kv, inter = m["hidden"], m["kv"], m["inter"]
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, inter), (d, inter), (inter, d)]
    return m["layers"] * sum(rank * (i + o) for i, o in shapes)


def budget(m: dict, lora: bool) -> dict:
    """GB that do not grow with the micro-batch, and bytes per token of one that do."""
    d, kv, inter, L = m["hidden"], m["kv"], m["inter"], m["layers"]
    if lora:  # bf16 frozen base; fp32 adapter: weights, gradients, 2 AdamW moments, snapshot
        static = m["params"] * 2 + adapter_params(m) * 4 * 5
        residual = 2  # the residual stream is bf16 like the base
    else:  # fp32 weights, gradients, 2 moments, snapshot, and autocast's bf16 weight copies
        static = m["params"] * (4 * 5 + 2)
        residual = 4  # fp32 embeddings: the residual stream stays fp32 under autocast
    ckpt = L * d * residual  # each layer's input, kept by gradient checkpointing
    layer = 2 * 2 * (3 * d + 2 * kv + 4 * inter + 2 * d)  # one layer recomputed, and its grads
    return {"static_gb": static / 1e9, "ckpt": ckpt, "layer": layer,
            "old_logits": OLD_LOGIT_BYTES * m["vocab"], "new_hidden": 4 * d}


def largest_micro_batch(b: dict, new: bool) -> tuple[int, float]:
    """The most rows of TOKENS tokens that fit, and GB per row."""
    per_token = b["ckpt"] + b["layer"] + (b["new_hidden"] if new else b["old_logits"])
    row_gb = TOKENS * per_token / 1e9
    room = GPU_GB - CUDA_GB - b["static_gb"] - (NEW_LOGIT_GB if new else 0)
    return max(0, int(room // row_gb)), row_gb


def arithmetic_section() -> list[str]:
    lines = ["### One 80 GB GPU, 3,072-token responses: the largest micro-batch before and after",
             "", "**Estimate, not a measurement** (no GPU here): arithmetic from each model's "
             "public config.json, the local engine with `--gradient_checkpointing` (bf16 "
             "autocast), in reset mode (continuous mode adds the reference: 4 bytes a "
             "parameter for full fine-tuning, nothing with LoRA). Written out by "
             "`benchmarks/report_memory.py` (run by `.venv/bin/python benchmarks/make_report.py`).",
             "", "| model | parameters | layers | hidden | k/v | MLP | vocabulary |",
             "|---|---|---|---|---|---|---|"]
    for name, m in MODELS.items():
        lines.append(f"| {name} | {m['params'] / 1e9:.2f} B | {m['layers']} | {m['hidden']} | "
                     f"{m['kv']} | {m['inter']} | {m['vocab']:,} |")
    lines += ["", "- Fixed: full fine-tuning keeps fp32 weights, gradients, two AdamW moments and "
              "the reset snapshot (20 bytes a parameter) and autocast's bf16 copy of the weights "
              f"during a forward (2); LoRA (rank {LORA_RANK}, all seven projections) a bf16 base "
              "(2 bytes a parameter) and the fp32 adapter x 5.",
              "- Per token of a micro-batch: each layer's checkpointed input (layers x hidden x 4 "
              "bytes, fp32 residual stream, full; x 2, bf16, LoRA); one layer recomputed in the "
              "backward with its gradients, 2 x 2 x (5 hidden + 2 k/v + 4 MLP) bytes; and the "
              f"logits: before, about {OLD_LOGIT_BYTES} bytes x vocabulary (bf16 out of the head, "
              "the fp32 copy, / temperature, log-softmax, as much again in the backward); after, "
              "only the hidden states the chunks read (4 bytes x hidden), plus "
              f"{NEW_LOGIT_GB:.2f} GB for the chunks whatever the micro-batch.",
              f"- Room: {GPU_GB} GB less ~{CUDA_GB} GB for CUDA. Sampling (the KV cache) and "
              "training never overlap.", ""]
    rows, shares = [], []
    for name, m in MODELS.items():
        for lora in (False, True):
            b = budget(m, lora)
            old, old_row = largest_micro_batch(b, False)
            new, new_row = largest_micro_batch(b, True)
            per_token_old = (b["ckpt"] + b["layer"] + b["old_logits"]) / 2**20
            per_token_new = (b["ckpt"] + b["layer"] + b["new_hidden"]) / 2**20
            shares.append(1 - per_token_new / per_token_old)
            rows.append([name, "LoRA" if lora else "full", f"{b['static_gb']:.1f}",
                         f"{per_token_old:.2f} / {per_token_new:.2f}",
                         f"{old_row:.2f} / {new_row:.2f}",
                         str(old) if b["static_gb"] < GPU_GB - CUDA_GB else "does not fit",
                         str(new) if b["static_gb"] < GPU_GB - CUDA_GB else "does not fit"])
    lines += table(["model", "training", "fixed GB", "MiB per token, before / after",
                    f"GB per {TOKENS:,}-token row, before / after", "largest micro-batch before",
                    "largest micro-batch after"], rows)
    m = MODELS["Llama-3.1-8B-Instruct"]
    b = budget(m, True)
    _, row_gb = largest_micro_batch(b, True)
    total = b["static_gb"] + NEW_LOGIT_GB + 16 * row_gb
    lines += ["", f"The logits were {100 * min(shares):.0f}-{100 * max(shares):.0f}% of a "
              "token's memory (the 128K-152K vocabularies); what is left is the layers' own "
              "activations. "
              "`configs/llama-3.1-8b-instruct-lora.yaml` now sets `micro_batch_size: 16` (was 4): "
              f"an estimated {total:.0f} GB, the margin the old setting left (4 rows, "
              f"{b['static_gb'] + 4 * TOKENS * (b['ckpt'] + b['layer'] + b['old_logits']) / 1e9:.0f}"
              " GB by the old arithmetic), for an estimate never run on a GPU. Full fine-tuning of "
              "the 7-8B models does not fit one GPU at any micro-batch (their fixed state alone "
              "is 168-177 GB): that is the scale engine's work (ZeRO-3 over several GPUs).", ""]
    return lines


def memory_section(runs: dict, chunks: dict | None) -> tuple[list[str], list]:
    """results/memory.json (and memory_ckpt.json): one step's peak, old against new."""
    lines = ["## 9. Memory: log-probs without full-vocabulary logits (`bench_memory.py`)", "",
             "One GRPO step of the local engine (fp32, CPU, the bundled model) on random "
             "responses, `rows x length @ micro-batch`, the engine as it is (`new`: the LM head "
             "in chunks, `sequences.chunked_head_logprobs`) against the same engine with the "
             "full-logits functions it replaced (`old`: `benchmarks/full_logits.py`), each in "
             "its own process. Peak RSS of the process (GPU: `torch.cuda.max_memory_allocated`), "
             "and the step's own part (peak less the RSS just before the step: gradients, AdamW's "
             "moments, activations, logits).", ""]
    summary = []
    if not runs:
        lines += ["Not run: no `benchmarks/results/memory*.json`.", ""]
    for key, d in runs.items():  # one results file per command: memory.json, memory_ckpt.json, ...
        ckpt = d["settings"]["gradient_checkpointing"]
        label = "`--gradient_checkpointing`" if ckpt else "gradient checkpointing off (the CPU default)"
        lines += [f"### `{key}.json`: {label}", ""]
        lines += command(d)
        rows = []
        for p in d["results"]["points"]:
            new, old = p.get("new", {}), p.get("old", {})

            def peak(x):
                if "peak_rss_mib" not in x:
                    why = x.get("skipped") or x.get("failed")
                    return f"not run: {why}" if why else "—"
                return f"{x['peak_rss_mib']:.0f} ({x['peak_rss_mib'] - x['rss_before_step_mib']:.0f})"
            rows.append([f"{p['rows']} x {p['length']:,} @ {p['micro_batch']}", peak(old),
                         peak(new), f"{p['old_over_new']:.2f}x" if "old_over_new" in p else "—",
                         f"{p['step_old_over_new']:.2f}x" if "step_old_over_new" in p else "—"])
            if p["rows"] == 16 and p["length"] == 1024:  # the point
                got = (f"{p['old_over_new']:.2f}x" if "old_over_new" in p
                       else f"old side {peak(old)} (NOTES.md)")
                summary.append([f"memory: one step, 16 x 1,024 tokens, {label}, old / new peak",
                                got, ">= 2x",
                                verdict(p["old_over_new"] >= 2) if "old_over_new" in p else "—"])
        lines += table(["rows x tokens @ micro-batch", "old: peak MiB (the step's own)",
                        "new: peak MiB (the step's own)", "old / new peak", "old / new, the step's own"],
                       rows)
        lines += [""] + [f"- {n}" for n in d["notes"]] + [""]
    if chunks is not None:
        s = chunks["settings"]
        lines += ["### The chunk: size, and checkpoint against a hand-written backward "
                  "(`profile_logprob_chunks.py`)", "",
                  f"The head alone ({s['vocab']:,} x {s['hidden']}, fp32) on {s['tokens']:,} "
                  f"tokens at temperature {s['temperature']}: log-probs, a weighted sum, its "
                  "backward; peak RSS above the child's RSS before it ran. Seconds on a loaded "
                  "machine: compare memory only.", ""]
        lines += command(chunks)
        lines += table(["variant", "peak above start MiB", "s"],
                       [[f"`{v['variant']}`", fmt(v["peak_above_start_mib"], 0), fmt(v["seconds"])]
                        for v in chunks["results"]["variants"]])
        lines += ["", "`checkpoint_<c>`: chunks of c tokens under torch.utils.checkpoint (the "
                  "engines); `function_<c>`: one autograd.Function writing the gradient in place "
                  "(fewer [c, V] buffers, but it needs the head as a bare weight: no module call, "
                  "so no pre-hooks and no ZeRO-3 gathering of its own). Chunks of 128 tokens "
                  "(24 MiB) stay under glibc's 32 MiB mmap threshold and fragment the heap: "
                  "they hold as much as the full logits.", ""]
    return lines + arithmetic_section(), summary


def default_run_section(new: dict | None, old: dict | None) -> tuple[list[str], list]:
    lines = ["## 10. The default run's memory, by phase and by role (`profile_memory.py`)", ""]
    if new is None:
        return lines + ["Not run: no `benchmarks/results/memory_default.json`.", ""], []
    n = new["settings"].get("num_questions", "the default (5)")
    lines += ["The default command (`main.py --output_dir <tmp> --progress false`: ARITH-TTT "
              f"questions, {n} of them here, SmolLM2-135M-Instruct, fp32, CPU; a question trains "
              "only when its vote passes the rules) in one process, every "
              "engine call measured from outside: per phase the largest peak RSS during one "
              "call and the RSS just before that call; then the tensors by role.", ""]
    for d in (new, old):
        if d is not None:
            lines += command(d)
    runs = [("after", new)] + ([("before", old)] if old is not None else [])
    header = ["", *[f"{label}: {d['results']['path']}" for label, d in runs]]
    rows = [["process at start (Python)", *[fmt(d["results"]["rss_at_start_mib"], 0) for _, d in runs]],
            ["after importing torch, transformers, sttrl",
             *[fmt(d["results"]["rss_after_imports_mib"], 0) for _, d in runs]]]
    for phase in ("load", "generate", "score", "train", "reset"):
        rows.append([f"{phase}: peak (RSS before)",
                     *[f"{d['results']['phases'][phase]['max_peak_mib']:.0f} "
                       f"({d['results']['phases'][phase]['rss_before_that_peak_mib']:.0f})"
                       if phase in d["results"]["phases"] else "—" for _, d in runs]])
    # resetting VmHWM per call resets ru_maxrss too: the run's peak is the largest phase peak
    rows.append(["**whole run: peak RSS**", *[
        f"**{max(x['max_peak_mib'] for x in d['results']['phases'].values()):.0f}**"
        for _, d in runs]])
    for key, label in (("weights_mib", "tensors: weights"),
                       ("reset_snapshot_mib", "tensors: reset snapshot (initial weights)"),
                       ("gradients_after_run_mib", "tensors: gradients after the last step"),
                       ("adamw_state_when_stepping_mib", "tensors: AdamW moments while it steps"),
                       ("adamw_state_after_run_mib", "tensors: AdamW moments after the run (reset)"),
                       ("reference_model_mib", "tensors: reference model")):
        rows.append([label, *[fmt(d["results"]["tensors"][key], 0) for _, d in runs]])
    lines += table(header, rows) + [""]
    return lines, []
