"""Dataset-level TTRL against TTRL's verl recipe (PRIME-RL/TTRL, verl/): each test computes what
the reference does on a tiny case by its own route and checks ours against it."""
import json
import math

import pytest
import torch

from sttrl.algorithms.grpo import grpo_loss, kl_k3
from sttrl.modes.schedule import balanced_parts, lr_at, mini_batch_rows, rollout_batches
from helpers import local_engine, run_parts, write_questions

PROMPT = "<|user|>What is 2 + 3? Give the answer.<|end|><|assistant|>"


# ---- item 1: the lr schedule ---------------------------------------------------------------------

def verl_lrs(questions: int, batch: int, episodes: int, peak: float, ratio: float) -> list[float]:
    """The lr each rollout batch trains at, as verl runs it: a torch LambdaLR built like
    verl.utils.torch_functional.get_cosine_schedule_with_warmup (warm-up steps
    int(ratio x total), total = len(drop_last loader) x epochs), stepped once per
    update_actor call (fsdp_workers.py), read before the step."""
    total = (questions // batch) * episodes
    warm = int(ratio * total)

    def lam(step):
        if step < warm:
            return step / max(1, warm)
        progress = (step - warm) / max(1, total - warm)
        return max(0.0, math.cos(math.pi * 0.5 * 2.0 * progress) * 0.5 + 0.5)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])  # every optimiser step of this batch
        opt.step()
        sched.step()
    return used


@pytest.mark.parametrize("questions,batch,episodes,ratio", [
    (30, 8, 80, 0.03),  # AIME-TTT under TTRL's aime.sh: 3 full batches (6 questions dropped)
    (16, 8, 2, 0.03),  # warm-up of int(0.12) = 0 batches: the first batch at the peak
    (40, 8, 10, 0.1),  # 50 batches, 5 of warm-up
])
def test_lr_per_rollout_batch_is_verls(questions, batch, episodes, ratio):
    want = verl_lrs(questions, batch, episodes, 5e-7, ratio)
    total = rollout_batches(questions, batch) * episodes
    got = [lr_at(b, total, 5e-7, ratio) for b in range(total)]
    assert got == pytest.approx(want, abs=1e-18)
    if int(ratio * total) > 0:
        assert got[0] == 0.0  # the first batch runs at lr 0 under warm-up


def test_a_rollout_batchs_steps_share_its_lr_and_the_partial_batch_is_dropped(tiny_model,
                                                                            tmp_path):
    from helpers import tiny_config
    from sttrl.run import run

    data = write_questions(tmp_path / "q.json", n=5)
    out = tmp_path / "out"
    summary = run(tiny_config(tiny_model, data, out, mode="dataset", episodes=2,
                              prompts_per_step=2, eval_every=2, n_train=4, balance_ranks=2,
                              lr=1e-3, warmup_ratio=0.3))
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    # 5 questions in batches of 2: 2 full batches an episode, the fifth question left out
    assert summary["steps"] == len(steps) == 4 and summary["optimizer_steps"] == 8
    want = verl_lrs(5, 2, 2, 1e-3, 0.3)
    for s, lr in zip(steps, want):
        assert [u["lr"] for u in s["updates"]] == pytest.approx([lr, lr])
    assert steps[0]["updates"][0]["lr"] == 0.0


# ---- item 2: mini-batch contents -----------------------------------------------------------------

def test_balanced_parts_are_karmarkar_karps_equal_size_partition():
    """Worked by hand, as verl's seqlen_balancing.karmarkar_karp(equal_size=True) goes: rows
    sorted by length, taken k at a time as k one-row parts; the two states whose parts differ
    most (ties: the heavier heaviest part) merge, heaviest part with lightest, until one is
    left; each part's rows then sorted."""
    tokens = [5, 1, 3, 2, 8, 4, 7, 6]
    # states {3|1} {5|2} {7|0} {4|6} (row ids), spread 1 each; {4|6}+{7|0} -> {6,7|4,0};
    # {5|2}+{3|1} -> {5,1|2,3}; then {6,7|4,0}+{5,1|2,3} -> {6,7,2,3|4,0,5,1}
    assert balanced_parts(tokens, 2) == [[2, 3, 6, 7], [0, 1, 4, 5]]
    assert [sum(tokens[i] for i in p) for p in balanced_parts(tokens, 2)] == [18, 18]
    # step k takes the k-th slice of each rank's part: the steps mix questions
    assert mini_batch_rows(tokens, 2, 2) == [[2, 3, 0, 1], [6, 7, 4, 5]]
    assert mini_batch_rows(tokens, 1, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # one rank: in order


def test_a_dataset_step_mixes_questions_across_ranks(tiny_model, tmp_path):
    from helpers import tiny_config
    from sttrl.run import run

    data = write_questions(tmp_path / "q.json", n=4)
    out = tmp_path / "out"
    run(tiny_config(tiny_model, data, out, mode="dataset", prompts_per_step=4, eval_every=1,
                    n_train=4, balance_ranks=4, lr=1e-4))
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps[0]["updates"]) == 4  # one step per question's worth of samples
    assert max(u["questions"] for u in steps[0]["updates"]) > 1


