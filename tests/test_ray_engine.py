"""The scale engine for real: Ray + vLLM (CPU) + DeepSpeed ZeRO-3 (CPU, gloo) on a tiny model.

Checks that it matches the local engine (samples' log-probs, GRPO steps, weights), that vLLM
holds the actor's weights after every update and the initial weights after a reset, that PPO
with a critic (gae) trains both and resets both, that the driver writes the local engine's
results format, and that a killed vLLM engine is a clear error that leaves results.jsonl ready
to resume.
"""
import json

import pytest

from helpers import (KL, LOGPROB_TOL, MISSING, PROMPT, WEIGHT_TOL, check_live_engine, max_gap,
                     ray_config, ray_engine)

pytestmark = [pytest.mark.scale, pytest.mark.skipif(
    bool(MISSING), reason=f"scale stack not installed ({', '.join(MISSING)}): "
                          "bash scripts/setup.sh --scale")]


@pytest.fixture(scope="class")
def engines(ray_cpu, tiny_vllm_model):
    """A 2-rank ZeRO-3 engine (micro-batches of 2, so ranks run dummy rows too) with the reference
    model on its own bundle, and the local engine on the same model; energy voting, so the engine
    also fills logsumexp; weights reach vLLM through the object store (the broadcast path has
    its own test below). (The driver runs below use the default in-actor reference.)"""
    from helpers import local_engine

    cfg = ray_config(tiny_vllm_model, actor_num_gpus=2, micro_batch_size=2,
                     voting_function="energy", separate_ref_gpu=True, weight_sync="object_store",
                     gradient_checkpointing=True)
    eng = ray_engine(cfg, tiny_vllm_model)
    local = local_engine(tiny_vllm_model, lr=cfg.lr, micro_batch_size=2)
    try:
        yield eng, local
    finally:
        eng.close()


