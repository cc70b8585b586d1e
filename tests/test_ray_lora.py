"""LoRA on the scale engine: DeepSpeed ZeRO-3 ranks train the adapter, vLLM (CPU) serves it.

After each update, reset and checkpoint load, vLLM's log-probs of a fixed response must match
the actor's: the check against a stale or missing adapter on the rollout side.
"""
import pytest

from helpers import KL, LOGPROB_TOL, MISSING, PROMPT, WEIGHT_TOL, max_gap, ray_config, ray_engine

pytestmark = [pytest.mark.scale, pytest.mark.skipif(
    bool(MISSING), reason=f"scale stack not installed ({', '.join(MISSING)}): "
                          "bash scripts/setup.sh --scale")]


def test_the_adapter_trains_on_zero3_and_vllm_serves_it(ray_cpu, tiny_vllm_model):
    import torch
    from safetensors.torch import load_file

    from helpers import local_engine
    from sttrl.algorithms.grpo import group_advantages, grpo_loss
    from sttrl.types import TrainBatch

    # 2 ranks with micro-batches of 2 (dummy rows too) and checkpointing (the frozen embeddings'
    # output must carry grad); the local engine with the same seed has the same initial adapter
    cfg = ray_config(tiny_vllm_model, actor_num_gpus=2, micro_batch_size=2, lora_rank=4,
                     gradient_checkpointing=True, lr=3e-3)
    eng = ray_engine(cfg, tiny_vllm_model)
    local = local_engine(tiny_vllm_model, lr=cfg.lr, micro_batch_size=2, lora_rank=4)
    try:
        pid = eng.encode(PROMPT)
        samples = eng.generate(PROMPT, 7, 1.0, 1.0, 10, seed=3)
        batch = TrainBatch.shared(pid, [s.token_ids for s in samples],
                                  group_advantages([1.0, 0, 1, 0, 0, 1, 1]))
        fixed = samples[0].token_ids + samples[1].token_ids
        initial = eng.score_on_engines(pid, fixed)[0]
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL

        got = eng.train(batch, grpo_loss, KL, steps=3)
        want = local.train(batch, grpo_loss, KL, steps=3)
        for g, w in zip(got, want):
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
        trained = eng.score_on_engines(pid, fixed)[0]
        assert max_gap(trained, initial) > 1e-2  # vLLM applies an adapter ...
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL  # ... the actor's
        assert len(eng.generate(PROMPT, 3, 1.0, 1.0, 10, seed=4)) == 3  # sampling with it

        # the weights moved: the KL reference is the base model, the adapter switched off
        got = eng.train(batch, grpo_loss, {**KL, "kl_coef": 0.1}, steps=2)
        want = local.train(batch, grpo_loss, {**KL, "kl_coef": 0.1}, steps=2)
        assert got[0]["kl"] > 0
        for g, w in zip(got, want):
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL
        saved = eng.state_dict()
        assert "model" not in saved
        mine = local.state_dict()["adapter"]
        assert saved["adapter"].keys() == mine.keys()
        assert max((saved["adapter"][k] - mine[k]).abs().max().item() for k in mine) < WEIGHT_TOL

        # the base weights on the ranks are the checkpoint's, bit for bit
        base = load_file(f"{tiny_vllm_model}/model.safetensors")
        ranks = eng._get([t.full_weights.remote() for t in eng.trainers], "weights")[0]
        frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in ranks.items() if "lora_" not in k}
        assert frozen.keys() >= base.keys()
        assert all(torch.equal(frozen[k], base[k]) for k in base)

        eng.reset()  # vLLM back to no adapter, without a reload
        assert max_gap(eng.score_on_engines(pid, fixed)[0], initial) < LOGPROB_TOL
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL
        assert eng._get([r.list_adapters.remote() for r in eng.rollouts], "adapters") == [[]]

        eng.load_state_dict(saved)  # a resumed --continuous run
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL
        assert max_gap(eng.score_on_engines(pid, fixed)[0], initial) > 1e-2
        assert all(eng.state_dict()["adapter"][k].equal(saved["adapter"][k]) for k in mine)
        eng.reset()
        assert eng.check_weights(pid, fixed) < LOGPROB_TOL
    finally:
        eng.close()


def test_a_continuous_lora_run_on_the_scale_engine_checkpoints_the_adapter(ray_cpu, tiny_vllm_model,
                                                                           tmp_path):
    import torch

    from sttrl.run import run
    from helpers import write_questions

    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    summary = run(ray_config(tiny_vllm_model, data_path=data, output_dir=str(out), lora_rank=4,
                             continuous=True, steps_per_question=1))
    assert summary["questions"] == 2 and summary["config"]["lora_rank"] == 4
    state = torch.load(out / "checkpoint.pt", weights_only=False)["engine"]
    assert "model" not in state and all("lora_" in k for k in state["adapter"])