# ---- item 3: zero-variance groups ----------------------------------------------------------------

def test_a_zero_variance_group_is_trained_diluting_the_token_mean_and_carrying_the_kl(
        tiny_model, monkeypatch):
    """Question 0's rewards differ, question 1's are all 1: both groups are in the batch, the
    second with zero advantages. Step 0 (question 0's rows and, balanced in, question 1's) is a
    token mean over every row's tokens; the step over only zero-advantage rows still takes
    place, its loss the KL term alone."""
    import sttrl.modes.dataset as dataset
    from sttrl.types import Question

    rewards = iter([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # question 0's, question 1's
    monkeypatch.setattr(dataset, "train_rewards", lambda *a, **k: next(rewards))
    parts = run_parts(model=tiny_model, mode="dataset", n_votes=4, n_train=4, max_new_tokens=6,
                      temperature=1.0, prompts_per_step=2, balance_ranks=1, kl_coef=0.05,
                      lr=5e-2)
    engine = local_engine(tiny_model, lr=5e-2)
    seen = {}
    real = engine.train

    def spy(batch, loss_fn, kwargs, **kw):
        seen["batch"], seen["mini_batches"] = batch, kw["mini_batches"]
        return real(batch, loss_fn, kwargs, **kw)

    engine.train = spy
    qs = [Question(f"q{i}", f"What is {i} + 1?", "toy", "math") for i in range(2)]
    prompts = [f"<|user|>What is {i} + 1?<|end|><|assistant|>" for i in range(2)]
    stats = dataset.train_step(engine, qs, prompts, parts, step_seed=11, lr=5e-2)
    batch = seen["batch"]
    assert len(batch.responses) == 8 and batch.advantages[4:] == [0.0] * 4
    assert stats["groups_with_signal"] == 1 and len(stats["updates"]) == 2
    # step 0, on-policy (ratio 1, and KL 0 to the untouched reference): sum(-A x tokens) over
    # question 0's rows divided by the tokens of its rows only (balance_ranks 1: in order)
    rows = seen["mini_batches"][0]
    lens = [len(batch.responses[r]) for r in rows]
    want = sum(-batch.advantages[r] * n for r, n in zip(rows, lens)) / sum(lens)
    assert stats["updates"][0]["loss"] == pytest.approx(want, abs=1e-5)
    # step 1: only zero-advantage rows, after step 0 moved the weights: the KL term alone
    last = stats["updates"][1]
    assert last["kl"] > 0 and last["loss"] == pytest.approx(0.05 * last["kl"], rel=1e-4)


def test_zero_variance_rows_dilute_a_mixed_step():
    """The token mean of a mini-batch counts a zero-advantage row's tokens: with the rows of a
    [1, 0] group (3 and 1 tokens) and a zero group's (2 tokens), verl's masked mean is
    sum(-A x r) / 6, not / 4."""
    adv = torch.tensor([1 / math.sqrt(0.5), -1 / math.sqrt(0.5), 0.0])  # unbiased std of [1, 0]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    lp = torch.zeros(3, 3)
    loss, _ = grpo_loss(lp, lp, None, adv, mask)
    want = (-adv[0] * 3 - adv[1] * 1) / 6
    assert float(loss) / float(mask.sum()) == pytest.approx(float(want))


# ---- item 5: the KL clamp and dual-clip PPO ------------------------------------------------------

def test_kl_term_is_clamped_as_verls_low_var_kl():
    logprobs = torch.tensor([[-0.1, -5.0, -20.0]], requires_grad=True)
    ref = torch.tensor([[-0.2, -4.5, -1.0]])
    mask = torch.ones(1, 3)
    adv = torch.zeros(1)
    loss, stats = grpo_loss(logprobs, logprobs.detach(), ref, adv, mask, kl_coef=1.0)
    # verl core_algos.kl_penalty(..., "low_var_kl"): kl = ref - logp; clamp(exp(kl) - kl - 1)
    d = ref - logprobs.detach()
    verl = torch.clamp(torch.exp(d) - d - 1, min=-10, max=10)
    assert float(verl[0, 2]) == 10.0  # the third token is clamped (k3 = e^19 - 20)
    assert float(loss.detach()) == pytest.approx(float(verl.sum()), rel=1e-6)
    assert stats["kl"] == pytest.approx(float(verl.sum()), rel=1e-6)
    loss.backward()
    assert logprobs.grad[0, 2] == 0.0 and logprobs.grad[0, 1] != 0.0  # no gradient past the clamp
    assert float(kl_k3(logprobs.detach(), ref)[0, 2]) > 1e7  # kl_k3 itself stays unclamped


def test_dual_clip_caps_negative_advantage_tokens_at_c():
    """verl's compute_policy_loss with clip_ratio_c 3: for A < 0, min(-A x 3, max(-A r,
    -A clip(r))); for A > 0 the plain clipped loss."""
    ratio = torch.tensor([[5.0, 0.5, 1.1]])
    lp, old = torch.log(ratio), torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    for a in (-1.0, 2.0):
        adv = torch.tensor([a])
        plain = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))
        want = torch.minimum(plain, torch.tensor(-a * 3.0)) if a < 0 else plain
        loss, stats = grpo_loss(lp, old, None, adv, mask, dual_clip=3.0)
        assert float(loss) == pytest.approx(float(want.sum()), rel=1e-6)
        off, _ = grpo_loss(lp, old, None, adv, mask)
        assert float(off) == pytest.approx(float(plain.sum()), rel=1e-6)
        assert stats["clip_frac_lower"] == (1.0 if a < 0 else 0.0)  # the ratio-5 token