class TestAgainstTheLocalEngine:
    """One engine shared by these tests, released before the driver tests start their own."""

    def test_samples_are_seeded_and_match_the_local_forward(self, engines):
        import torch

        from sttrl.engines.sequences import pad_batch, response_logprobs

        eng, local = engines
        a = eng.generate(PROMPT, 6, 1.0, 1.0, 10, seed=7)
        assert [s.token_ids for s in a] == [s.token_ids for s in eng.generate(PROMPT, 6, 1.0, 1.0, 10, 7)]
        assert [s.token_ids for s in a] != [s.token_ids for s in eng.generate(PROMPT, 6, 1.0, 1.0, 10, 8)]
        pid = eng.encode(PROMPT)
        ids, attn, pos, mask = pad_batch([pid] * 6, [s.token_ids for s in a],
                                         local.tokenizer.pad_token_id, "cpu")
        with torch.no_grad():
            lp, lse = response_logprobs(local.model, ids, attn, pos, mask.shape[1], True)
            logp = torch.log_softmax(local.model(input_ids=ids, attention_mask=attn,
                                                 position_ids=pos).logits.float(), -1)
        for i, s in enumerate(a):
            n = len(s.token_ids)
            assert len(s.logprobs) == len(s.logsumexp) == len(s.topk_logprob_mean) == n
            assert s.finished == (s.token_ids[-1] in eng.stop_ids)
            assert s.text == local.tokenizer.decode(s.token_ids, skip_special_tokens=True)
            assert max_gap(s.logprobs, lp[i, :n].tolist()) < LOGPROB_TOL
            assert max_gap(s.logsumexp, lse[i, :n].tolist()) < LOGPROB_TOL
            P = ids.shape[1] - mask.shape[1]  # the top-20 mean, from the logits before each token
            topk = logp[i, P - 1:P - 1 + n].topk(20, dim=-1).values.mean(-1)
            assert max_gap(s.topk_logprob_mean, topk.tolist()) < LOGPROB_TOL


    def test_groups_in_one_call_are_the_separate_calls(self, engines):
        """generate_groups: one vLLM request per group, each with its own seed and settings,
        gives each group the samples of a separate generate call."""
        from sttrl.types import SampleGroup

        eng, _ = engines
        groups = [SampleGroup(3, 0.6, 0.95, 4), SampleGroup(5, 1.0, 1.0, 9),
                  SampleGroup(1, 0.0, 1.0, 1)]  # vLLM refuses n > 1 when greedy
        together = eng.generate_groups(PROMPT, groups, 10)
        for g, got in zip(groups, together):
            alone = eng.generate(PROMPT, g.n, g.temperature, g.top_p, 10, g.seed)
            assert [s.token_ids for s in got] == [s.token_ids for s in alone], g
            assert all(len(s.logsumexp) == len(s.token_ids) for s in got)  # energy voting

    def test_training_matches_local_and_vllm_follows_the_actor(self, engines):
        """GRPO steps equal the local engine's; vLLM serves the trained weights, then the initial
        ones after a reset: the check against silently stale rollout weights."""
        from sttrl.algorithms.grpo import group_advantages, grpo_loss
        from sttrl.types import TrainBatch

        eng, local = engines
        pid = eng.encode(PROMPT)
        samples = eng.generate(PROMPT, 7, 1.0, 1.0, 10, seed=3)  # 7 rows: ranks get 4 and 3
        batch = TrainBatch.shared(pid, [s.token_ids for s in samples],
                                  group_advantages([1.0, 0, 1, 0, 0, 1, 1]))
        fixed = samples[0].token_ids + samples[1].token_ids
        initial = eng.score_on_engines(pid, fixed)[0]
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL

        first = eng.train(batch, grpo_loss, KL, steps=3)
        want = local.train(batch, grpo_loss, KL, steps=3)
        assert first[0]["clip_frac"] == 0.0  # the first step is on-policy
        for g, w in zip(first, want):
            assert g.keys() == w.keys()
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
        trained = eng.score_on_engines(pid, fixed)[0]
        assert max_gap(trained, initial) > 1e-2  # training moved vLLM's weights ...
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL  # ... to exactly the actor's

        # the weights have moved: the KL now needs the reference model (the initial weights)
        got = eng.train(batch, grpo_loss, {**KL, "kl_coef": 0.1}, steps=2)
        want = local.train(batch, grpo_loss, {**KL, "kl_coef": 0.1}, steps=2)
        assert got[0]["kl"] > 0
        for g, w in zip(got, want):
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
        weights, mine = eng.state_dict()["model"], local.model.state_dict()
        assert weights.keys() == mine.keys()
        assert max((weights[k] - mine[k]).abs().max().item() for k in mine) < WEIGHT_TOL
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL

        eng.reset()
        local.reset()
        after_reset = eng.score_on_engines(pid, fixed)[0]
        assert max_gap(after_reset, initial) < LOGPROB_TOL
        assert max_gap(after_reset, local.score([pid], [fixed])[0].tolist()) < LOGPROB_TOL
        restored, on_disk = eng.state_dict()["model"], local.model.state_dict()
        assert all(restored[k].equal(on_disk[k]) for k in on_disk)  # bit-exact initial weights
        # the optimizer was reset too (no Adam moments): the same steps give the same numbers
        again = eng.train(batch, grpo_loss, KL, steps=3)
        for g, w in zip(again, first):
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-9), k
        eng.reset()


    def test_a_step_past_the_trust_region_is_undone_and_measured_steps_match_local(self, engines):
        """The scale engine's measured update: a step past the budget is undone on every rank and
        in vLLM (the initial weights come back exactly); steps inside it log the local engine's
        KL numbers."""
        from sttrl.algorithms.grpo import group_advantages, grpo_loss
        from sttrl.types import TrainBatch, TrustRegion

        eng, local = engines
        eng.reset()
        local.reset()
        pid = eng.encode(PROMPT)
        samples = eng.generate(PROMPT, 6, 1.0, 1.0, 10, seed=11)
        batch = TrainBatch.shared(pid, [s.token_ids for s in samples[:5]],
                                  group_advantages([1.0, 0, 1, 0, 1]),
                                  probe=[samples[5].token_ids])
        fixed = samples[0].token_ids
        before, initial = eng.state_dict()["model"], eng.score_on_engines(pid, fixed)[0]
        tight = TrustRegion(max_step_kl=1e-12, max_kl=0.0, backtracks=1)
        history = eng.train(batch, grpo_loss, KL, steps=2, trust=tight)
        assert len(history) == 1 and history[0]["accepted"] is False
        assert history[0]["undone"] == 2  # the first try and its one retry
        after = eng.state_dict()["model"]
        assert all(after[k].equal(before[k]) for k in before)
        assert max_gap(eng.score_on_engines(pid, fixed)[0], initial) < LOGPROB_TOL
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL

        free = TrustRegion(max_step_kl=0.0, max_kl=0.0)
        got = eng.train(batch, grpo_loss, KL, steps=2, trust=free)
        want = local.train(batch, grpo_loss, KL, steps=2, trust=free)
        for g, w in zip(got, want):
            assert g["accepted"] and w["accepted"]
            for k in ("kl_step", "kl_ref", "loss", "lr"):
                assert g[k] == pytest.approx(w[k], rel=1e-3, abs=1e-6), k
        assert got[1]["kl_ref"] > 0
        eng.reset()
        local.reset()

    def test_continuous_operations_match_the_local_engine(self, engines):
        """Continuous mode between questions: reset_optimizer keeps every rank's weights and
        empties Adam (the next step equals the local engine's after its own reset_optimizer);
        pull_back on every rank's shard equals the local pull-back, rho 0 gives the initial
        weights bit for bit, and vLLM follows each."""
        from sttrl.algorithms.grpo import group_advantages, grpo_loss
        from sttrl.types import TrainBatch

        eng, local = engines
        pid = eng.encode(PROMPT)
        samples = eng.generate(PROMPT, 5, 1.0, 1.0, 10, seed=9)
        batch = TrainBatch.shared(pid, [s.token_ids for s in samples],
                                  group_advantages([1.0, 0, 1, 0, 1]))
        fixed = samples[0].token_ids
        initial = eng.state_dict()["model"]
        eng.train(batch, grpo_loss, KL, steps=2)
        local.train(batch, grpo_loss, KL, steps=2)
        eng.reset_optimizer()
        local.reset_optimizer()
        got = eng.train(batch, grpo_loss, KL, steps=1)
        want = local.train(batch, grpo_loss, KL, steps=1)
        for k in want[0]:
            assert got[0][k] == pytest.approx(want[0][k], rel=1e-4, abs=1e-6), k
        for rho in (0.5, 0.0):
            eng.pull_back(rho)
            local.pull_back(rho)
            weights, mine = eng.state_dict()["model"], local.model.state_dict()
            assert max((weights[k] - mine[k]).abs().max().item() for k in mine) < WEIGHT_TOL
            assert eng.check_weights(pid, fixed) < LOGPROB_TOL
        assert all(weights[k].equal(initial[k]) for k in initial)
        eng.reset()
        local.reset()

    def test_snapshots_and_checkpoints_round_trip(self, engines):
        from sttrl.algorithms.grpo import group_advantages, grpo_loss
        from sttrl.types import TrainBatch

        eng, _ = engines
        pid = eng.encode(PROMPT)
        samples = eng.generate(PROMPT, 4, 1.0, 1.0, 10, seed=5)
        batch = TrainBatch.shared(pid, [s.token_ids for s in samples], group_advantages([1.0, 0, 0, 1]))
        fixed = samples[0].token_ids
        eng.train(batch, grpo_loss, KL, steps=1)
        snap, saved = eng.snapshot(), eng.state_dict()
        at_snapshot = eng.score_on_engines(pid, fixed)[0]
        eng.train(batch, grpo_loss, KL, steps=2)
        assert max_gap(eng.score_on_engines(pid, fixed)[0], at_snapshot) > 1e-3
        eng.restore(snap)
        assert all(eng.state_dict()["model"][k].equal(saved["model"][k]) for k in saved["model"])
        assert max_gap(eng.score_on_engines(pid, fixed)[0], at_snapshot) < LOGPROB_TOL
        eng.reset()
        eng.load_state_dict(saved)  # what a resumed --continuous run does
        assert all(eng.state_dict()["model"][k].equal(saved["model"][k]) for k in saved["model"])
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL
        eng.reset()


    def test_snapshots_do_not_accumulate(self, engines):
        """Each snapshot is a full optimiser state on every rank: the ranks keep the initial one
        and only the newest other one, and a released snapshot cannot be restored."""
        from sttrl.algorithms.grpo import group_advantages, grpo_loss
        from sttrl.types import TrainBatch

        eng, _ = engines
        pid = eng.encode(PROMPT)
        samples = eng.generate(PROMPT, 4, 1.0, 1.0, 10, seed=5)
        batch = TrainBatch.shared(pid, [s.token_ids for s in samples], group_advantages([1.0, 0, 0, 1]))
        fixed = samples[0].token_ids
        first = eng.snapshot()
        for _ in range(3):
            eng.train(batch, grpo_loss, KL, steps=1)
            snap = eng.snapshot()
            at_snapshot = eng.score_on_engines(pid, fixed)[0]
            eng.train(batch, grpo_loss, KL, steps=1)
            eng.restore(snap)
            assert max_gap(eng.score_on_engines(pid, fixed)[0], at_snapshot) < LOGPROB_TOL
        held = eng._get([r.snapshot_keys.remote() for r in eng.ranks], "snapshot keys")
        assert held == [["initial", snap.key]] * len(eng.trainers)
        with pytest.raises(ValueError, match="released"):
            eng.restore(first)
        eng.reset()
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL

    def test_the_whole_engine_protocol(self, engines):
        """Every member of sttrl/engines/base.py's Engine, live (the engine contract's check,
        tests/test_engine_contract.py, on this class's engine); SLOT's hidden-state hooks
        refuse."""
        import inspect

        from sttrl.engines.ray.engine import RayEngine
        from sttrl.errors import UserError

        eng, _ = engines
        check_live_engine(eng)
        assert list(inspect.signature(RayEngine).parameters) == ["settings", "model_path"]
        assert eng.max_context == 512  # the tiny model's positions: less than 10 + 4096
        assert eng.sampling_memory(8, 100, 10) is None  # vLLM sizes its own cache
        assert eng.head_hook is None
        eng.set_head_hook(None)  # nothing to remove
        for call in (lambda: eng.prompt_hidden([1, 2]), lambda: eng.head_logits(None),
                     lambda: eng.set_head_hook(lambda h: h)):
            with pytest.raises(UserError, match="slot needs --engine local"):
                call()

    def test_an_over_long_prompt_is_refused_with_its_question_id(self, engines, tiny_vllm_model,
                                                                 tmp_path, monkeypatch):
        """run.py checks every prompt against the scale engine's max_context (vLLM's model
        length; here the tiny model's 512 positions) before anything is sampled or saved."""
        import sttrl.run as driver
        from sttrl.errors import UserError

        eng, _ = engines
        rows = [{"prompt": "What is 1 + 1?", "answer": "2", "source": "toy", "id": "short"},
                {"prompt": "1 + " * 150 + "1", "answer": "151", "source": "toy", "id": "long"}]
        (tmp_path / "q.json").write_text(json.dumps(rows))
        monkeypatch.setattr(driver, "build_engine", lambda *args: eng)
        monkeypatch.setattr(eng, "close", lambda: None)
        out = tmp_path / "out"
        with pytest.raises(UserError, match="question 'long'.*--max_new_tokens 10.*context of 512"):
            driver.run(ray_config(tiny_vllm_model, data_path=str(tmp_path / "q.json"),
                                  output_dir=str(out)))
        assert not (out / "results.jsonl").exists() and not (out / "config.json").exists()

    def test_every_wait_has_a_timeout(self, engines, ray_cpu):
        from sttrl.errors import EngineError

        eng, _ = engines

        @ray_cpu.remote(num_cpus=0)
        def hang():
            import time
            time.sleep(60)

        saved, eng.timeout = eng.timeout, 1.0
        try:
            with pytest.raises(EngineError, match="did not finish within --sync_timeout 1 s"):
                eng._get([hang.remote()], "weight sync")
        finally:
            eng.timeout = saved


