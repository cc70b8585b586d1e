"""LoRA adapters (--lora_rank) on the local engine, on the tiny random model."""
import json
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, kill_after_two_lines, lines, local_engine, tiny_config,
                     without_timings, write_questions)
from sttrl.algorithms import slot, ttft
from sttrl.algorithms.grpo import group_advantages, grpo_loss
from sttrl.config import LORA_LR_FACTOR, Config, resolve, validate
from sttrl.errors import UserError
from sttrl.run import run
from sttrl.types import TrainBatch

PROMPT = "<|user|>What is 2 + 3?<|end|><|assistant|>"


def base_weights(engine) -> dict:
    """Every weight that is not the adapter's, by name."""
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items() if "lora_" not in k}


def majority_batch(engine):
    """The vote's winner "5" rewarded, the loser "7" not."""
    tok, pid = engine.tokenizer, engine.encode(PROMPT)
    good = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = TrainBatch.shared(pid, [good] * 5 + [bad] * 3, group_advantages([1.0] * 5 + [0.0] * 3))
    return pid, good, bad, batch


def logprob(engine, pid, ids) -> float:
    return float(engine.score([pid], [ids])[0, :len(ids)].sum())


def test_only_the_adapter_trains_and_it_is_fp32(tiny_model):
    engine = local_engine(tiny_model, lora_rank=4)
    names = [n for n, p in engine.model.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert len(names) == 2 * 7 * 2  # A and B on 7 projections in each of 2 layers
    assert all(p.dtype == torch.float32 for p in engine.params)
    total = sum(p.numel() for p in engine.model.parameters())
    assert sum(p.numel() for p in engine.params) < total / 2


def test_base_weights_stay_bit_identical_through_updates(tiny_model):
    engine = local_engine(tiny_model, lora_rank=4, lr=1e-2)
    before = base_weights(engine)
    pid, good, _, batch = majority_batch(engine)
    for _ in range(3):  # the later updates compute the KL reference with the adapter off
        engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.1}, steps=2)
        engine.train(TrainBatch.shared(pid, [good], [1.0]), ttft.sft_loss, {}, steps=2)
    after = base_weights(engine)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(a, b) for a, b in zip(engine.params, engine.initial["params"]))


def test_a_fresh_or_reset_adapter_is_exactly_the_base_model(tiny_model):
    plain, engine = local_engine(tiny_model), local_engine(tiny_model, lora_rank=4, lr=1e-2)
    pid, _, _, batch = majority_batch(engine)
    responses = batch.responses
    base = plain.score([pid] * len(responses), responses)
    assert torch.equal(engine.score([pid] * len(responses), responses), base)
    engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=3)
    assert not torch.allclose(engine.score([pid] * len(responses), responses), base)
    engine.reset()
    assert torch.equal(engine.score([pid] * len(responses), responses), base)
    assert not engine.optimizer.state  # AdamW's moments are gone too
    # the reset adapter trains as the fresh one did: same first update, bit for bit
    fresh = local_engine(tiny_model, lora_rank=4, lr=1e-2)
    a = engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=2)
    b = fresh.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=2)
    assert a == b


def test_the_reference_is_the_base_model_with_the_adapter_off(tiny_model):
    plain, engine = local_engine(tiny_model), local_engine(tiny_model, lora_rank=4, lr=1e-2)
    _, _, _, batch = majority_batch(engine)
    engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=2)
    engine.set_head_hook(lambda h: h * 0)  # a hook is no part of the reference either
    ref = engine._reference_logprobs(batch)
    assert torch.equal(ref, plain.score(batch.prompts, batch.responses))
    assert engine.ref_model is None  # no second copy of the weights was loaded
    engine.set_head_hook(None)
    assert not torch.allclose(engine.score(batch.prompts, batch.responses), ref)  # adapter back on


def test_an_update_raises_the_rewarded_responses(tiny_model):
    engine = local_engine(tiny_model, lora_rank=4, lr=3e-3)
    pid, good, bad, batch = majority_batch(engine)
    before_good, before_bad = logprob(engine, pid, good), logprob(engine, pid, bad)
    history = engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.001}, steps=4)
    assert history[0]["clip_frac"] == 0.0  # step 1 is on-policy
    assert logprob(engine, pid, good) > before_good + 0.1
    assert logprob(engine, pid, bad) < before_bad