def test_dual_clip_defaults_to_verls_3_in_dataset_mode_only():
    from sttrl.config import Config, resolve
    from sttrl.errors import UserError

    assert resolve(Config(mode="dataset"), on_gpu=False).dual_clip == 3.0
    assert resolve(Config(), on_gpu=False).dual_clip == 0.0
    with pytest.raises(UserError, match="dual_clip"):
        resolve(Config(dual_clip=3.0), on_gpu=False)
    with pytest.raises(UserError, match="above 1"):
        resolve(Config(mode="dataset", dual_clip=0.5), on_gpu=False)
    assert resolve(Config(mode="dataset"), on_gpu=False).balance_ranks == 8  # TTRL's 8 GPUs
    assert resolve(Config(mode="dataset", n_train=6), on_gpu=False).balance_ranks == 2
    with pytest.raises(UserError, match="balance_ranks"):
        resolve(Config(mode="dataset", n_train=6, balance_ranks=4), on_gpu=False)


# ---- item 10: a before-evaluation per question, paired with the after ---------------------------

def test_dataset_mode_pairs_each_questions_before_and_after(tiny_model, tmp_path):
    """results.jsonl holds each question's first and last evaluation; the before-evaluation
    draws what a reset-mode run of the same questions draws from the untouched model; the
    report pairs both runs' gains."""
    from helpers import tiny_config
    from sttrl.reporting.runs import load_run
    from sttrl.run import run

    data = write_questions(tmp_path / "q.json", n=2)
    ds = run(tiny_config(tiny_model, data, tmp_path / "ds", mode="dataset", prompts_per_step=2,
                         n_train=4, balance_ranks=2, eval_every=1))
    run(tiny_config(tiny_model, data, tmp_path / "reset"))
    mine = [json.loads(x) for x in (tmp_path / "ds" / "results.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in
              (tmp_path / "reset" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in mine] == [r["id"] for r in theirs] == ["q0", "q1"]
    for m, t in zip(mine, theirs):
        assert m["pass@1_before"] == t["pass@1_before"]
        assert m["answers_before"] == t["answers_before"]
    assert ds["pass@1_before"] == pytest.approx(sum(r["pass@1_before"] for r in mine) / 2)
    assert ds["pass@1_after"] == pytest.approx(sum(r["pass@1_after"] for r in mine) / 2)
    for folder in ("ds", "reset"):
        loaded = load_run(str(tmp_path / folder))
        assert loaded.gain_ci is not None and loaded.per_question and loaded.untouched_before
    from sttrl.reporting.report import main as report

    assert report([str(tmp_path / "ds"), str(tmp_path / "reset"), "--out", str(tmp_path / "r")]) == 0
    rows = (tmp_path / "r" / "table.csv").read_text().splitlines()
    ttrl = next(r for r in rows if r.startswith("TTRL,")).split(",")
    sttrl = next(r for r in rows if r.startswith("STTRL (reset),")).split(",")
    assert ttrl[4] and ttrl[5] and sttrl[4] and sttrl[5]  # gain_ci95_lo, gain_ci95_hi


# ---- item 8: LoRA dropout and the old log-probs --------------------------------------------------

def test_lora_dropout_does_not_touch_the_first_steps_old_logprobs(tiny_model):
    """The old log-probs are the sampling policy's, which dropped nothing: with
    --lora_dropout the first mini-batch's are scored before dropout is switched on, like the
    others'."""
    from sttrl.types import TrainBatch

    engine = local_engine(tiny_model, lora_rank=4, lora_dropout=0.5, lr=5e-2)
    ids = engine.encode(PROMPT)
    responses = [s.token_ids for s in engine.generate(PROMPT, 4, 1.0, 1.0, 8, seed=1)]
    batch = TrainBatch.shared(ids, responses, [1.0, -1.0, 1.0, -1.0], temperature=1.0)
    engine.train(batch, grpo_loss, {"clip_eps": 0.2}, steps=1)  # B != 0: dropout now matters
    sampled = engine.score(batch.prompts, batch.responses, temperature=1.0)
    seen = []

    def spy(new, old, ref, advantages, mask, **kw):
        seen.append((old.clone(), mask))
        return grpo_loss(new, old, ref, advantages, mask, **kw)

    engine.train(batch, spy, {"clip_eps": 0.2}, steps=1, mini_batches=[[0, 1], [2, 3]])
    for (old, mask), rows in zip(seen, ([0, 1], [2, 3])):
        assert torch.allclose(old * mask, sampled[rows, :mask.shape[1]] * mask, atol=1e-6)


# ---- item 9: grading against TTRL's grader -------------------------------------------------------

# (prediction, reference, TTRL's grade_answer decision): each reference form in the five sets
# (AIME/GSM8K integers, AMC's "142.0", MATH's fractions, degrees, bases, thousands separators,
# dollars, units in \text, choice letters, surds, tuples, words). The decisions are TTRL's,
# from running verl/utils/reward_score/ttrl/qwen/math_grade.py on each pair; ours agree.
AGREED = [
    ("1{,}000", "1000", True), ("1,000", "1000", True), ("1{,}450{,}000", "1450000", True),
    ("10{,}080", "10,\\!080", True), ("142", "142.0", True), ("-4", "-4.0", True),
    ("142.5", "142.0", False), ("90", "90^\\circ", True), ("90^{\\circ}", "90^\\circ", True),
    ("14/3", "\\frac{14}{3}", True), ("\\dfrac{14}{3}", "\\frac{14}{3}", True),
    ("\\frac{28}{6}", "\\frac{14}{3}", False), ("9-4", "5", False), ("\\frac{10}{2}", "5", False),
    ("52_8", "52_8", True), ("52", "52_8", False), ("32348", "\\$32,\\!348", True),
    ("\\$32,348", "\\$32,\\!348", True), ("18.9", "\\$18.90", True),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100", True), ("5.4", "5.4 \\text{ cents}", True),
    ("C", "\\text{(C)}", True), ("\\sqrt{117}", "3\\sqrt{13}", True), ("(-2,1)", "(-2,1)", True),
    ("(1,-2)", "(-2,1)", False), ("23", "023", True), ("58500", "58,500", True),
    ("\\frac43", "\\frac{4}{3}", True), ("Evelyn", "\\text{Evelyn}", True), ("0", "0.0", True),
    ("0.5", "\\frac{1}{2}", True), ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", True),
]


@pytest.mark.parametrize("pred,ref,ttrl", AGREED)
def test_strict_grading_agrees_with_ttrls_grader(pred, ref, ttrl):
    from sttrl.rewards.grade import grade

    assert grade(pred, ref, "math", form="strict") is ttrl


def test_a_boxed_latex_thousands_separator_is_the_plain_integer():
    from sttrl.rewards import extract_answer
    from sttrl.rewards.grade import grade

    answer = extract_answer("So the total is \\boxed{1{,}000}.", "math")
    assert grade(answer, "1000", "math", form="strict")
    assert not grade("1{,}001", "1000", "math", form="strict")


# Where ours credits and TTRL's grader does not, on purpose (docs/METHODS.md's differences
# table): formatting that states the same number.
LENIENT = [("23 apples", "23"), ("10\\,080", "10080"), ("x=23", "23"), ("106°", "106^\\circ"),
           ("0.909091", "\\frac{10}{11}")]


@pytest.mark.parametrize("pred,ref", LENIENT)
def test_strict_grading_is_more_lenient_than_ttrls_on_formatting_only(pred, ref):
    from sttrl.rewards.grade import grade

    assert grade(pred, ref, "math", form="strict")


# ---- item 6: DeepConf's three trace confidences --------------------------------------------------

def test_deepconf_trace_confidences_on_a_hand_made_trace():
    """2,067 token confidences: 30 of 0 first, 5 of 3 last, 1 between. By hand, as
    facebookresearch/deepconf computes them (windows and tail of 2,048 tokens): the 20
    windows starting at s = 0..19 sum to 2018 + s + 2 max(0, s - 14); the lowest is s = 0,
    the bottom 10% are the 2 lowest (s = 0, 1); the last 2,048 tokens hold 11 zeros, 5 threes."""
    from sttrl.rewards.vote import trace_confidence, voting_weights
    from sttrl.types import Sample

    confs = [0.0] * 30 + [1.0] * 2032 + [3.0] * 5
    want = {"mean": 2047 / 2067, "tail": 2047 / 2048, "lowest_group": 2018 / 2048,
            "bottom10": (2018 + 2019) / 2 / 2048}
    for measure, value in want.items():
        assert trace_confidence(confs, measure) == pytest.approx(value, rel=1e-12)
        sample = Sample("", [0] * len(confs), topk_logprob_mean=[-c for c in confs])
        assert voting_weights("confidence", [sample], measure=measure) == pytest.approx([value])
    short = [0.5, 1.5, 2.5]  # under 2,048 tokens all four are the mean
    assert {trace_confidence(short, m) for m in want} == {1.5}


def test_confidence_measure_is_a_checked_option():
    from sttrl.config import Config, resolve
    from sttrl.errors import UserError

    assert run_parts(voting_function="confidence",
                     confidence_measure="tail").vote.confidence_measure == "tail"
    with pytest.raises(UserError, match="confidence_measure"):
        resolve(Config(confidence_measure="median"), on_gpu=False)


# ---- configs and launchers: TTRL's recipe --------------------------------------------------------

# Each value of TTRL's recipe and where it comes from in PRIME-RL/TTRL (commit 3e2cc93):
# S = verl/examples/ttrl/aime.sh (amc.sh sets the same), Y = verl/verl/trainer/config/ppo_trainer.yaml
# (verl's defaults, which the scripts keep), W = verl/verl/workers/fsdp_workers.py.
RECIPE = {
    "temperature": 1.0,  # S: actor_rollout_ref.rollout.temperature=1.0
    "top_p": 1.0,  # Y: rollout.top_p 1
    "n_votes": 64,  # S: N_VOTES_PER_PROMPT=64
    "n_train": 32,  # S: N_SAMPLES_PER_PROMPT=32 (the first 32 of the 64: _select_top_k_per_prompt)
    "n_eval": 16,  # S: val_kwargs.n=$N, N=16 for K=3
    "val_temp": 0.6,  # S: val_kwargs.temperature=0.6
    "val_top_p": 0.95,  # S: val_kwargs.top_p=0.95
    "max_new_tokens": 3072,  # S: MAX_RESPONSE_LENGTH=1024*K, K=3
    "prompts_per_step": 8,  # S: DATA_TRAIN_BATCH_SIZE=8
    "mini_batch_prompts": 1,  # S: MINI_BATCH_SIZE=1 (x n samples, over the ranks)
    "balance_ranks": 8,  # S: trainer.n_gpus_per_node=8, nnodes=1
    "lr": 5e-7,  # S: actor.optim.lr=5e-7
    "warmup_ratio": 0.03,  # S: lr_warmup_steps_ratio=0.03, warmup_style=cosine
    "weight_decay": 0.01,  # Y: actor.optim.weight_decay 0.01 (W: AdamW)
    "grad_clip": 1.0,  # Y: actor.grad_clip 1.0
    "clip_eps": 0.2,  # Y: actor.clip_ratio 0.2
    "dual_clip": 3.0,  # Y: actor.clip_ratio_c 3.0
    "kl_coef": 0.001,  # Y: kl_loss_coef 0.001, kl_loss_type low_var_kl; S: use_kl_loss=True
    "eval_every": 2,  # S: trainer.test_freq=2
}
EPISODES = {"aime": 80, "amc": 30}  # S: EPISODE=80 (aime.sh), 30 (amc.sh)
MODELS = {"Math-1.5B": "qwen2.5-math-1.5b", "Math-7B": "qwen2.5-math-7b",
          "Qwen2.5-7B": "qwen2.5-7b", "Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct"}


@pytest.mark.parametrize("model", MODELS)
def test_configs_and_launchers_carry_ttrls_recipe(model, monkeypatch):
    import shlex
    import subprocess

    import yaml

    from helpers import REPO
    from sttrl.cli import parse_config
    from sttrl.config import resolve

    monkeypatch.chdir(REPO)
    config = yaml.safe_load((REPO / "configs" / f"{MODELS[model]}.yaml").read_text())
    for key in ("temperature", "top_p", "n_votes", "n_train", "n_eval", "val_temp", "val_top_p",
                "max_new_tokens", "kl_coef"):
        assert config[key] == RECIPE[key], (model, key)
    for name, episodes in EPISODES.items():
        printed = subprocess.run(["bash", f"examples/ttrl/{model}/{name}.sh"], cwd=REPO,
                                 env={"PATH": "/usr/bin:/bin", "PRINT": "1"},
                                 capture_output=True, text=True, check=True).stdout
        cfg = resolve(parse_config(shlex.split(printed)), on_gpu=True)
        assert cfg.episodes == episodes and cfg.mode == "dataset"
        for key, value in RECIPE.items():
            assert getattr(cfg, key) == value, (model, name, key)


def test_a_dataset_runs_records_are_a_paired_base_for_a_continuous_run(tmp_path):
    """The report's continuous-vs-base comparison pairs a continuous run question by question
    with a dataset run's before-evaluation (its results.jsonl), with an interval; no maj@N."""
    from sttrl.modes.dataset import question_lines
    from sttrl.reporting.runs import load_run
    from sttrl.reporting.stats import paired_bootstrap_ci
    from sttrl.reporting.vsbase import compare
    from sttrl.types import Example, Question

    config = {"dataset": "ARITH-TTT", "data_path": None, "model": "m", "prompt_family": "smollm",
              "answer_form": "strict", "n_eval": 4, "val_temp": 0.6, "val_top_p": 0.95,
              "max_new_tokens": 128, "seed": 0, "adaptation_method": "ttrl", "n_votes": 16}
    examples = [Example(Question(f"q{i}", "p", "toy", "math"), "1") for i in range(4)]
    before = [0.0, 0.25, 0.5, 0.25]
    lines = question_lines(examples, {"scores": before, "answers": [[]] * 4},
                           {"scores": [0.5] * 4, "answers": [[]] * 4})
    ds, cont = tmp_path / "ds", tmp_path / "cont"
    for folder, mode, records, extra in (
            (ds, "dataset", lines, {}),
            (cont, "question", [{"id": f"q{i}", "pass@1_before": 0.9, "pass@1_after": a,
                                 "maj@N_before": 1.0} for i, a in enumerate([0.25, 0.5, 1, 1])],
             {"continuous": True, "steps_per_question": 3})):
        folder.mkdir()
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (folder / "summary.json").write_text(json.dumps(
            {"questions": 4, "pass@1_before": 0.5, "pass@1_after": 0.5,
             "config": {**config, "mode": mode, **extra}}))
    runs = [load_run(str(ds)), load_run(str(cont))]
    vs = compare(runs[1], runs)
    assert vs.base is runs[0] and vs.questions == 4
    assert vs.base_pass == pytest.approx(sum(before) / 4)
    assert vs.pass_ci == paired_bootstrap_ci(before, [0.25, 0.5, 1, 1])
    assert vs.base_maj is None  # no vote precedes dataset mode's training
