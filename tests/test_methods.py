"""The baselines do what their definitions say, on a tiny random model."""
import json
import math

import pytest
import torch

from sttrl.algorithms import memo, slot, ttft
from sttrl.algorithms.grpo import group_advantages, grpo_loss
from sttrl.config import Config
from sttrl.run import run
from sttrl.types import TrainBatch
from helpers import local_engine

PROMPT = "<|user|>What is 2 + 3? Give the answer.<|end|><|assistant|>"


def test_slot_changes_outputs_not_weights_and_reset_zeroes_the_delta(tiny_model):
    engine = local_engine(tiny_model)
    before = [p.detach().clone() for p in engine.params]
    ids = engine.encode(PROMPT)
    plain = engine.score([ids], [ids[1:4]])
    delta, history = slot.fit_delta(engine, ids, lr=0.1, steps=5)
    assert history[-1]["loss"] < history[0]["loss"]  # fits the prompt
    engine.set_head_hook(slot.HiddenDelta(delta))
    assert not torch.allclose(engine.score([ids], [ids[1:4]]), plain)  # decoding sees the delta
    assert all(torch.equal(p, q) for p, q in zip(engine.params, before))  # weights untouched
    engine.reset()
    assert engine.head_hook is None
    assert torch.allclose(engine.score([ids], [ids[1:4]]), plain)


def test_ttft_lowers_the_loss_on_agreeing_responses(tiny_model):
    engine = local_engine(tiny_model, lr=1e-3)
    ids = engine.encode(PROMPT)
    agree = [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("5", "it is 5")]
    batch = TrainBatch.shared(ids, agree, [1.0, 1.0])
    history = engine.train(batch, ttft.sft_loss, {}, steps=5)
    assert history[-1]["loss"] < history[0]["loss"]


def test_memo_rewards_follow_the_marginal():
    rewards, entropy = memo.marginal_rewards(["5", "5", "5", "3"], "math")
    assert rewards[0] == pytest.approx(math.log(0.75)) and rewards[3] == pytest.approx(math.log(0.25))
    assert entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert memo.marginal_rewards(["5", "5"], "math")[1] == 0.0


def test_memo_gradient_lowers_marginal_entropy_on_a_toy_policy():
    """A categorical policy over 4 answers, updated with MEMO's reward, grows more certain."""
    torch.manual_seed(0)
    logits = torch.tensor([0.5, 0.3, 0.0, -0.2], requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    answers = ["1", "2", "3", "4"]

    def entropy():
        p = torch.softmax(logits.detach(), -1)
        return float(-(p * p.log()).sum())

    start = entropy()
    for _ in range(30):
        draws = torch.multinomial(torch.softmax(logits.detach(), -1), 64, replacement=True)
        rewards, _ = memo.marginal_rewards([answers[i] for i in draws.tolist()], "math")
        adv = torch.tensor(group_advantages(rewards), dtype=torch.float32)
        loss = -(adv * torch.log_softmax(logits, -1)[draws]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert entropy() < start - 0.3


@pytest.mark.parametrize("method", ["ttft", "slot", "memo"])
@pytest.mark.parametrize("continuous", [False, True])
def test_every_method_runs_and_reports_the_same_metrics(tiny_model, tmp_path, method, continuous):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "source": "toy", "id": i}
            for i in range(2)]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    summary = run(Config(model=tiny_model, data_path=str(tmp_path / "q.json"), output_dir=str(out),
                         device="cpu", n_votes=8, n_train=4, n_eval=4, max_new_tokens=8,
                         temperature=1.0, adaptation_method=method, continuous=continuous,
                         progress=False))
    assert summary["questions"] == 2
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    for r in lines:
        assert {"pass@1_before", "pass@1_after", "maj@N_before", "seconds", "skipped"} <= set(r)
    if method == "slot":
        assert all(len(r["train"]) == 5 for r in lines)  # SLOT's default: 5 steps
    if method == "memo":
        assert all(r["extra"]["variants"] == 2 for r in lines)