def test_gradient_checkpointing_trains_the_adapter_the_same(tiny_model):
    plain = local_engine(tiny_model, lora_rank=4, lr=1e-2)
    ckpt = local_engine(tiny_model, lora_rank=4, lr=1e-2, gradient_checkpointing=True)
    _, _, _, batch = majority_batch(plain)
    a = plain.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=2)
    b = ckpt.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=2)
    assert a[0]["grad_norm"] > 0 and b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-4)
    for p, q in zip(plain.params, ckpt.params):
        assert torch.allclose(p, q, atol=1e-6)


def test_adapter_dropout_is_off_outside_the_gradient_forwards(tiny_model):
    engine = local_engine(tiny_model, lora_rank=4, lora_dropout=0.5, lr=1e-2)
    pid, _, _, batch = majority_batch(engine)
    engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=1)
    dropouts = [m for n, m in engine.model.named_modules() if n.endswith("lora_dropout")]
    assert dropouts and not any(m.training for m in dropouts)
    scored = engine.score(batch.prompts, batch.responses)
    assert torch.equal(scored, engine.score(batch.prompts, batch.responses))  # deterministic


def test_slot_head_hook_works_on_the_wrapped_model(tiny_model):
    engine = local_engine(tiny_model, lora_rank=4)
    ids = engine.encode(PROMPT)
    plain = engine.score([ids], [ids[1:4]])
    delta, history = slot.fit_delta(engine, ids, lr=0.1, steps=5)
    assert history[-1]["loss"] < history[0]["loss"]
    engine.set_head_hook(slot.HiddenDelta(delta))
    assert not torch.allclose(engine.score([ids], [ids[1:4]]), plain)
    engine.reset()
    assert engine.head_hook is None and torch.equal(engine.score([ids], [ids[1:4]]), plain)


def test_the_checkpoint_holds_only_the_adapter_and_refuses_the_wrong_kind(tiny_model):
    engine = local_engine(tiny_model, lora_rank=4, lr=1e-2)
    _, _, _, batch = majority_batch(engine)
    engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=1)
    state = engine.state_dict()
    assert "model" not in state and all("lora_" in k for k in state["adapter"])
    other = local_engine(tiny_model, lora_rank=4)
    other.load_state_dict(state)
    assert torch.equal(other.score(batch.prompts, batch.responses),
                       engine.score(batch.prompts, batch.responses))
    with pytest.raises(UserError, match="holds a LoRA adapter"):
        local_engine(tiny_model).load_state_dict(state)
    with pytest.raises(UserError, match="holds full weights"):
        other.load_state_dict(local_engine(tiny_model).state_dict())


@pytest.mark.parametrize("method", ["ttft", "memo"])
def test_methods_run_with_lora(tiny_model, tmp_path, method):
    data = write_questions(tmp_path / "q.json", n=2)
    summary = run(tiny_config(tiny_model, data, tmp_path / "out", adaptation_method=method,
                              lora_rank=4, lr=1e-2))
    assert summary["questions"] == 2 and summary["config"]["lora_rank"] == 4


def test_dataset_mode_checkpoints_the_adapter(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=4)  # 2 full rollout batches of 2
    out = tmp_path / "out"
    summary = run(Config(model=tiny_model, data_path=data, output_dir=str(out), device="cpu",
                         mode="dataset", prompts_per_step=2, eval_every=1, n_votes=8, n_train=4,
                         n_eval=2, max_new_tokens=6, temperature=1.0, lr=1e-2, lora_rank=4,
                         progress=False))
    assert summary["steps"] == 2
    state = torch.load(out / "checkpoint.pt", weights_only=False)["engine"]
    assert "adapter" in state and "model" not in state


