"""The before-evaluation drawn in the votes' batch (issue #14, item 6): groups of one batch
sample as separate calls would, rows with their own temperature and top-p sample from their
own distribution, the votes never see an evaluation sample, and an unchanged policy reuses
the before answers as the after answers."""
import dataclasses

import pytest
import torch

from helpers import local_engine, tiny_config, write_questions

PROMPT = "<|user|>What is 2 + 3?<|end|><|assistant|>"
LOGPROB_TOL = 1e-5  # the forward on a batch of another size: measured <= 1e-6 in fp32


def test_groups_draw_what_separate_calls_draw(tiny_model):
    """Each group of one batch gives the samples of `generate` with that group alone, token for
    token, whatever the other groups are; finished rows leave the batch on the way."""
    from sttrl.types import SampleGroup

    engine = local_engine(tiny_model)
    groups = [SampleGroup(6, 0.6, 0.95, 11), SampleGroup(9, 1.0, 1.0, 5),
              SampleGroup(3, 0.0, 1.0, 2), SampleGroup(4, 0.8, 0.5, 1), SampleGroup(5, 1.0, 1.0, 5)]
    together = engine.generate_groups(PROMPT, groups, 40)
    backwards = engine.generate_groups(PROMPT, groups[::-1], 40)[::-1]
    assert [len(g) for g in together] == [g.n for g in groups]
    lengths = set()
    for g, got, other in zip(groups, together, backwards):
        alone = engine.generate(PROMPT, g.n, g.temperature, g.top_p, 40, g.seed)
        assert [s.token_ids for s in got] == [s.token_ids for s in alone], g
        assert [s.token_ids for s in other] == [s.token_ids for s in alone], g
        for a, b in zip(got, alone):
            assert a.finished == b.finished and a.text == b.text
            for field in ("logprobs", "logsumexp", "topk_logprob_mean"):
                assert max(abs(x - y) for x, y in zip(getattr(a, field), getattr(b, field))) \
                    < LOGPROB_TOL
            lengths.add(len(a.token_ids))
    assert len(lengths) > 2  # rows finished at different steps while others ran on
    # two groups with one seed: each has its own generator, so their first draws agree
    assert [s.token_ids[0] for s in together[1][:5]] == [s.token_ids[0] for s in together[4]]
    assert engine.generate_groups(PROMPT, [], 5) == []
    assert engine.generate_groups(PROMPT, [SampleGroup(0, 1.0, 1.0, 0)], 5) == [[]]


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
# (temperature, top_p) of the rows of a mixed batch, in turn
SETTINGS = [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9), (1.0, 0.5), (0.6, 1.0)]


def expected(temperature, top_p):
    p = torch.softmax(LOGITS.double() / temperature, -1)
    keep = p.cumsum(-1) - p < top_p  # LOGITS are sorted already
    return p * keep / (p * keep).sum()