def test_dataset_level_ttrl_runs_an_episode_and_evaluates(tiny_model, tmp_path):
    from sttrl.modes.schedule import lr_at

    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "source": "toy", "id": i}
            for i in range(6)]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    cfg = Config(model=tiny_model, data_path=str(tmp_path / "q.json"), output_dir=str(out),
                 device="cpu", mode="dataset", episodes=2, prompts_per_step=2, eval_every=2,
                 n_votes=8, n_train=4, n_eval=2, max_new_tokens=6, temperature=1.0, lr=1e-3,
                 balance_ranks=2, progress=False)
    summary = run(cfg)
    assert summary["mode"] == "dataset" and summary["steps"] == 6
    evals = [json.loads(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 4, 6]
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert summary["pass@1_before"] == evals[0]["pass@1"]
    assert summary["pass@1_after"] == evals[-1]["pass@1"]
    # warm-up from 0 (int(0.03 x 100) = 3 batches) then cosine decay
    lrs = [lr_at(i, 100, 1.0, 0.03) for i in range(100)]
    assert lrs[0] == 0.0 < lrs[2] < lrs[3] == 1.0 and lrs[49] > 0.5 > lrs[52] and lrs[-1] < 0.01


def test_slot_fits_a_bf16_model(tiny_model):
    """On a GPU the LM head is bf16 while prompt_hidden is fp32: the fit casts to the head's
    dtype, keeps the delta in fp32 and takes the loss in fp32."""
    engine = local_engine(tiny_model)
    engine.model.to(torch.bfloat16)
    ids = engine.encode(PROMPT)
    delta, history = slot.fit_delta(engine, ids, lr=0.1, steps=5)
    assert delta.dtype == torch.float32
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    engine.set_head_hook(slot.HiddenDelta(delta))
    assert engine.generate(PROMPT, 2, 1.0, 1.0, 4, seed=0)[0].token_ids  # decoding in bf16


def test_slot_continuous_first_loss_is_the_loss_at_the_current_delta(tiny_model):
    """With a delta already hooked in (continuous mode), the fit starts from that delta and its
    first loss is the prompt's cross-entropy under it, counted once, not twice."""
    engine = local_engine(tiny_model)
    ids = engine.encode(PROMPT)
    previous, _ = slot.fit_delta(engine, ids, lr=0.1, steps=3)
    engine.set_head_hook(slot.HiddenDelta(previous))
    # independently: the full model with the hook on scores the prompt's own tokens
    at_current = float(-engine.score([ids[:1]], [ids[1:]])[0].mean())
    twice = slot.HiddenDelta(2 * previous)
    engine.set_head_hook(twice)
    at_double = float(-engine.score([ids[:1]], [ids[1:]])[0].mean())
    engine.set_head_hook(slot.HiddenDelta(previous))
    _, history = slot.fit_delta(engine, ids, lr=0.1, steps=2, start=previous)
    assert history[0]["loss"] == pytest.approx(at_current, rel=1e-5)
    assert abs(at_current - at_double) > 1e-3  # the two would be told apart


def test_lr_warmup_starts_from_zero():
    """verl's linear warm-up: lr = peak * batch / warm, so the first rollout batch has lr 0."""
    from sttrl.modes.schedule import lr_at

    assert lr_at(0, 100, 1.0, 0.1) == 0.0
    assert lr_at(5, 100, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(10, 100, 1.0, 0.1) == pytest.approx(1.0)  # warm-up done: the cosine's start
    assert lr_at(55, 100, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(0, 100, 1.0, 0.0) == 1.0  # no warm-up: the cosine from the peak
    assert lr_at(0, 30, 1.0, 0.03) == 1.0  # int(0.9) = 0 warm-up batches, as verl counts them


def test_mini_batches_share_the_old_logprobs_of_the_policy_that_sampled(tiny_model):
    """One optimiser step per mini-batch; every mini-batch's old log-probs are the ones the
    batch had before the first step, at the rollout temperature, and each step gets its lr."""
    T = 0.7
    engine = local_engine(tiny_model, lr=1e-2)
    a = engine.encode(PROMPT)
    b = engine.encode("<|user|>What is 4 + 4?<|end|><|assistant|>")
    ra = [s.token_ids for s in engine.generate(PROMPT, 3, T, 1.0, 8, seed=1)]
    rb = [s.token_ids for s in engine.generate("<|user|>What is 4 + 4?<|end|><|assistant|>",
                                               3, T, 1.0, 8, seed=2)]
    batch = TrainBatch([a] * 3 + [b] * 3, ra + rb, [1.0, -1.0, 0.5, 1.0, -0.5, -1.0],
                       temperature=T)
    sampled = engine.score(batch.prompts, batch.responses, temperature=T)
    seen = []

    def spy(new, old, ref, advantages, mask, **kw):
        seen.append((new.detach().clone(), old.clone(), ref.clone(), mask))
        return grpo_loss(new, old, ref, advantages, mask, **kw)

    kw = {"clip_eps": 0.2, "kl_coef": 0.01}
    # lr 0 first: that step leaves the weights where they were
    stats = engine.train(batch, spy, kw, steps=1, mini_batches=[[0, 1, 2], [3, 4, 5], [0, 1, 2]],
                         lrs=[0.0, 1e-2, 1e-2])
    assert len(stats) == 3 and stats[0]["clip_frac"] == 0.0
    rows = [[0, 1, 2], [3, 4, 5], [0, 1, 2]]
    for (new, old, ref, mask), r in zip(seen, rows):
        width = mask.shape[1]
        assert torch.allclose(old, sampled[r, :width], atol=1e-6)  # the sampling policy's
        assert torch.allclose(ref, old)  # pristine at the start: it is the reference too
    assert torch.allclose(seen[1][0] * seen[1][3], seen[1][1] * seen[1][3], atol=1e-6)  # lr 0
    moved = ((seen[2][0] - seen[2][1]).abs() * seen[2][3]).max()
    assert moved > 1e-4  # the second step moved the policy; the third is off-policy
    assert engine.optimizer.param_groups[0]["lr"] == 1e-2


def dataset_config(tiny_model, data, out, **kw):
    base = dict(model=tiny_model, data_path=data, output_dir=str(out), device="cpu",
                mode="dataset", episodes=2, prompts_per_step=2, eval_every=2, n_votes=8,
                n_train=4, n_eval=2, max_new_tokens=6, temperature=1.0, lr=1e-3,
                warmup_ratio=0.2, balance_ranks=2, progress=False)
    base.update(kw)
    return Config(**base)


def write_rows(path, n):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "source": "toy", "id": i}
            for i in range(n)]
    path.write_text(json.dumps(rows))
    return str(path)


def test_dataset_mode_takes_one_step_per_mini_batch(tiny_model, tmp_path):
    """Rollout batches of 2 prompts, mini-batches of 1 prompt's worth of samples: 2 optimiser
    steps per batch, every one taken (zero-variance groups included), each at its batch's lr
    (first lr 0); the partial batch dropped; weight decay 0.01 unless set."""
    from sttrl.config import resolve
    from sttrl.modes.schedule import lr_at

    data = write_rows(tmp_path / "q.json", 5)
    summary = run(dataset_config(tiny_model, data, tmp_path / "out", warmup_ratio=0.5))
    assert summary["config"]["weight_decay"] == 0.01 and summary["config"]["mini_batch_prompts"] == 1
    steps = [json.loads(x) for x in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # 5 questions: 2 full batches an episode
    for b, s in enumerate(steps):  # int(0.5 x 4) = 2 warm-up batches
        assert [u["lr"] for u in s["updates"]] == pytest.approx([lr_at(b, 4, 1e-3, 0.5)] * 2)
        assert all(1 <= u["questions"] <= 2 for u in s["updates"])
    assert steps[0]["updates"][0]["lr"] == 0.0
    assert resolve(Config(), on_gpu=False).weight_decay == 0.0
    assert resolve(Config(mode="dataset", weight_decay=0.0), on_gpu=False).weight_decay == 0.0


def test_dataset_mode_resumes_exactly(tiny_model, tmp_path, monkeypatch):
    """A run that dies after its first checkpoint and is re-run writes the same lines as one
    that never stopped."""
    import sttrl.modes.dataset as dataset

    data = write_rows(tmp_path / "q.json", 4)
    run(dataset_config(tiny_model, data, tmp_path / "whole", mini_batch_prompts=1))
    calls = {"n": 0}
    real = dataset.evaluate_set

    def dies_at_third_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # evals: before training, after step 2 (checkpoint), after step 4
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "evaluate_set", dies_at_third_eval)
    with pytest.raises(KeyboardInterrupt):
        run(dataset_config(tiny_model, data, tmp_path / "killed", mini_batch_prompts=1))
    monkeypatch.setattr(dataset, "evaluate_set", real)
    run(dataset_config(tiny_model, data, tmp_path / "killed", mini_batch_prompts=1))
    for name in ("steps.jsonl", "evals.jsonl"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text()
