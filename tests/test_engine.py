"""The local engine on a tiny random model: sampling, scoring, GRPO steps, exact reset."""
import pytest
import torch

from sttrl.algorithms.grpo import group_advantages, grpo_loss, kl_k3
from sttrl.types import TrainBatch
from helpers import local_engine

PROMPT = "<|user|>What is 2 + 3?<|end|><|assistant|>"


def seq_logprob(engine, prompt_ids, text):
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    lp = engine.score([prompt_ids], [ids])
    return float(lp[0, :len(ids)].sum())


def test_generate_is_seeded_and_records_token_stats(tiny_model):
    engine = local_engine(tiny_model)
    a = engine.generate(PROMPT, 6, 1.0, 1.0, 10, seed=7)
    b = engine.generate(PROMPT, 6, 1.0, 1.0, 10, seed=7)
    c = engine.generate(PROMPT, 6, 1.0, 1.0, 10, seed=8)
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    assert [s.token_ids for s in a] != [s.token_ids for s in c]
    for s in a:
        n = len(s.token_ids)
        assert 1 <= n <= 10 and len(s.logprobs) == len(s.logsumexp) == len(s.topk_logprob_mean) == n
        assert s.finished == (s.token_ids[-1] == engine.tokenizer.eos_token_id)
        assert all(lp <= 0 for lp in s.logprobs)


def test_generation_logprobs_match_a_full_forward(tiny_model):
    engine = local_engine(tiny_model)
    samples = engine.generate(PROMPT, 4, 1.0, 1.0, 12, seed=0)
    scored = engine.score([engine.encode(PROMPT)] * 4, [s.token_ids for s in samples])  # [4, T]
    for i, s in enumerate(samples):
        got = scored[i, :len(s.token_ids)]
        assert torch.allclose(got, torch.tensor(s.logprobs), atol=1e-4)


def test_top_p_keeps_only_the_nucleus(tiny_model):
    engine = local_engine(tiny_model)
    greedy = engine.generate(PROMPT, 1, 0.0, 1.0, 5, seed=0)[0].token_ids
    tiny_nucleus = engine.generate(PROMPT, 4, 1.0, 1e-6, 5, seed=3)
    assert all(s.token_ids == greedy for s in tiny_nucleus)


def test_grpo_steps_raise_the_majority_answer(tiny_model):
    engine = local_engine(tiny_model, lr=3e-3)
    pid = engine.encode(PROMPT)
    tok = engine.tokenizer
    good = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rewards = [1.0] * 5 + [0.0] * 3  # the vote's majority answer is "5"
    batch = TrainBatch.shared(pid, [good] * 5 + [bad] * 3, group_advantages(rewards))
    before_good, before_bad = seq_logprob(engine, pid, "5</s>"), seq_logprob(engine, pid, "7</s>")
    history = engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.001}, steps=4)
    assert len(history) == 4 and history[0]["clip_frac"] == 0.0  # step 1 is on-policy
    assert seq_logprob(engine, pid, "5</s>") > before_good + 0.1
    assert seq_logprob(engine, pid, "7</s>") < before_bad


def test_reset_restores_weights_and_optimizer_bit_exactly(tiny_model):
    engine = local_engine(tiny_model, lr=1e-2)
    initial = [p.detach().clone() for p in engine.params]
    before = engine.generate(PROMPT, 4, 1.0, 1.0, 8, seed=1)
    pid = engine.encode(PROMPT)
    batch = TrainBatch.shared(pid, [s.token_ids for s in before], [1.0, -1.0, 1.0, -1.0])
    engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=2)
    assert any(not torch.equal(p, q) for p, q in zip(engine.params, initial))
    assert len(engine.optimizer.state) > 0
    engine.reset()
    assert all(torch.equal(p, q) for p, q in zip(engine.params, initial))
    assert len(engine.optimizer.state) == 0 and engine.pristine
    after = engine.generate(PROMPT, 4, 1.0, 1.0, 8, seed=1)
    assert [s.token_ids for s in after] == [s.token_ids for s in before]


