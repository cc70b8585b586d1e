"""--model takes a local GGUF file of any architecture transformers reads: converted once into the
cache, run like any model; a base model without a chat template gets the plain prompt family;
a file that cannot be converted is one line."""
import json
import os
from pathlib import Path

import pytest

from sttrl.cli import main

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = "What is 3 + 4? Put your final answer within \\boxed{}.\n"


def write_tiny_gguf(path: Path, chat_template: str | None = None, seed: int = 0) -> dict:
    """A 2-layer random Qwen2 written as GGUF the way llama.cpp writes one (its tensor names and
    metadata keys, float32 tensors, a byte-level BPE vocabulary); returns the HF state dict."""
    import gguf
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges = ["Ġ +", "Ġ =", "Ġ W"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in merges] + specials
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokens), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0,
                         tie_word_embeddings=False)
    state = {k: v.detach().clone() for k, v in Qwen2ForCausalLM(config).state_dict().items()}
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name(path.stem)
    writer.add_context_length(512)
    writer.add_block_count(2)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - len(specials)) + [3] * len(specials))  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|endoftext|>"))
    if chat_template:
        writer.add_chat_template(chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, 2)
    for name, tensor in state.items():
        module, suffix = name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(module)}.{suffix}", tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


def sttrl(model: str, out: Path, *flags: str) -> int:
    """One ARITH question on the CPU, one update step, small samples: main.py in-process."""
    return main(["--model", model, "--dataset", "ARITH-TTT", "--num_questions", "1",
                 "--steps_per_question", "1", "--min_majority_ratio", "0", "--n_votes", "4",
                 "--n_train", "4", "--n_eval", "2", "--max_new_tokens", "8", "--device", "cpu",
                 "--progress", "false", "--output_dir", str(out), *flags])


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STTRL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_another_architecture_is_converted_once_and_runs(tmp_path, cache, capsys):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from sttrl.engines.models import resolve_model

    gguf = tmp_path / "tiny-chat.gguf"
    written = write_tiny_gguf(gguf, chat_template=CHATML)
    assert sttrl(str(gguf), tmp_path / "run1") == 0
    [folder] = list(cache.iterdir())
    converted = load_file(folder / "model.safetensors")
    assert sorted(converted) == sorted(written)
    assert all(torch.equal(converted[k], written[k]) for k in written)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"]) == TEXT
    assert tokenizer.chat_template == CHATML
    config = json.loads((tmp_path / "run1" / "config.json").read_text())
    # no family in the name (nor in pytest's tmp path, which is the test's name): the default
    assert config["prompt_family"] == "default"
    assert len((tmp_path / "run1" / "results.jsonl").read_text().splitlines()) == 1

    # a second run converts nothing: the same folder, its weights file untouched
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert sttrl(str(gguf), tmp_path / "run2") == 0
    assert list(cache.iterdir()) == [folder]
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    # an edited file is converted again, into a folder of its own
    write_tiny_gguf(gguf, chat_template=CHATML, seed=1)
    os.utime(gguf, ns=(stamp + 10**9, stamp + 10**9))
    again = Path(resolve_model(str(gguf)))
    assert again != folder and sorted(cache.iterdir()) == sorted([folder, again])
    assert not torch.equal(load_file(again / "model.safetensors")["lm_head.weight"],
                           written["lm_head.weight"])


def test_a_base_model_without_chat_template_gets_plain_prompts(tmp_path, cache):
    from sttrl.data.prompts import format_prompt
    from sttrl.engines.models import load_tokenizer, resolve_model
    from sttrl.types import Question

    gguf = tmp_path / "tiny-llama-base.gguf"  # a chat family's name: the tokenizer decides
    write_tiny_gguf(gguf)
    assert sttrl(str(gguf), tmp_path / "run") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["prompt_family"] == "plain"
    question = Question("q", "What is 3 + 4?", "arith", "math")
    tokenizer = load_tokenizer(resolve_model(str(gguf)))
    assert format_prompt(question, tokenizer, "plain") == \
        "What is 3 + 4?\nPut your final answer within \\boxed{}.\n"


def test_a_chat_family_asked_for_on_a_base_model_is_one_line(tmp_path, cache, capsys):
    gguf = tmp_path / "base.gguf"
    write_tiny_gguf(gguf)
    assert sttrl(str(gguf), tmp_path / "run", "--prompt_family", "llama") == 2
    err = capsys.readouterr().err  # the conversion's progress bars, then one line
    assert "--prompt_family llama needs a chat template" in err.splitlines()[-1]
    assert "plain" in err.splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "run" / "config.json").exists()  # nothing refuses the corrected run


def unsupported(path: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def cut(keep):
    def write(path: Path) -> None:
        write_tiny_gguf(path)
        data = path.read_bytes()
        path.write_bytes(data[:keep(len(data))])
    return write


@pytest.mark.parametrize("make, expected", [
    (unsupported, "cannot read GGUF architecture 'rwkv6'; it reads "),
    (cut(lambda n: n // 2), "truncated or corrupt"),
    (cut(lambda n: n - 1), "truncated or corrupt"),
    (cut(lambda n: 100), "truncated or corrupt"),
    (lambda path: path.write_text("not a model\n"), "is not a GGUF file"),
    (lambda path: None, "no such file"),
], ids=["unsupported-architecture", "half", "last-byte-cut", "header-cut", "text", "missing"])
def test_a_gguf_that_cannot_be_converted_is_one_line(make, expected, tmp_path, cache, capsys):
    path = tmp_path / "bad.gguf"
    make(path)
    assert sttrl(str(path), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    if "architecture" in expected:
        assert "qwen2" in err and "llama" in err  # what it can read instead
    assert not cache.exists() or not any(cache.iterdir())
    assert not (tmp_path / "run" / "config.json").exists()
