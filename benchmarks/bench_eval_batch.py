"""The before-evaluation in the votes' batch against two separate calls, on one question.

For the default CPU configuration (SmolLM2-135M-Instruct, 16 votes at temperature 0.8 and
top-p 1.0, 8 evaluation samples at 0.6 / 0.95, 128 new tokens, one ARITH-TTT question), in one
process: `separate` is what question mode did before (generate the 8 evaluation samples, then
the 16 votes), `batched` what it does now (one `generate_groups` call with both groups). An
untimed 16-token warm-up first. Also checks that each group's samples are the separate call's,
token for token. Writes results/eval_batch.json.

    .venv/bin/python benchmarks/bench_eval_batch.py [--repeats 1] [--model DIR]
"""
from __future__ import annotations

import argparse
import time

from benchutil import machine_info, median, rnd, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (median)")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--question", type=int, default=1, help="index of the ARITH-TTT question")
    args = parser.parse_args()

    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.data import format_prompt
    from sttrl.engines.models import resolve_model
    from sttrl.modes.common import question_seed
    from sttrl.run import build_engine, load_examples
    from sttrl.types import SampleGroup

    cfg = resolve(Config(model=resolve_model(args.model), num_questions=args.question + 1,
                         progress=False, output_dir="unused"), on_gpu=False)
    q = load_examples(cfg)[args.question].question
    engine = build_engine(cfg.engine, parts(cfg).engine, cfg.model)
    prompt = format_prompt(q, engine.tokenizer, cfg.prompt_family)
    seed = question_seed(cfg.seed, q.id)
    evals = SampleGroup(cfg.n_eval, cfg.val_temp, cfg.val_top_p, seed + 1)
    votes = SampleGroup(cfg.n_votes, cfg.temperature, cfg.top_p, seed)
    engine.generate_groups(prompt, [evals, votes], 16)  # warm-up

    def separate():
        return [engine.generate(prompt, g.n, g.temperature, g.top_p, cfg.max_new_tokens, g.seed)
                for g in (evals, votes)]

    def batched():
        return engine.generate_groups(prompt, [evals, votes], cfg.max_new_tokens)

    seconds = {"separate": [], "batched": []}
    out = {}
    for _ in range(args.repeats):
        for name, fn in (("separate", separate), ("batched", batched)):
            start = time.perf_counter()
            out[name] = fn()
            seconds[name].append(time.perf_counter() - start)
            print(f"{name}: {seconds[name][-1]:.2f} s", flush=True)
    same = [[a.token_ids == b.token_ids for a, b in zip(x, y)]
            for x, y in zip(out["separate"], out["batched"])]
    tokens = {name: sum(len(s.token_ids) for g in groups for s in g) for name, groups in out.items()}
    med = {k: median(v) for k, v in seconds.items()}
    results = {"seconds": {k: [rnd(x) for x in v] for k, v in seconds.items()},
               "median_s": {k: rnd(v) for k, v in med.items()},
               "speedup": rnd(med["separate"] / med["batched"]),
               "generated_tokens": tokens,
               "samples_identical": {"eval": f"{sum(same[0])}/{len(same[0])}",
                                     "votes": f"{sum(same[1])}/{len(same[1])}"}}
    print(results, flush=True)
    settings = {k: getattr(cfg, k) for k in ("model", "dataset", "n_votes", "n_eval", "temperature",
                                             "top_p", "val_temp", "val_top_p", "max_new_tokens",
                                             "generation_threads", "seed")}
    settings.update(question=q.id, repeats=args.repeats)
    write_result("eval_batch", machine_info(), settings, results, notes=[
        "One question; separate = the evaluation's generate then the votes' generate (the old "
        "question-mode path), batched = one generate_groups call with both groups.",
        "On a shared CPU one run is noisy: compare the two numbers of the same run only."])


if __name__ == "__main__":
    main()
