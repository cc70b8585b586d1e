"""The real embedded model (slow: minutes on CPU; run with `pytest -m slow`)."""
import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_converted_model_matches_the_gguf_original(tmp_path):
    from transformers import AutoModelForCausalLM

    from sttrl.engines.models import convert_gguf, find_embedded_gguf, load_model

    gguf = find_embedded_gguf()
    out = convert_gguf(gguf, tmp_path / "smollm2")
    converted, tok = load_model(str(out), torch.float32, "cpu")
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = tok("What is 7 + 8?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, original(ids).logits, atol=1e-4)


def test_two_arith_questions_end_to_end(tmp_path):
    from sttrl.config import Config
    from sttrl.run import run

    summary = run(Config(num_questions=2, n_eval=8, output_dir=str(tmp_path / "out"),
                         device="cpu", progress=False))
    assert summary["questions"] == 2
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert all(json.loads(x)["seconds"]["total"] > 0 for x in lines)
