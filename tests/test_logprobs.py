"""Log-probs through the chunked LM head (sequences.py) equal those of the full [B, T, V] logits
the engines used before (benchmarks/full_logits.py, the oracle), values and gradients, on both
engines, and no vocabulary-sized tensor over the whole response is ever allocated."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import local_engine

REPO = Path(__file__).resolve().parents[1]
PROMPT = "<|user|>What is 2 + 3?<|end|><|assistant|>"
LOGPROB_TOL, GRAD_TOL = 1e-6, 1e-5  # fp32: the bounds


def oracle():
    spec = importlib.util.spec_from_file_location("full_logits", REPO / "benchmarks" / "full_logits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logprobs_and_grads(fn, model, prompt, responses, shared, temperature):
    """(log-probs, logsumexp, gradient of every trainable parameter) of one weighted loss."""
    from sttrl.engines.sequences import pad_batch

    model.zero_grad(set_to_none=True)
    if shared:
        lp, lse = fn.shared_prompt_logprobs(model, prompt, responses, 0, "cpu", True, temperature)
    else:
        ids, attn, pos, mask = pad_batch([prompt] * len(responses), responses, 0, "cpu")
        lp, lse = fn.response_logprobs(model, ids, attn, pos, mask.shape[1], True, temperature)
    weights = torch.randn(lp.shape, generator=torch.Generator().manual_seed(0))
    ((lp * weights).sum() + 0.1 * lse.sum()).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return lp.detach(), lse.detach(), grads


@pytest.mark.parametrize("shared,lora,ckpt,temperature,chunk", [
    (False, False, False, 1.0, None), (False, False, False, 0.7, 3),
    (True, False, False, 0.7, 3), (True, False, False, 1.0, None),
    (False, False, True, 0.7, 3), (False, True, False, 0.7, 3), (True, True, False, 0.7, 3),
    (False, True, True, 0.7, 3)])
def test_chunked_logprobs_and_gradients_equal_the_full_logits(tiny_model, monkeypatch, shared,
                                                              lora, ckpt, temperature, chunk):
    """Padded rows and the shared prompt's cache, with LoRA and gradient checkpointing, with the
    head hook set (SLOT's: it must still reach the hidden states), in chunks of 3 tokens (a
    ragged last chunk; two kept, the rest recomputed) and the default size: the engine's log-probs, logsumexp and gradients
    are the full logits' within 1e-6 and 1e-5."""
    import sttrl.engines.sequences as seq
    from sttrl.algorithms.slot import HiddenDelta

    engine = local_engine(tiny_model, lora_rank=4 if lora else 0, gradient_checkpointing=ckpt)
    if chunk:  # the first two chunks keep their log-softmax, the rest recompute in the backward
        monkeypatch.setattr(seq, "LOGIT_CHUNK_ELEMENTS", chunk * engine.model.config.vocab_size)
        monkeypatch.setattr(seq, "LOGIT_KEEP_ELEMENTS", 2 * chunk * engine.model.config.vocab_size)
    engine.set_head_hook(HiddenDelta(0.1 * torch.randn(engine.model.config.hidden_size)))
    pid = engine.encode(PROMPT)
    responses = [s.token_ids for s in engine.generate(PROMPT, 5, 1.0, 1.0, 12, seed=4)]
    responses[1] = responses[1][:4]  # rows of different lengths: right padding
    engine.model.train(ckpt)  # training mode only switches checkpointing on, as in train()
    if lora:  # a trained adapter (peft starts B at zero), so the adapter's path carries gradient
        for name, p in engine.model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.05)
    want = logprobs_and_grads(oracle(), engine.model, pid, responses, shared, temperature)
    got = logprobs_and_grads(seq, engine.model, pid, responses, shared, temperature)
    assert (got[0] - want[0]).abs().max() < LOGPROB_TOL
    assert (got[1] - want[1]).abs().max() < LOGPROB_TOL
    assert len(got[2]) == len(want[2]) > 0
    assert max((g - w).abs().max() for g, w in zip(got[2], want[2])) < GRAD_TOL
    assert got[2][0].abs().max() > 0  # a gradient to compare, not zeros


