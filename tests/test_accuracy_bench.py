"""benchmarks/accuracy.py: cached samples are the ones the engine would draw, and only the
untouched model's samples are cached."""
import importlib.util
import json

from helpers import REPO, local_engine


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cached_samples_equal_fresh_ones_and_trained_weights_are_never_cached(tiny_model, tmp_path):
    from sttrl.algorithms.grpo import grpo_loss
    from sttrl.types import TrainBatch

    acc = load("accuracy")
    engine = local_engine(tiny_model, lr=1e-2)
    cached = acc.CachedSamples(engine, tmp_path / "samples.jsonl", tiny_model)
    args = ("<|user|>What is 2 + 3?<|end|><|assistant|>", 4, 1.0, 1.0, 8, 11)
    first = cached.generate(*args)
    assert (cached.hits, cached.misses) == (0, 1)
    again = acc.CachedSamples(engine, tmp_path / "samples.jsonl", tiny_model).generate(*args)
    fresh = engine.generate(*args)
    assert [s.token_ids for s in first] == [s.token_ids for s in again] == [s.token_ids for s in fresh]
    assert [s.logprobs for s in again] == [s.logprobs for s in fresh]
    batch = TrainBatch.shared(engine.encode(args[0]), [s.token_ids for s in first],
                              [1.0, -1.0, 0.5, -0.5])
    engine.train(batch, grpo_loss, {"clip_eps": 0.2}, 1)
    cached.generate(*args)  # trained weights: drawn, not looked up
    assert (cached.hits, cached.misses) == (0, 1)
    engine.reset()
    cached.generate(*args)
    assert cached.hits == 1


def test_devsets_are_fixed_and_of_the_promised_sizes(tmp_path):
    dev = load("devsets")
    paths = dev.write_sets(tmp_path)
    gain, noharm = (json.loads(paths[k].read_text()) for k in ("gain", "noharm"))
    assert len(gain) == 48 and len(noharm) == 40
    assert len({r["id"] for r in gain + noharm}) == 88
    assert json.loads(dev.write_sets(tmp_path / "again")["gain"].read_text()) == gain
    for row in gain + noharm:
        assert int(row["answer"]) >= 0


def test_derived_weak_vote_rows_equal_a_real_run_with_the_rule(tiny_model, tmp_path):
    """accuracy.py --weak_vote derives a --min_majority_ratio run from one without it: the
    derivation must give exactly the lines the real run writes."""
    from helpers import lines, tiny_config, write_questions
    from sttrl.run import run

    acc = load("accuracy")
    data = write_questions(tmp_path / "q.json", n=6)
    # confidence-weighted votes: the random tiny model's winners all hold 1 of 8 samples, so
    # only weights give their ratios (TTRL's, over every sample) different values
    run(tiny_config(tiny_model, data, tmp_path / "free", voting_function="confidence"))
    free = lines(tmp_path / "free")
    trained = sorted(r["vote"]["majority_ratio"] for r in free if not r["skipped"])
    assert len(set(trained)) >= 2, "the tiny run must train questions of different vote strength"
    threshold = (trained[0] + trained[-1]) / 2
    run(tiny_config(tiny_model, data, tmp_path / "rule", voting_function="confidence",
                    min_majority_ratio=threshold))
    real = {r["id"]: r for r in lines(tmp_path / "rule")}
    derived = {r["id"]: r for r in acc.with_weak_vote_rule(free, threshold)}
    assert any(r["skipped"] and not f["skipped"] for r, f in zip(derived.values(), free))
    for qid, r in real.items():
        assert derived[qid]["skipped"] == r["skipped"], qid
        assert derived[qid]["pass@1_after"] == r["pass@1_after"], qid
        assert derived[qid]["pass@1_before"] == r["pass@1_before"], qid
