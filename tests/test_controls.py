"""The controls: --reward oracle (the ground truth, TTRL's upper bound) and --reward random
(the null), the weak-vote rule and the adaptive update budget."""
import ast
import json
from pathlib import Path

import pytest
import torch

from helpers import lines, run_parts, tiny_config, write_questions
from sttrl.config import Config, validate
from sttrl.errors import UserError
from sttrl.rewards import random_rewards
from sttrl.rewards.oracle import OracleReward
from sttrl.run import run

PACKAGE = Path(__file__).resolve().parents[1] / "sttrl"


def test_random_rewards_have_the_votes_rate_and_are_reproducible():
    like = [1.0] * 300 + [0.0] * 700
    draws = random_rewards(like, seed=5)
    assert draws == random_rewards(like, seed=5) and draws != random_rewards(like, seed=6)
    assert abs(sum(draws) / len(draws) - 0.3) < 0.05
    window = like[297:307]  # 3 positives of 10
    subsets = {tuple(random_rewards(window, seed=s, exact=True)) for s in range(20)}
    assert all(sum(x) == 3 for x in subsets) and len(subsets) > 1
    assert random_rewards([0.0] * 8, seed=2) == [0.0] * 8
    assert random_rewards([], seed=2) == []


def test_oracle_rewards_are_the_true_correctness():
    oracle = OracleReward("5")
    assert oracle(["5", "5.0", "9 - 4", None, "6", "\\boxed{5}"][:5]) == [1, 1, 0, 0, 0]