@pytest.mark.parametrize("candidates", [1024, 2])
def test_each_row_of_a_mixed_batch_samples_its_own_distribution(monkeypatch, candidates):
    """One batch of rows that take turns through SETTINGS, drawing from two generators: greedy
    rows are greedy, top-p rows emit only nucleus tokens, and each setting's frequencies follow
    its own tempered nucleus distribution. With 2 candidates, the 0.9 nucleus is wider than
    them and the 0.5 one is not: both ways in one batch."""
    import sttrl.engines.sampling as sampling

    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", candidates)
    per = 8000
    n = per * len(SETTINGS)
    temps = [SETTINGS[i % len(SETTINGS)][0] for i in range(n)]
    tops = [SETTINGS[i % len(SETTINGS)][1] for i in range(n)]
    streams = sampling.Streams([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
                               [i % 2 for i in range(n)])
    got = sampling.sample_next(LOGITS.expand(n, -1), temps, torch.tensor(tops), streams)
    for k, (t, p) in enumerate(SETTINGS):
        mine = got[k::len(SETTINGS)]
        if t == 0:
            assert (mine == 0).all()
            continue
        freq = torch.bincount(mine, minlength=len(LOGITS)).double() / per
        want = expected(t, p)
        assert (freq[want == 0] == 0).all(), (t, p, freq)
        assert (freq - want).abs().max() < 0.02, (t, p, freq, want)


@pytest.mark.parametrize("candidates", [1024, 3])
def test_a_row_draws_in_a_mixed_batch_what_its_group_draws_alone(monkeypatch, candidates):
    """Rows of three groups (greedy, nucleus, plain), interleaved in one batch, each group with
    its own generator: every row's token is the one a batch of only its group draws with a
    fresh generator of the same seed, step after step."""
    import sttrl.engines.sampling as sampling

    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", candidates)
    torch.manual_seed(0)
    groups = [(0.0, 1.0, 4), (0.7, 0.8, 9), (1.2, 1.0, 3)]  # temperature, top_p, seed
    rows = [0, 1, 2, 1, 1, 2, 0, 1, 2, 2, 1]  # each row's group
    mixed = [torch.Generator().manual_seed(s) for _, _, s in groups]
    alone = [torch.Generator().manual_seed(s) for _, _, s in groups]
    for _ in range(5):
        logits = torch.randn(len(rows), 40) * 3
        got = sampling.sample_next(logits, [groups[g][0] for g in rows],
                                   [groups[g][1] for g in rows], sampling.Streams(mixed, rows))
        for g, (t, p, _) in enumerate(groups):
            idx = torch.tensor([i for i, k in enumerate(rows) if k == g])
            want = sampling.sample_next(logits[idx], t, p, alone[g])
            assert torch.equal(got[idx], want), g


def question_setup(tiny_model, tmp_path, **kw):
    from sttrl.config import resolve
    from sttrl.data import format_prompt
    from sttrl.modes.common import question_seed
    from sttrl.parts import parts
    from sttrl.run import load_examples

    data = write_questions(tmp_path / "q.json", n=1)
    cfg = resolve(tiny_config(tiny_model, data, tmp_path / "out", **kw), on_gpu=False)
    example = load_examples(cfg)[0]
    engine = local_engine(tiny_model, lr=cfg.lr)
    prompt = format_prompt(example.question, engine.tokenizer, cfg.prompt_family)
    return parts(cfg), example, engine, prompt, question_seed(cfg.seed, example.question.id)


@pytest.mark.parametrize("method", ["ttrl", "ttft", "slot", "memo"])
def test_votes_never_include_the_evaluation_samples(tiny_model, tmp_path, monkeypatch, method):
    """The method gets exactly its vote group's samples, those a separate call draws; the
    evaluation samples (another count, temperature and seed) stay with the mode."""
    import sttrl.modes.question as mode
    from sttrl.rewards import extract_answer

    parts, example, engine, prompt, seed = question_setup(
        tiny_model, tmp_path, adaptation_method=method, n_votes=6, n_eval=3, val_temp=0.6,
        max_new_tokens=12, memo_variants=2)
    sampling = parts.sampling
    real = mode.METHODS[method]
    group = real.votes(sampling, seed)
    want_votes = engine.generate(prompt, group.n, group.temperature, group.top_p,
                                 sampling.max_new_tokens, group.seed)
    want_eval = engine.generate(prompt, sampling.n_eval, sampling.val_temp, sampling.val_top_p,
                                sampling.max_new_tokens, seed + 1)
    seen = []

    def spy(*args, votes=None, **kw):
        seen.append(votes)
        return real.adapt(*args, votes=votes, **kw)

    monkeypatch.setitem(mode.METHODS, method, dataclasses.replace(real, adapt=spy))
    record = mode.run_question(engine, example, 0, parts).to_json()
    assert len(seen) == 1 and seen[0] is not None
    assert [s.token_ids for s in seen[0]] == [s.token_ids for s in want_votes]
    assert record["answers_before"] == [extract_answer(s.text, example.question.task) for s in want_eval]
    assert record["vote"]["n_voting"] + record["vote"]["n_none"] == sampling.n_votes
    assert record["seconds"]["eval"] > 0 and record["seconds"]["generate"] > 0


def count_generation(engine, monkeypatch) -> dict:
    calls = {"generate": [], "generate_groups": []}
    for name in calls:
        real = getattr(engine, name)

        def counted(*args, _real=real, _name=name, **kw):
            out = _real(*args, **kw)
            calls[_name].append((args, out))
            return out
        monkeypatch.setattr(engine, name, counted)
    return calls


def test_an_unchanged_policy_reuses_the_before_answers(tiny_model, tmp_path, monkeypatch):
    """No update (no steps): the after-evaluation is the before-evaluation, not drawn again."""
    from sttrl.modes.question import run_question

    parts, example, engine, prompt, seed = question_setup(tiny_model, tmp_path,
                                                        steps_per_question=0, max_new_tokens=12)
    calls = count_generation(engine, monkeypatch)
    record = run_question(engine, example, 0, parts).to_json()
    assert record["train"] == []
    assert len(calls["generate_groups"]) == 1 and calls["generate"] == []
    assert record["answers_after"] == record["answers_before"]
    assert record["pass@1_after"] == record["pass@1_before"]


def test_a_changed_policy_draws_the_after_evaluation_with_the_eval_seed(tiny_model, tmp_path,
                                                                        monkeypatch):
    """SLOT sets a head hook (the weights stay): the after-evaluation is drawn again, with the
    evaluation's seed, from the adapted policy."""
    from sttrl.modes.question import run_question

    parts, example, engine, prompt, seed = question_setup(
        tiny_model, tmp_path, adaptation_method="slot", lr=0.5, steps_per_question=3,
        max_new_tokens=12)
    sampling = parts.sampling
    version = engine.policy_version
    calls = count_generation(engine, monkeypatch)
    run_question(engine, example, 0, parts)
    assert engine.policy_version != version and engine.head_hook is not None
    assert len(calls["generate"]) == 1
    args, after = calls["generate"][0]
    assert args == (prompt, sampling.n_eval, sampling.val_temp, sampling.val_top_p,
                    sampling.max_new_tokens, seed + 1)
    before = calls["generate_groups"][0][1][0]
    fresh = engine.generate(*args)
    assert [s.token_ids for s in after] == [s.token_ids for s in fresh]
    assert [s.token_ids for s in after] != [s.token_ids for s in before]  # the hook moved them


def test_policy_version_follows_every_change_of_what_generate_samples(tiny_model):
    from sttrl.algorithms.grpo import grpo_loss
    from sttrl.types import TrainBatch

    engine = local_engine(tiny_model, lr=1e-2)
    seen = [engine.policy_version]
    engine.generate(PROMPT, 2, 1.0, 1.0, 4, seed=0)
    assert engine.policy_version == seen[-1]  # sampling changes nothing
    samples = engine.generate(PROMPT, 2, 1.0, 1.0, 4, seed=0)
    batch = TrainBatch.shared(engine.encode(PROMPT), [s.token_ids for s in samples], [1.0, -1.0])
    engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=1)
    seen.append(engine.policy_version)
    engine.set_head_hook(lambda h: h)
    seen.append(engine.policy_version)
    engine.reset()
    seen.append(engine.policy_version)
    engine.load_state_dict(engine.state_dict())
    seen.append(engine.policy_version)
    assert len(set(seen)) == len(seen)


def test_the_shared_call_is_split_between_phases_by_generated_tokens():
    import time

    from sttrl.modes.common import Timer, generate_shared
    from sttrl.types import Sample, SampleGroup

    class Engine:
        def generate_groups(self, prompt, groups, max_new_tokens):
            time.sleep(0.2)
            return [[Sample("", [1] * 3)] * 2, [Sample("", [1] * 2)] * 9]  # 6 and 18 tokens

    timer = Timer()
    timer.add("eval", 1.0)  # earlier time in a phase stays
    groups = [SampleGroup(2, 0.6, 0.95, 1), SampleGroup(9, 1.0, 1.0, 0)]
    out = generate_shared(Engine(), "p", groups, ["eval", "generate"], 8, timer)
    assert [len(g) for g in out] == [2, 9]
    spent = timer.seconds["eval"] - 1.0 + timer.seconds["generate"]
    assert spent >= 0.2
    assert (timer.seconds["eval"] - 1.0) / spent == pytest.approx(0.25)