def test_kl_uses_the_initial_model_once_weights_moved(tiny_model):
    engine = local_engine(tiny_model, lr=1e-2)
    pid = engine.encode(PROMPT)
    samples = engine.generate(PROMPT, 4, 1.0, 1.0, 8, seed=2)
    batch = TrainBatch.shared(pid, [s.token_ids for s in samples], [1.0, -1.0, 1.0, -1.0])
    first = engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.1}, steps=1)
    assert first[0]["kl"] == 0.0  # pristine: the policy is the reference
    second = engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.1}, steps=1)
    assert second[0]["kl"] > 0.0  # continuous: the frozen initial model is the reference
    assert engine.ref_model is not None


def test_group_advantages_and_k3():
    adv = group_advantages([1.0, 0.0, 0.0, 1.0])
    assert abs(sum(adv)) < 1e-9 and adv[0] > 0 > adv[1]
    assert group_advantages([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]
    lp = torch.tensor([[-1.0, -2.0]])
    assert torch.all(kl_k3(lp, lp) == 0)
    assert torch.all(kl_k3(lp, lp - 0.5) > 0)


def test_batches_mixing_prompts_score_like_each_prompt_alone(tiny_model):
    engine = local_engine(tiny_model)
    short = engine.encode("<|user|>2+3?<|end|><|assistant|>")
    long = engine.encode("<|user|>What is the sum of 2 and 3?<|end|><|assistant|>")
    r1 = engine.tokenizer("5 is it", add_special_tokens=False)["input_ids"]
    r2 = engine.tokenizer("5", add_special_tokens=False)["input_ids"]
    mixed = engine.score([short, long], [r1, r2])
    assert torch.allclose(mixed[0, :len(r1)], engine.score([short], [r1])[0], atol=1e-5)
    assert torch.allclose(mixed[1, :len(r2)], engine.score([long], [r2])[0, :len(r2)], atol=1e-5)


def assert_same_update(a, b):
    """The last step's gradients agree to float noise; the weights to well under one lr step
    (Adam's first steps move every weight by about lr * sign(grad), so a gradient that is
    float noise in both engines can move a weight differently)."""
    scale = max(p.grad.abs().max().item() for p in b.params)
    for p, q in zip(a.params, b.params):
        # 1e-4: the chunked LM head sums in another order per micro-batch (measured 1e-5 on CI)
        assert (p.grad - q.grad).abs().max() < 1e-4 * scale
        assert (p - q).abs().max() < 0.01 * b.optimizer.param_groups[0]["lr"]


def test_length_buckets_cut_where_padding_pays_for_a_pass():
    from sttrl.engines.sequences import length_buckets

    def cost(buckets, lengths, pass_cost):
        return sum(pass_cost + len(b) * max(lengths[i] for i in b) for b in buckets)

    lengths = [57, 57, 88, 131, 104, 177, 56, 57, 3, 400]
    for max_rows in (1, 3, 8, 16):
        for pass_cost in (0, 50, 96, 1000):
            buckets = length_buckets(lengths, max_rows, pass_cost)
            assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
            assert all(1 <= len(b) <= max_rows for b in buckets)
            # no worse than the obvious plans: one pass per row, or chunks of max_rows longest first
            order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
            chunks = [order[i:i + max_rows] for i in range(0, len(order), max_rows)]
            best = cost(buckets, lengths, pass_cost)
            assert best <= cost([[i] for i in order], lengths, pass_cost)
            assert best <= cost(chunks, lengths, pass_cost)
    free = length_buckets(lengths, 16, pass_cost=0)  # passes are free: no padding at all
    assert all(len({lengths[i] for i in b}) == 1 for b in free)
    assert len(length_buckets(lengths, 16, pass_cost=10**6)) == 1  # passes are dear: one
    # 400 alone (padding 177 to 400 costs 223 > 96); 131 padded to 177 (46 < 96); 3 alone
    # (padding it to 177 costs 174 > 96)
    assert length_buckets([400, 177, 131, 3], 8, 96) == [[0], [1, 2], [3]]
    assert length_buckets([], 4, 96) == []


def test_training_does_not_depend_on_how_rows_are_micro_batched(tiny_model):
    """Length buckets only regroup rows: one micro-batch per row gives the same update."""
    engines = [local_engine(tiny_model, lr=1e-2, micro_batch_size=m) for m in (1, 8)]
    pid = engines[0].encode(PROMPT)
    samples = engines[0].generate(PROMPT, 6, 1.0, 1.0, 12, seed=4)
    batch = TrainBatch.shared(pid, [s.token_ids for s in samples], [1.0, -1, 1, -1, 0.5, -0.5])
    stats = [e.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.1}, steps=2) for e in engines]
    for a, b in zip(*stats):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) < 1e-5 * max(1.0, abs(b[k])), k
    assert_same_update(*engines)


