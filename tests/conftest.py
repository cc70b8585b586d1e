"""Shared fixtures: a tiny random Llama model and character-level tokenizer, built offline."""
from __future__ import annotations

import string
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tiny_model(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A 2-layer random Llama whose tokenizer has one token per character."""
    import torch
    from tokenizers import Tokenizer, decoders, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]
    chars = string.digits + string.ascii_letters + " +-*/=.,?()\\{}$^_:\n"
    vocab = {tok: i for i, tok in enumerate(specials + list(chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": specials[4:]})
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_vllm_model(tmp_path_factory) -> str:
    """The tiny model with head_dim 32 (hidden 64, 2 heads): vLLM's CPU attention rejects 16."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny_vllm") / "model", hidden=64))


def local_engine(model_path: str, **fields):
    """A LocalEngine on the CPU with these Config fields (the rest: resolved CPU defaults)."""
    from sttrl.config import Config, resolve
    from sttrl.engines.local import LocalEngine

    return LocalEngine(resolve(Config(device="cpu", **fields), on_gpu=False), model_path)