@pytest.mark.parametrize("shared", [False, True])
def test_no_tensor_holds_the_whole_responses_logits(tiny_model, monkeypatch, shared):
    """Forward and backward allocate vocabulary-wide tensors of at most one chunk of tokens (the
    full logits allocate them for every token of every row)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import sttrl.engines.sequences as seq

    class Widest(TorchDispatchMode):
        rows = 0  # the most rows of any [..., V] tensor an operation returned

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # views (the head's weight transposed) allocate nothing
            given = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves(
                (args, kwargs)) if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if (isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == vocab
                        and t.untyped_storage().data_ptr() not in given):
                    self.rows = max(self.rows, t.numel() // vocab)
            return out

    engine = local_engine(tiny_model)
    vocab = engine.model.config.vocab_size
    monkeypatch.setattr(seq, "LOGIT_CHUNK_ELEMENTS", 4 * vocab)
    monkeypatch.setattr(seq, "LOGIT_KEEP_ELEMENTS", 8 * vocab)
    pid = engine.encode(PROMPT)
    responses = [list(range(10, 40))] * 4  # 120 response tokens
    rows = {}
    for name, fn in (("chunked", seq), ("full", oracle())):
        with Widest() as mode:
            logprobs_and_grads(fn, engine.model, pid, responses, shared, 0.7)
        rows[name] = mode.rows
    assert rows["chunked"] <= 4
    assert rows["full"] >= 4 * 30


def test_a_model_that_changes_its_logits_after_the_head_is_one_line(tiny_model):
    """Gemma 2 soft-caps the head's output before returning it: the chunked log-probs would skip
    that, so they refuse the model in one line instead of returning wrong numbers."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from sttrl.engines.sequences import pad_batch, response_logprobs
    from sttrl.errors import UserError

    model = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0))
    ids, attn, pos, mask = pad_batch([[1, 2, 3]], [[4, 5]], 0, "cpu")
    with pytest.raises(UserError) as err:
        response_logprobs(model.eval(), ids, attn, pos, mask.shape[1])
    assert "\n" not in str(err.value) and "gemma2" in str(err.value)
    assert "forward" not in model.get_output_embeddings().__dict__  # the head is restored


SCALE = [m for m in ("ray", "vllm", "deepspeed") if importlib.util.find_spec(m) is None]

ZERO3_SCRIPT = r"""
import json, socket, sys
import torch
from deepspeed.utils import safe_get_full_grad
sys.path.insert(0, sys.argv[2])
import full_logits
import sttrl.engines.sequences as seq
from sttrl.engines.ray.common import ActorSettings
from sttrl.engines.ray.trainer import TrainerActor

out = {}
with socket.socket() as s:
    s.bind(("", 0))
    port = s.getsockname()[1]
from sttrl.config import Config, resolve
from sttrl.parts import parts
engine_settings = parts(resolve(Config(device="cpu", engine="ray", gradient_checkpointing=True,
                                       lora_rank=int(sys.argv[3]), lr=1e-3), on_gpu=False)).engine
actor = TrainerActor(0, 1, 0, ActorSettings.derive(engine_settings, sys.argv[1], pad_id=0))
actor.setup("127.0.0.1", port)
seq.LOGIT_CHUNK_ELEMENTS = 3 * actor.engine.module.config.vocab_size  # chunks of 3 tokens,
seq.LOGIT_KEEP_ELEMENTS = 2 * seq.LOGIT_CHUNK_ELEMENTS  # two kept, the rest recomputed
prompts = [[4, 10, 11, 12, 7, 6]] * 3
responses = [[20, 21, 22, 23, 24, 2], [30, 31, 2], [40, 41, 42, 43]]
ids, attn, pos, mask = seq.pad_batch(prompts, responses, 0, "cpu")
w = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
actor.engine.module.train(True)  # gradient checkpointing on, as in training
for name, fn in (("chunked", seq), ("full", full_logits)):
    lp, lse = fn.response_logprobs(actor.engine, ids, attn, pos, mask.shape[1], True, 0.7)
    actor.engine.backward((lp * w * mask).sum() + 0.1 * (lse * mask).sum())
    grads = [safe_get_full_grad(p) for p in actor.engine.module.parameters() if p.requires_grad]
    out[name] = {"lp": (lp * mask).tolist(), "lse": (lse * mask).tolist(),
                 "grads": [g.flatten().tolist() for g in grads]}
    actor.engine.optimizer.zero_grad()
print("RESULT " + json.dumps(out))
print("GAPS", [max(abs(a - b) for x, y in zip(out["chunked"][k], out["full"][k]) for a, b in zip(x, y))
               for k in ("lp", "lse", "grads")], file=sys.stderr)
"""


@pytest.mark.skipif(bool(SCALE), reason=f"scale stack not installed ({', '.join(SCALE)})")
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_the_scale_engines_zero3_rank_gives_the_full_logits_numbers(tiny_vllm_model, lora_rank):
    """A ZeRO-3 trainer rank (its head weight partitioned: gathered for the forward and again for
    the backward that recomputes the chunks), with gradient checkpointing, with and without
    LoRA: chunked log-probs, logsumexp and gradients equal the full logits'."""
    done = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT, tiny_vllm_model,
                           str(REPO / "benchmarks"), str(lora_rank)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    new, old = got["chunked"], got["full"]
    for key in ("lp", "lse"):
        gap = (torch.tensor(new[key]) - torch.tensor(old[key])).abs().max()
        assert gap < LOGPROB_TOL, key
    assert len(new["grads"]) == len(old["grads"]) > 0
    assert max((torch.tensor(a) - torch.tensor(b)).abs().max()
               for a, b in zip(new["grads"], old["grads"])) < GRAD_TOL
    assert max(max(abs(x) for x in g) for g in new["grads"]) > 0