def test_sharing_the_prompt_gives_the_same_update_as_a_forward_per_row(tiny_model, monkeypatch):
    """The prompt runs once per micro-batch with its KV cache shared by the rows; log-probs,
    loss statistics and the weights after two steps equal one full padded forward per row."""
    import sttrl.engines.local as local

    monkeypatch.setattr(local, "SHARE_MIN_TOKENS", 0)  # share whatever the micro-batch
    shared, padded = (local_engine(tiny_model, lr=1e-2) for _ in range(2))
    padded.share_prompt = False
    pid = shared.encode(PROMPT)
    samples = shared.generate(PROMPT, 6, 1.0, 1.0, 12, seed=5)
    responses = [s.token_ids for s in samples]
    mask = torch.zeros(6, max(map(len, responses)))
    for i, r in enumerate(responses):
        mask[i, :len(r)] = 1
    a, b = shared.score([pid] * 6, responses), padded.score([pid] * 6, responses)
    assert ((a - b).abs() * mask).max() < 1e-5
    batch = TrainBatch.shared(pid, responses, [1.0, -1, 1, -1, 0.5, -0.5])
    kw = {"clip_eps": 0.2, "kl_coef": 0.1}
    for x, y in zip(shared.train(batch, grpo_loss, kw, steps=2), padded.train(batch, grpo_loss, kw, steps=2)):
        for k in y:
            assert abs(x[k] - y[k]) < 1e-5 * max(1.0, abs(y[k])), k
    assert_same_update(shared, padded)


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_update(tiny_model):
    """--gradient_checkpointing really checkpoints (each layer runs again in the backward pass;
    transformers skips it for a model in eval mode) and leaves the update unchanged."""
    plain, ckpt = local_engine(tiny_model, lr=1e-2), local_engine(tiny_model, lr=1e-2,
                                                                gradient_checkpointing=True)
    calls = []  # (module hooks do not fire in torch's recompute; a wrapped forward does)
    for layer in ckpt.model.model.layers:
        layer.mlp.forward = lambda *a, _f=layer.mlp.forward, **k: calls.append(1) or _f(*a, **k)
    pid = plain.encode(PROMPT)
    responses = [s.token_ids for s in plain.generate(PROMPT, 4, 1.0, 1.0, 10, seed=6)]
    batch = TrainBatch.shared(pid, responses, [1.0, -1.0, 0.5, -0.5])
    kw = {"clip_eps": 0.2, "kl_coef": 0.1}
    plain.train(batch, grpo_loss, kw, steps=1)
    ckpt.train(batch, grpo_loss, kw, steps=1)
    passes = len(ckpt._micro_batches([pid] * 4, responses)) * len(ckpt.model.model.layers)
    assert len(calls) == 2 * passes  # each layer: one forward, one recompute in the backward
    assert_same_update(ckpt, plain)
    assert not ckpt.model.training  # back in eval mode: sampling must see the same policy
    assert ckpt.generate(PROMPT, 2, 1.0, 1.0, 6, seed=1)[0].token_ids