def test_broadcast_sync_follows_the_actor_and_a_killed_engine_is_a_clear_error(ray_cpu,
                                                                              tiny_vllm_model):
    """--weight_sync broadcast (a gloo group from actor rank 0 to the engine; nccl on GPUs is the
    same code): vLLM serves the trained weights, then the initial ones after a reset. Then the
    engine dies with the group open: the next sync is a one-line error naming it, well within
    the timeout, and the other actor rank's gathers completed (the ranks still answer)."""
    import time

    from sttrl.algorithms.grpo import group_advantages, grpo_loss
    from sttrl.types import TrainBatch
    from sttrl.errors import EngineError

    cfg = ray_config(tiny_vllm_model, actor_num_gpus=2, weight_sync="broadcast")
    eng = ray_engine(cfg, tiny_vllm_model)
    try:
        pid = eng.encode(PROMPT)
        samples = eng.generate(PROMPT, 4, 1.0, 1.0, 10, seed=3)
        batch = TrainBatch.shared(pid, [s.token_ids for s in samples],
                                  group_advantages([1.0, 0, 0, 1]))
        fixed = samples[0].token_ids + samples[1].token_ids
        initial = eng.score_on_engines(pid, fixed)[0]
        eng.train(batch, grpo_loss, KL, steps=2)
        assert max_gap(eng.score_on_engines(pid, fixed)[0], initial) > 1e-2  # vLLM moved ...
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL  # ... to exactly the actor's weights
        eng.reset()
        assert max_gap(eng.score_on_engines(pid, fixed)[0], initial) < LOGPROB_TOL

        ray_cpu.kill(eng.rollouts[0])
        start = time.monotonic()
        with pytest.raises(EngineError, match=r"^weight sync to the vLLM engines failed: "
                                              r"vLLM engine 0 died$"):
            eng.train(batch, grpo_loss, KL, steps=1)
        assert time.monotonic() - start < 60  # the timeout is 300 s: no waiting on it
        eng.timeout = 60  # the actor ranks are free again: rank 0 kept gathering
        assert eng.state_dict()["world_size"] == 2
    finally:
        eng.close()


