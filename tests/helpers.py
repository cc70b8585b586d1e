"""What the tests share besides fixtures (those are in conftest.py): the repo, the tiny model,
settings and engines built from a Config, runs on the tiny model and what they wrote, the scale
engine's constants, and the engine contract's check. Test files import from here, never from
each other."""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# ---- the tiny model ----------------------------------------------------------------------------

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



# ---- settings and engines from a Config ---------------------------------------------------------

def run_parts(**fields):
    """The parts of a resolved CPU run with these Config fields (the rest: CPU defaults)."""
    from sttrl.config import Config, resolve
    from sttrl.parts import parts

    return parts(resolve(Config(device="cpu", **fields), on_gpu=False))


def local_engine(model_path: str, **fields):
    """A LocalEngine on the CPU with these Config fields (the rest: resolved CPU defaults)."""
    from sttrl.engines.local import LocalEngine

    return LocalEngine(run_parts(**fields).engine, model_path)


# ---- runs on the tiny model ---------------------------------------------------------------------

def write_questions(path: Path, n: int = 4) -> str:
    rows = [{"prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1), "source": "toy",
             "id": f"q{i}"} for i in range(n)]
    path.write_text(json.dumps(rows))
    return str(path)


def tiny_config(model: str, data: str, out: Path, **kw):
    from sttrl.config import Config

    base = dict(model=model, data_path=data, output_dir=str(out), device="cpu", n_votes=8,
                n_train=6, n_eval=4, max_new_tokens=8, steps_per_question=2, lr=5e-3,
                temperature=1.0, progress=False,
                # the rules off, whatever the CPU study's defaults: each test turns on its own
                min_majority_ratio=0.0, min_vote_margin=0.0, stop_agreement=0.0)
    base.update(kw)
    return Config(**base)


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def kill_after_two_lines(flags: list[str], out: Path) -> Path:
    """Run main.py with these flags into out and SIGKILL it once two results lines are written;
    returns the results file."""
    proc = subprocess.Popen([sys.executable, "main.py", *flags, "--output_dir", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return results


def without_timings(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# ---- the scale engine ---------------------------------------------------------------------------

MISSING = [m for m in ("ray", "vllm", "deepspeed") if importlib.util.find_spec(m) is None]
PROMPT = "<|user|>What is 2 + 3?<|end|><|assistant|>"
LOGPROB_TOL = 1e-4  # fp32 on CPU: vLLM vs the HF forward measured <= 5e-7
WEIGHT_TOL = 1e-4  # ZeRO-3 (2 ranks) vs torch AdamW after 5 steps: measured <= 1e-5
KL = {"clip_eps": 0.2, "kl_coef": 0.001}


def ray_config(model: str, **kw):
    from sttrl.config import Config, resolve

    base = dict(engine="ray", model=model, n_votes=8, n_train=6, n_eval=4, max_new_tokens=10,
                lr=3e-3, sync_timeout=300, progress=False)
    base.update(kw)
    return resolve(Config(**base), on_gpu=False)


def ray_engine(cfg, model: str):
    """A RayEngine built, as run.py builds it, from the engine part of a resolved config."""
    from sttrl.engines.ray.engine import RayEngine
    from sttrl.parts import parts

    return RayEngine(parts(cfg).engine, model)


def max_gap(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


# ---- the engine contract (sttrl/engines/base.py) -----------------------------------------------

def contract_members():
    """The contract's methods and properties (name -> the protocol's member) and its attributes
    (names only: they are set on an instance)."""
    from sttrl.engines.base import Engine

    members = {n: m for n, m in vars(Engine).items()
               if not n.startswith("_") and (callable(m) or isinstance(m, property))}
    members["__init__"] = Engine.__init__
    return members, list(Engine.__annotations__)


def contract_problems(cls) -> list[str]:
    """Where the class `cls` departs from the contract, without building one: a method missing
    or of another kind, a parameter missing, renamed, moved or without the protocol's default,
    a required parameter the protocol does not pass, or a property or attribute that neither
    the class has nor its __init__ sets."""
    import ast
    import textwrap

    members, attributes = contract_members()
    init = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
    assigned = {t.attr for node in ast.walk(init) if isinstance(node, ast.Assign)
                for target in node.targets
                for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                and t.value.id == "self"}
    problems = [f"{cls.__name__}.__init__ never sets {a}" for a in attributes
                if a not in assigned and not hasattr(cls, a)]
    for name, want in members.items():
        have = getattr(cls, name, None)
        if isinstance(want, property):  # a property, or a plain attribute set in __init__
            if not isinstance(have, property) and name not in assigned:
                problems.append(f"{cls.__name__}.{name} is missing")
            continue
        if not callable(have) or isinstance(have, property):
            problems.append(f"{cls.__name__}.{name} is missing")
            continue
        wanted = list(inspect.signature(want).parameters.values())
        had = list(inspect.signature(have).parameters.values())
        for i, p in enumerate(wanted):
            if i >= len(had) or had[i].name != p.name:
                problems.append(f"{cls.__name__}.{name}: parameter {i} should be {p.name!r}")
                break
            if p.default is not inspect.Parameter.empty and had[i].default != p.default:
                problems.append(f"{cls.__name__}.{name}: {p.name}'s default should be "
                                f"{p.default!r}")
        extra = [p.name for p in had[len(wanted):] if p.default is inspect.Parameter.empty
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if extra:
            problems.append(f"{cls.__name__}.{name}: requires {extra}, which callers never pass")
    return problems


def check_live_engine(engine) -> None:
    """A built engine has every member of the contract, and the cheap ones answer in kind."""
    from sttrl.errors import UserError
    from sttrl.types import SampleGroup

    members, attributes = contract_members()
    missing = [n for n in list(members) + attributes if not hasattr(engine, n)]
    assert missing == [], missing
    assert engine.max_context is None or engine.max_context > 0
    need = engine.sampling_memory(4, 16, 8)
    assert need is None or (need[0] > 0 and isinstance(need[1], str))
    ids = engine.encode(PROMPT)
    assert ids and all(isinstance(i, int) for i in ids)
    version = engine.policy_version
    [group] = engine.generate_groups(PROMPT, [SampleGroup(2, 1.0, 1.0, 5)], 4)
    assert [s.token_ids for s in group] == \
        [s.token_ids for s in engine.generate(PROMPT, 2, 1.0, 1.0, 4, 5)]
    assert engine.policy_version == version  # sampling changes nothing
    assert isinstance(engine.state_dict(), dict)
    try:
        engine.set_head_hook(None)
    except UserError:  # the scale engine refuses hooks, but never their removal
        raise AssertionError("removing a head hook that is not there must work") from None
    assert engine.head_hook is None


# ---- the CLI's one-line errors ------------------------------------------------------------

def one_line_error(capsys, argv) -> str:
    """Run the CLI in-process; assert exit 2 with one line on stderr; return that line."""
    from sttrl.cli import main as cli_main

    try:
        code = cli_main(argv)
    except SystemExit as exit_:
        code = exit_.code
    # transformers' own bar while it loads the model is not part of the error
    err = re.sub(r"(\rLoading weights[^\r\n]*)+\n", "", capsys.readouterr().err)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def tiny_argv(model, data, out, *extra):
    return ["--model", model, "--data_path", data, "--output_dir", str(out), "--device", "cpu",
            "--n_votes", "4", "--n_train", "4", "--n_eval", "2", "--max_new_tokens", "4",
            "--steps_per_question", "1", "--progress", "false", *extra]