def test_sampling_follows_the_tempered_nucleus_distribution(monkeypatch):
    """20,000 draws from one row of logits: frequencies match softmax(logits / T), restricted
    to the nucleus and renormalised under top-p, also when the nucleus is wider than the
    candidates looked at first (the full-sort fallback)."""
    import sttrl.engines.sampling as local

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 20_000

    def freqs(temperature, top_p):
        gen = torch.Generator().manual_seed(0)
        got = local.sample_next(logits.expand(n, -1), temperature, top_p, gen)
        return torch.bincount(got, minlength=6).double() / n

    def expected(temperature, top_p):
        p = torch.softmax(logits.double() / temperature, -1)
        keep = p.cumsum(-1) - p < top_p  # logits are sorted already
        return p * keep / (p * keep).sum()

    for temperature, top_p in [(1.0, 1.0), (0.6, 1.0), (0.8, 0.9), (1.0, 0.5)]:
        for k in (1024, 2):  # 2: the top candidates never hold the nucleus, so it sorts
            monkeypatch.setattr(local, "NUCLEUS_CANDIDATES", k)
            want, got = expected(temperature, top_p), freqs(temperature, top_p)
            assert (got[want == 0] == 0).all(), (temperature, top_p, k)
            assert (got - want).abs().max() < 0.015, (temperature, top_p, k, got, want)
    gen = torch.Generator().manual_seed(0)
    assert (local.sample_next(logits.expand(4, -1), 0.0, 1.0, gen) == 0).all()  # greedy


def test_group_advantages_use_the_sample_std():
    """TRL, verl and OpenRLHF divide by the unbiased (n - 1) std; one sample has no std."""
    import math

    rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    mean = sum(rewards) / 8
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 7)
    assert group_advantages(rewards) == pytest.approx([(r - mean) / (std + 1e-6) for r in rewards])
    assert group_advantages([1.0]) == [0.0]
    assert group_advantages([0.3]) == [0.0]


def reference_grpo_grads(model, ref_model, prompt, responses, advantages, temperature,
                         clip_eps, kl_coef):
    """The tempered GRPO loss written out plainly: a full forward per row, logits / T,
    log-softmax, ratio to the detached policy (the first step of a call), clipped objective,
    k3 KL to ref_model, one token mean over the batch. Returns the parameter gradients."""
    model.zero_grad(set_to_none=True)
    n_tokens = sum(len(r) for r in responses)
    total = 0.0
    for r, a in zip(responses, advantages):
        ids = torch.tensor([prompt + r])
        target = torch.tensor(r)[:, None]

        def logp(m):
            logits = m(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / temperature
            return torch.log_softmax(logits, -1).gather(-1, target).squeeze(-1)

        new = logp(model)
        with torch.no_grad():
            ref = logp(ref_model)
        ratio = torch.exp(new - new.detach())
        objective = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip_eps, 1 + clip_eps))
        d = ref - new
        total = total + (objective + kl_coef * (torch.exp(d) - d - 1)).sum()
    (total / n_tokens).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("share", [True, False])