def test_an_oracle_run_trains_on_correctness_and_is_marked(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json")
    summary = run(tiny_config(tiny_model, data, tmp_path / "o", reward="oracle"))
    recs = lines(tmp_path / "o")
    assert all(r["reward"] == "oracle" for r in recs)
    # the rewards are the reference's own grading: reward accuracy is exactly 1
    assert all(r["reward_accuracy"] == 1.0 for r in recs)
    assert summary["reward"] == "oracle" and summary["config"]["reward"] == "oracle"
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert saved["reward"] == "oracle"


def test_only_the_oracle_path_reads_the_references(tiny_model, tmp_path):
    """Scrambled references leave a vote run's training bit-identical (test_driver checks the
    weights) and its random-reward run too; they change an oracle run's training."""
    data = write_questions(tmp_path / "q.json")
    rows = json.loads(Path(data).read_text())
    for row in rows:
        row["answer"] = str(int(row["answer"]) + 3)
    scrambled = tmp_path / "scrambled.json"
    scrambled.write_text(json.dumps(rows))
    for reward, same in (("vote", True), ("random", True), ("oracle", False)):
        a = lines(tmp_path / reward) if (tmp_path / reward).exists() else None
        run(tiny_config(tiny_model, data, tmp_path / reward, reward=reward))
        run(tiny_config(tiny_model, str(scrambled), tmp_path / f"{reward}_s", reward=reward))
        a, b = lines(tmp_path / reward), lines(tmp_path / f"{reward}_s")
        trained = [(r["rewards"], r["train"], r["answers_after"]) for r in a]
        assert (trained == [(r["rewards"], r["train"], r["answers_after"]) for r in b]) is same, reward


def test_no_module_but_the_modes_reads_a_reference_answer():
    """Structurally: `.answer` (an Example's reference) is read only where the modes evaluate
    (modes/evaluate.py) and where the oracle is built (rewards/oracle.py), and where run.py
    hashes the data; the data layer makes Examples. The modes' loops never read it."""
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "answer":
                readers.add(str(path.relative_to(PACKAGE)))
    # run.py hashes the questions (answers included) to notice an edited data file on resume
    assert readers <= {"modes/evaluate.py", "rewards/oracle.py", "data/datasets.py",
                       "data/prepare.py", "run.py"}, readers


@pytest.mark.parametrize("kw,message", [
    (dict(reward="gold"), "--reward must be one of vote, oracle, random"),
    (dict(reward="oracle", adaptation_method="memo"), "--reward oracle applies to"),
    (dict(min_majority_ratio=1.5), "--min_majority_ratio must be from 0 to 1"),
    (dict(stop_clip_frac=-0.1), "--stop_clip_frac must be >= 0"),
    (dict(answer_form="loose"), "--answer_form must be one of strict, symbolic"),
])
def test_bad_control_flags_are_one_line(kw, message):
    with pytest.raises(UserError, match=message):
        validate(Config(**kw))


def test_the_weak_vote_rule_skips_weak_votes(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json")
    run(tiny_config(tiny_model, data, tmp_path / "all"))
    run(tiny_config(tiny_model, data, tmp_path / "weak", min_majority_ratio=0.99))
    base, weak = lines(tmp_path / "all"), lines(tmp_path / "weak")
    for a, b in zip(base, weak):
        if a["vote"]["majority_ratio"] < 0.99 and a["pseudo_label"] is not None:
            assert b["skipped"] and b["skip_reason"].startswith("weak vote") and b["train"] == []
            assert b["pass@1_after"] == b["pass@1_before"]  # untouched model, same eval seed
    assert any(b["skip_reason"] and b["skip_reason"].startswith("weak vote") for b in weak)


def test_the_adaptive_budget_stops_after_the_step_that_passes_it(tiny_model):
    from helpers import local_engine
    from sttrl.algorithms.grpo import grpo_loss
    from sttrl.algorithms.ttrl import budget
    from sttrl.types import TrainBatch

    engine = local_engine(tiny_model, lr=5e-2)
    ids = engine.encode("<|user|>What is 1 + 1?<|end|><|assistant|>")
    samples = engine.generate("<|user|>What is 1 + 1?<|end|><|assistant|>", 6, 1.0, 1.0, 8, 3)
    batch = TrainBatch.shared(ids, [s.token_ids for s in samples], [1, -1, 1, -1, 1, -1])
    full = engine.train(batch, grpo_loss, {"clip_eps": 0.2}, 6)
    engine.reset()
    update = run_parts(stop_clip_frac=0.0, stop_agreement=0.0).update  # any clipped token ends it
    got = engine.train(batch, grpo_loss, {"clip_eps": 0.2}, 6, stop=budget(update))
    first_clipped = next(i for i, s in enumerate(full) if s["clip_frac"] > 0)
    assert len(got) == first_clipped + 1 < 6
    assert [s["loss"] for s in got] == pytest.approx([s["loss"] for s in full[:len(got)]])
    assert budget(run_parts(stop_agreement=0.0).update) is None
    after = [p.detach().clone() for p in engine.params]
    engine.reset()
    assert not all(torch.equal(a, p) for a, p in zip(after, engine.params))


def test_dataset_mode_takes_the_oracle_and_is_marked(tiny_model, tmp_path):
    from sttrl.reporting.report import load_run

    data = write_questions(tmp_path / "q.json")
    summary = run(tiny_config(tiny_model, data, tmp_path / "d", reward="oracle", mode="dataset",
                              prompts_per_step=2, eval_every=1))
    assert summary["reward"] == "oracle"
    assert load_run(str(tmp_path / "d")).row == "TTRL (oracle reward)"


def test_the_agreement_budget_estimates_the_policy_and_stops_at_its_target(tiny_model):
    from helpers import local_engine
    from sttrl.algorithms.grpo import agreement_estimate, group_advantages, grpo_loss
    from sttrl.algorithms.ttrl import budget
    from sttrl.types import TrainBatch

    engine = local_engine(tiny_model, lr=5e-2)
    prompt = "<|user|>What is 1 + 1?<|end|><|assistant|>"
    samples = engine.generate(prompt, 8, 1.0, 1.0, 8, 3)
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    batch = TrainBatch.shared(engine.encode(prompt), [s.token_ids for s in samples],
                              group_advantages(rewards))
    kwargs = {"clip_eps": 0.2, "agreement": True}
    full = engine.train(batch, grpo_loss, kwargs, 6)
    estimates = [agreement_estimate(s) for s in full]
    assert estimates[0] == pytest.approx(3 / 8)  # before any update: the agreeing share
    assert estimates[-1] > estimates[0] + 0.2  # rewarded responses gained probability
    target = (estimates[0] + estimates[-1]) / 2
    engine.reset()
    stop = budget(run_parts(stop_agreement=target).update)
    got = engine.train(batch, grpo_loss, kwargs, 6, stop=stop)
    reached = next(i for i, e in enumerate(estimates) if e >= target)
    assert len(got) == reached + 1 < 6
    # without the flag the loss adds nothing, so the recorded stats stay as they were
    engine.reset()
    plain = engine.train(batch, grpo_loss, {"clip_eps": 0.2}, 1)
    assert "agree_w" not in plain[0] and agreement_estimate(plain[0]) is None


@pytest.mark.parametrize("kw,message", [
    (dict(stop_agreement=-0.1), "--stop_agreement must be from 0"),
    (dict(stop_agreement=1.5), "--stop_agreement must be from 0"),
    (dict(stop_agreement=0.9, advantage_estimator="gae", engine="ray"), "--stop_agreement needs"),
])
def test_bad_agreement_budget_is_one_line(kw, message):
    with pytest.raises(UserError, match=message):
        validate(Config(**kw))


def test_the_cpu_study_defaults_apply_to_reset_mode_ttrl_on_a_cpu_only():
    from sttrl.algorithms import TTRL_CPU_RESET
    from sttrl.algorithms.ttrl import budget
    from sttrl.config import resolve
    from sttrl.parts import parts

    def picked(cfg):
        return {k: getattr(cfg, k) for k in TTRL_CPU_RESET}

    assert picked(resolve(Config(), on_gpu=False)) == TTRL_CPU_RESET
    general = {"lr": 1e-5, "steps_per_question": 3, "stop_agreement": 0.0, "min_vote_margin": 0.0}
    assert picked(resolve(Config(), on_gpu=True)) == general
    assert picked(resolve(Config(continuous=True), on_gpu=False)) == general
    gae = resolve(Config(advantage_estimator="gae", engine="ray"), on_gpu=False)
    assert picked(gae) == general  # the study measured GRPO
    ttft = resolve(Config(adaptation_method="ttft"), on_gpu=False)
    assert (ttft.min_vote_margin, ttft.stop_agreement) == (0.0, 0.0)
    # the trust region is stated in KL, so it applies on every device, in question mode with GRPO
    for cfg in (resolve(Config(), on_gpu=True), resolve(Config(continuous=True), on_gpu=False)):
        assert (cfg.max_step_kl, cfg.max_kl) == (0.05, 0.2)
    for cfg in (gae, ttft, resolve(Config(mode="dataset"), on_gpu=False)):
        assert (cfg.max_step_kl, cfg.max_kl) == (0.0, 0.0)
    # a flag wins over the study, and 0 turns a rule off
    own = resolve(Config(lr=1e-6, stop_agreement=0.0, min_vote_margin=0.0), on_gpu=False)
    assert (own.lr, own.stop_agreement, own.min_vote_margin, own.steps_per_question) == \
        (1e-6, 0.0, 0.0, TTRL_CPU_RESET["steps_per_question"])
    assert budget(parts(own).update) is None
    # resolving a resolved config changes nothing (a saved config.json compares equal on resume)
    cpu = resolve(Config(), on_gpu=False)
    assert resolve(cpu, on_gpu=False) == cpu