def test_reference_actor_on_its_own(tiny_vllm_model):
    """The actor --separate_ref_gpu adds, called directly (no Ray needed)."""
    from helpers import local_engine, run_parts
    from sttrl.engines.ray.common import ActorSettings
    from sttrl.engines.ray.trainer import ReferenceActor

    local = local_engine(tiny_vllm_model)
    settings = ActorSettings.derive(run_parts(engine="ray", micro_batch_size=2).engine,
                                    tiny_vllm_model, local.tokenizer.pad_token_id)
    pid = local.encode(PROMPT)
    responses = [s.token_ids for s in local.generate(PROMPT, 3, 1.0, 1.0, 8, seed=1)]
    ref = ReferenceActor(0, settings).score([pid] * 3, responses)  # [3, T]
    assert (ref - local.score([pid] * 3, responses)).abs().max() < 1e-5


# ---- PPO with a critic (--advantage_estimator gae) -------------------------------------------

GAE_FLAGS = dict(advantage_estimator="gae", actor_num_gpus=2, micro_batch_size=2, critic_lr=3e-3)


@pytest.fixture(scope="class")
def gae_engine(ray_cpu, tiny_vllm_model):
    """2 actor ranks and 2 critic ranks (micro-batches of 2: both groups run dummy rows), and
    the critic's initial full weights."""
    eng = ray_engine(ray_config(tiny_vllm_model, **GAE_FLAGS), tiny_vllm_model)
    try:
        yield eng, critic_weights(eng)
    finally:
        eng.close()