def test_training_logprobs_are_those_of_the_sampling_temperature(tiny_model, monkeypatch, share):
    """At T = 0.7 the policy that sampled is softmax(z / T): the first step is on-policy
    (ratio exactly 1, nothing clipped) and the gradient is the tempered GRPO loss's, both while
    the policy is the reference and once the frozen initial model is (continuous)."""
    import sttrl.engines.local as local
    from transformers import AutoModelForCausalLM

    T = 0.7
    monkeypatch.setattr(local, "SHARE_MIN_TOKENS", 0 if share else 10**9)
    engine = local_engine(tiny_model, lr=1e-2, grad_clip=1e9)
    pid = engine.encode(PROMPT)
    responses = [s.token_ids for s in engine.generate(PROMPT, 4, T, 1.0, 10, seed=3)]
    adv = [1.0, -1.0, 0.5, -0.5]
    batch = TrainBatch.shared(pid, responses, adv, temperature=T)
    assert batch.temperature == T
    seen = []

    def spy(new, old, ref, advantages, mask, **kw):
        seen.append((new.detach().clone(), old.clone()))
        return grpo_loss(new, old, ref, advantages, mask, **kw)

    kw = {"clip_eps": 0.2, "kl_coef": 0.1}
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    for call in range(2):  # pristine (ref = the policy), then moved (ref = the initial model)
        policy.load_state_dict(engine.model.state_dict())
        seen.clear()
        stats = engine.train(batch, spy, kw, steps=1)
        assert stats[0]["clip_frac"] == 0.0
        assert all(torch.equal(new, old) for new, old in seen)  # ratio exactly 1
        want = reference_grpo_grads(policy, initial, pid, responses, adv, T, **kw)
        got = [p.grad for p in engine.model.parameters()]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-6, rtol=1e-4), call
    # the voting summaries stay untempered
    sample = engine.generate(PROMPT, 1, T, 1.0, 6, seed=0)[0]
    untempered = engine.score([pid], [sample.token_ids])[0, :len(sample.token_ids)]
    assert torch.allclose(untempered, torch.tensor(sample.logprobs), atol=1e-4)


def test_greedy_rollouts_train_on_untempered_logprobs(tiny_model):
    """Temperature 0 (greedy) cannot divide the logits: it trains as temperature 1."""
    grads = []
    for t in (0.0, 1.0):
        engine = local_engine(tiny_model, lr=1e-2)
        pid = engine.encode(PROMPT)
        responses = [s.token_ids for s in engine.generate(PROMPT, 3, 1.0, 1.0, 8, seed=1)]
        engine.train(TrainBatch.shared(pid, responses, [1.0, -1.0, 0.0], temperature=t),
                     grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=1)
        grads.append([p.grad.clone() for p in engine.params])
        assert all(torch.isfinite(g).all() for g in grads[-1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_bf16_autocast_with_fp32_masters_keeps_small_updates(tiny_model):
    """bf16 forwards with fp32 weights (the GPU setting, forced here on the CPU): 20 AdamW steps
    at lr 1e-6 move the weights as the fp32 run does, while the same steps applied in place to
    bf16 weights are mostly rounded away (half a bf16 ulp of a 0.02 weight is 6e-5)."""
    probe = local_engine(tiny_model)
    assert probe.autocast_dtype is None  # CPU default: plain fp32
    pid = probe.encode(PROMPT)
    responses = [s.token_ids for s in probe.generate(PROMPT, 4, 1.0, 1.0, 10, seed=2)]
    batch = TrainBatch.shared(pid, responses, [1.0, -1.0, 0.5, -0.5])

    def update(mode):
        engine = local_engine(tiny_model, lr=1e-6)
        if mode == "autocast":
            engine.autocast_dtype = torch.bfloat16
        elif mode == "bf16":
            engine.model.to(torch.bfloat16)
        start = [p.detach().float().clone() for p in engine.params]
        scored = engine.score([pid], [responses[0]])
        engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=20)
        if mode == "autocast":
            assert all(p.dtype == torch.float32 for p in engine.params)  # the masters
        change = torch.cat([(p.detach().float() - s).flatten()
                            for p, s in zip(engine.params, start)])
        return change, scored, torch.cat([p.grad.float().flatten() for p in engine.params])

    fp32, fp32_scored, fp32_grad = update("fp32")
    mixed, mixed_scored, mixed_grad = update("autocast")
    pure, _, _ = update("bf16")
    # the forwards, in scoring and in training, really ran in bf16
    assert not torch.equal(mixed_scored, fp32_scored) and not torch.equal(mixed_grad, fp32_grad)
    assert (mixed - fp32).norm() / fp32.norm() < 0.1
    assert pure.norm() < 0.5 * fp32.norm()