def test_a_killed_continuous_lora_run_resumes_its_adapter(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=5)
    flags = ["--model", tiny_model, "--data_path", data, "--device", "cpu", "--n_votes", "8",
             "--n_train", "6", "--n_eval", "4", "--max_new_tokens", "8", "--lr", "3e-2",
             "--steps_per_question", "2", "--temperature", "1.0", "--progress", "false",
             "--continuous", "--lora_rank", "4", "--lora_target_modules", "q_proj,v_proj"]
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    subprocess.run([sys.executable, "main.py", *flags, "--output_dir", str(ref_out)], cwd=REPO,
                   check=True, capture_output=True)
    results = kill_after_two_lines(flags, out)
    assert 2 <= results.read_text().count("\n") < 5
    subprocess.run([sys.executable, "main.py", *flags, "--output_dir", str(out)], cwd=REPO,
                   check=True, capture_output=True)
    assert without_timings(lines(out)) == without_timings(lines(ref_out))
    state = torch.load(out / "checkpoint.pt", weights_only=False)["engine"]
    assert "model" not in state and {k.split(".")[-2] for k in state["adapter"]} == {
        "lora_A", "lora_B"}
    # the adapter moved: question 5 did not start from the base model
    assert any(float(v.abs().sum()) > 0 for k, v in state["adapter"].items() if "lora_B" in k)
    saved = json.loads((out / "config.json").read_text())
    assert saved["lora_rank"] == 4 and saved["lora_target_modules"] == "q_proj,v_proj"


@pytest.mark.parametrize("fields,message", [
    ({"lora_rank": -1}, "--lora_rank must be an integer from 0"),
    ({"lora_rank": 4, "lora_alpha": 0}, "--lora_alpha must be > 0"),
    ({"lora_rank": 4, "lora_dropout": 1.0}, "--lora_dropout must be from 0 to below 1"),
    ({"lora_rank": 4, "lora_target_modules": "q_proj,,v_proj"}, "--lora_target_modules must be"),
    ({"lora_rank": 4, "lora_target_modules": "q-proj"}, "--lora_target_modules must be"),
    ({"lora_rank": 4, "separate_ref_gpu": True}, "--separate_ref_gpu has no use with --lora_rank"),
])
def test_bad_lora_options_are_one_line(fields, message):
    with pytest.raises(UserError, match=message) as err:
        validate(Config(**fields))
    assert "\n" not in str(err.value)


def test_a_target_module_the_model_lacks_is_one_line(tiny_model):
    with pytest.raises(UserError, match="c_attn not found in this model.*q_proj"):
        local_engine(tiny_model, lora_rank=4, lora_target_modules="q_proj,c_attn")


def test_lora_learning_rate_default_and_output_dir():
    full = resolve(Config(), on_gpu=False)
    lora = resolve(Config(lora_rank=16), on_gpu=False)
    assert lora.lr == pytest.approx(full.lr * LORA_LR_FACTOR)
    assert resolve(Config(lora_rank=16, lr=3e-4), on_gpu=False).lr == 3e-4  # a given lr stays
    slot_lr = resolve(Config(adaptation_method="slot"), on_gpu=False).lr
    assert resolve(Config(adaptation_method="slot", lora_rank=16), on_gpu=False).lr == slot_lr
    assert lora.output_dir.endswith("_lora16") and "lora" not in full.output_dir


def test_yaml_may_list_the_target_modules(tmp_path):
    from sttrl.cli import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("lora_rank: 8\nlora_target_modules: [q_proj, v_proj]\n")
    assert validate(Config(**load_yaml(str(path)))).lora_target_modules == "q_proj,v_proj"


def test_a_lora_run_has_its_own_report_row(tmp_path):
    from sttrl.reporting.runs import ROWS, row_name

    summary = {"config": {"mode": "question", "adaptation_method": "ttrl", "lora_rank": 16}}
    assert row_name(summary, tmp_path) == "STTRL (reset) + LoRA"
    assert ROWS.index("STTRL (reset) + LoRA") == ROWS.index("STTRL (reset)") + 1
    summary["config"]["lora_rank"] = 0
    assert row_name(summary, tmp_path) == "STTRL (reset)"
    summary["config"].update(mode="dataset", lora_rank=8)
    assert row_name(summary, tmp_path) == "TTRL + LoRA"