def critic_weights(eng) -> dict:
    return eng._get([c.full_weights.remote() for c in eng.actors.critics], "critic weights")[0]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def value_error(eng, batch, values) -> float:
    """Token mean of (V - R)^2, with R the returns GAE makes from these values."""
    from sttrl.algorithms.gae import gae, token_rewards
    from sttrl.engines.sequences import pad_batch

    mask = pad_batch(batch.prompts, batch.responses, 0, "cpu")[3]
    _, returns = gae(token_rewards(batch.rewards, mask), values, mask)
    return float((((values - returns) * mask) ** 2).sum() / mask.sum())


class TestPPOWithACritic:
    def batch(self, eng):
        from sttrl.types import TrainBatch

        samples = eng.generate(PROMPT, 7, 1.0, 1.0, 10, seed=3)  # 7 rows: ranks get 4 and 3
        # advantages are GRPO's; with gae the engine must ignore them (zeros would train nothing)
        return TrainBatch.shared(eng.encode(PROMPT), [s.token_ids for s in samples], [0.0] * 7,
                                 rewards=[1.0, 0, 1, 0, 0, 1, 1])

    def test_policy_and_critic_train_and_vllm_follows(self, gae_engine):
        from sttrl.algorithms.grpo import grpo_loss

        eng, _ = gae_engine
        batch = self.batch(eng)
        pid, fixed = batch.prompts[0], batch.responses[0] + batch.responses[1]
        initial = eng.score_on_engines(pid, fixed)[0]
        v0 = eng.critic_values(batch.prompts, batch.responses)  # [B, T]
        assert v0.abs().max() == 0  # the zero head

        first = eng.train(batch, grpo_loss, KL, steps=2)
        assert len(first) == 2
        for step in first:
            assert {"loss", "clip_frac", "kl", "grad_norm", "value_loss", "value_clip_frac",
                    "value_mean", "critic_grad_norm"} <= step.keys()
        assert first[0]["clip_frac"] == first[0]["value_clip_frac"] == 0  # on-policy first step
        # V = 0 at first, so the first value loss is 0.5 (token mean of R^2): the returns
        # reached the critic ranks, row by row
        want = 0.5 * value_error(eng, batch, v0)
        assert first[0]["value_loss"] == pytest.approx(want, rel=1e-5)
        assert first[1]["value_mean"] != 0  # the critic's first step moved the values
        assert max_gap(eng.score_on_engines(pid, fixed)[0], initial) > 1e-2  # the policy moved
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL  # and vLLM serves it

        for _ in range(2):
            eng.train(batch, grpo_loss, KL, steps=2)
        v1 = eng.critic_values(batch.prompts, batch.responses)
        assert value_error(eng, batch, v1) < 0.6 * value_error(eng, batch, v0)  # measured 0.4
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL

        # reset: the critic's initial weights bit for bit, and its optimizer state: the same
        # first update gives the same numbers again
        eng.reset()
        assert same_weights(critic_weights(eng), gae_engine[1])
        assert max_gap(eng.score_on_engines(pid, fixed)[0], initial) < LOGPROB_TOL
        again = eng.train(batch, grpo_loss, KL, steps=2)
        for g, w in zip(again, first):
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-9), k
        eng.reset()

    def test_snapshots_and_checkpoints_include_the_critic(self, gae_engine):
        from sttrl.algorithms.grpo import grpo_loss

        eng, initial = gae_engine
        batch = self.batch(eng)
        eng.train(batch, grpo_loss, KL, steps=1)
        snap, saved, at_snapshot = eng.snapshot(), eng.state_dict(), critic_weights(eng)
        assert not same_weights(at_snapshot, initial)
        assert len(saved["critic_optimizer"]) == 2  # one per critic rank
        eng.train(batch, grpo_loss, KL, steps=1)
        assert not same_weights(critic_weights(eng), at_snapshot)
        eng.restore(snap)
        assert same_weights(critic_weights(eng), at_snapshot)
        held = eng._get([r.snapshot_keys.remote() for r in eng.ranks], "snapshot keys")
        assert held == [["initial", snap.key]] * 4  # 2 actor and 2 critic ranks
        eng.reset()
        eng.load_state_dict(saved)  # a resumed --continuous run
        assert same_weights(critic_weights(eng), at_snapshot)
        eng.reset()

    @pytest.mark.parametrize("kw", [dict(continuous=True), dict(mode="dataset", eval_every=1)])
    def test_driver_runs_with_gae(self, gae_engine, ray_cpu, tiny_vllm_model, tmp_path,
                                  monkeypatch, kw):
        """The driver on this class's engine (a second engine would cost a minute of start-up):
        continuous mode checkpoints the critic, the dataset-level mode trains it too."""
        from helpers import lines, write_questions

        import sttrl.run as driver

        eng, _ = gae_engine
        monkeypatch.setattr(driver, "build_engine", lambda *args: eng)
        monkeypatch.setattr(eng, "close", lambda: None)
        data = write_questions(tmp_path / "q.json", n=4)
        cfg = ray_config(tiny_vllm_model, data_path=data, output_dir=str(tmp_path / "out"),
                         steps_per_question=2, prompts_per_step=4, **GAE_FLAGS, **kw)
        summary = driver.run(cfg)
        assert summary["questions"] == 4 and summary["config"]["advantage_estimator"] == "gae"
        if cfg.mode == "dataset":
            steps = [json.loads(x) for x in
                     (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
            assert steps[0]["groups_with_signal"] > 0
            assert all(u["value_loss"] > 0 for u in steps[0]["updates"])
            assert len(steps[0]["updates"]) == 4  # --mini_batch_prompts 1: a step per prompt
        else:
            records = lines(tmp_path / "out")
            assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
            trained = [r for r in records if r["train"]]
            assert trained and all("value_loss" in s for r in trained for s in r["train"])
            assert (tmp_path / "out" / "checkpoint.pt").exists()
        eng.reset()


# ---- the per-question driver with --engine ray ----------------------------------------------

def shape(value):
    """The structure of a results line: keys and value types, recursively (numbers are one type)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else \
        type(value).__name__


@pytest.fixture(scope="module")
def ray_run(ray_cpu, tiny_vllm_model, tmp_path_factory):
    """An uninterrupted 4-question driver run on the scale engine (continuous: from the second
    question on, the KL needs the reference, here the ZeRO-3 copy inside the actor ranks)."""
    from helpers import write_questions

    from sttrl.run import run

    tmp = tmp_path_factory.mktemp("ray_run")
    data = write_questions(tmp / "q.json", n=4)
    run(ray_config(tiny_vllm_model, data_path=data, output_dir=str(tmp / "ray"),
                   steps_per_question=2, continuous=True))
    return tmp, data


def test_driver_writes_the_local_engines_format(ray_run, tiny_vllm_model):
    from helpers import lines

    from sttrl.run import run

    tmp, data = ray_run
    run(ray_config(tiny_vllm_model, data_path=data, output_dir=str(tmp / "local"),
                   steps_per_question=2, continuous=True, engine="local", device="cpu"))
    ray_lines, local_lines = lines(tmp / "ray"), lines(tmp / "local")
    assert [r["id"] for r in ray_lines] == [r["id"] for r in local_lines] == ["q0", "q1", "q2", "q3"]
    assert any(not r["skipped"] for r in ray_lines)  # some questions trained
    for r in ray_lines:
        assert r.keys() == local_lines[0].keys()
        # continuous: "carry" is the time between questions (guard, pull-back, optimiser)
        phases = {"generate", "vote", "eval", "carry", "total"} | ({"train"} if r["train"] else set())
        assert set(r["seconds"]) == phases
        if r["train"]:
            trained = next(x for x in local_lines if x["train"])
            assert shape(r["train"]) == shape(trained["train"])
            assert len(r["train"]) == 2
        assert shape(r["vote"])["n_voting"] == "number"
    summaries = [json.loads((tmp / d / "summary.json").read_text()) for d in ("ray", "local")]
    assert summaries[0].keys() == summaries[1].keys()
    assert summaries[0]["config"]["engine"] == "ray" and summaries[0]["questions"] == 4


def test_a_killed_vllm_engine_is_a_clear_error_and_the_run_resumes(ray_run, tiny_vllm_model,
                                                                    ray_cpu, monkeypatch):
    from helpers import lines, without_timings

    import sttrl.run as driver
    from sttrl.errors import EngineError

    tmp, data = ray_run
    cfg = ray_config(tiny_vllm_model, data_path=data, output_dir=str(tmp / "killed"),
                     steps_per_question=2, continuous=True)
    build, calls = driver.build_engine, []

    def build_and_arm(*args):
        engine = build(*args)
        generate_groups = engine.generate_groups

        def generate_or_kill(prompt, groups, *args, **kwargs):
            # question 3's first sampling (its before-evaluation and votes, the one call with
            # two groups; `generate` comes here with one): two questions are done
            calls.append(len(groups) == 2)
            if sum(calls) == 3 and calls[-1]:
                ray_cpu.kill(engine.rollouts[0])
            return generate_groups(prompt, groups, *args, **kwargs)

        engine.generate_groups = generate_or_kill
        return engine

    monkeypatch.setattr(driver, "build_engine", build_and_arm)
    with pytest.raises(EngineError, match="vLLM engine 0 died"):
        driver.run(cfg)
    partial = lines(tmp / "killed")
    assert [r["id"] for r in partial] == ["q0", "q1"]
    assert (tmp / "killed" / "checkpoint.pt").exists()
    monkeypatch.undo()
    driver.run(cfg)  # resume: a fresh engine loads the checkpoint and does the last two
    got = lines(tmp / "killed")
    assert [r["id"] for r in got] == ["q0", "q1", "q2", "q3"]
    assert without_timings(got[:2]) == without_timings(partial)
    assert without_timings(got) == without_timings(lines(tmp / "ray"))


@pytest.mark.slow
def test_smollm2_end_to_end_on_both_engines(ray_cpu, tmp_path):
    """The embedded SmolLM2 on 2 ARITH-TTT questions: the scale engine writes what the local
    engine writes, line for line in structure, with the same pseudo-label machinery."""
    from helpers import lines

    from sttrl.run import run

    flags = dict(num_questions=2, n_votes=8, n_train=4, n_eval=4, max_new_tokens=32, lr=1e-5,
                 steps_per_question=3, min_majority_ratio=0.0, min_vote_margin=0.0,
                 stop_agreement=0.0, max_step_kl=0.0, max_kl=0.0,
                 sync_timeout=600, device="cpu")
    summaries = {}
    for engine in ("ray", "local"):
        summaries[engine] = run(ray_config("SmolLM2-135M-Instruct", engine=engine,
                                           output_dir=str(tmp_path / engine), **flags))
    ray_lines, local_lines = lines(tmp_path / "ray"), lines(tmp_path / "local")
    assert [r["id"] for r in ray_lines] == [r["id"] for r in local_lines] == \
        ["arith-L1-0000", "arith-L1-0001"]
    for r, l in zip(ray_lines, local_lines):
        assert r.keys() == l.keys()
        assert r["vote"].keys() == l["vote"].keys()
        assert len(r["answers_after"]) == len(l["answers_after"]) == 4
        assert r["skipped"] or len(r["train"]) == 3
    assert summaries["ray"].keys() == summaries["local"].keys()
    assert summaries["ray"]["config"]["engine"] == "ray" and summaries["ray"]["questions"] == 2


@pytest.mark.parametrize("kw", [dict(adaptation_method="ttft"), dict(adaptation_method="memo"),
                                dict(mode="dataset", prompts_per_step=2, eval_every=1)])
def test_weight_updating_methods_run_on_the_scale_engine(ray_cpu, tiny_vllm_model, tmp_path, kw):
    from helpers import write_questions

    from sttrl.run import run

    data = write_questions(tmp_path / "q.json", n=2)
    summary = run(ray_config(tiny_vllm_model, data_path=data, output_dir=str(tmp_path / "out"),
                             steps_per_question=1, **kw))
    assert summary["questions"] == 2
    assert summary["config"]["engine"] == "ray"
