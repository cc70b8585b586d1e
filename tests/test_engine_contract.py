"""Both engines against the contract, sttrl/engines/base.py's `Engine`: everything the modes,
the methods and run.py use of an engine is there, with the contract's signature. The class
check needs nothing installed; the local engine is also checked live here, the scale engine
live in tests/test_ray_engine.py (on its shared engine, where the scale stack is installed)."""
import ast

from helpers import REPO, check_live_engine, contract_problems, local_engine


def test_the_local_engine_has_the_contract():
    from sttrl.engines.local import LocalEngine

    assert contract_problems(LocalEngine) == []


def test_the_scale_engine_has_the_contract_without_ray():
    """A class check: importing the engine's module needs no Ray, vLLM or DeepSpeed."""
    from sttrl.engines.ray.engine import RayEngine

    assert contract_problems(RayEngine) == []


def test_the_check_sees_a_departure():
    """The checker itself: a missing member, a renamed parameter, a lost default, an extra
    required parameter and an attribute never set are each reported."""
    from sttrl.engines.local import LocalEngine

    class Broken(LocalEngine):
        def __init__(self, settings, model_path):  # sets neither tokenizer nor max_context
            pass

        def generate(self, text, n, temperature, top_p, max_new_tokens, seed):
            pass

        def train(self, batch, loss_fn, loss_kwargs, steps, mini_batches, lrs=None, stop=None):
            pass

        def encode(self, prompt, special):
            pass

    Broken.reset = None
    problems = "\n".join(contract_problems(Broken))
    for expected in ("Broken.reset", "Broken.generate: parameter 1 should be 'prompt'",
                     "mini_batches's default should be None", "requires ['special']",
                     "never sets tokenizer", "never sets max_context"):
        assert expected in problems, expected


def test_a_live_local_engine_answers_as_the_contract_says(tiny_model):
    engine = local_engine(tiny_model)
    check_live_engine(engine)
    assert engine.max_context == 512  # the tiny model's max_position_embeddings
    need, device = engine.sampling_memory(8, 100, 28)
    assert device == "cpu" and need > 8 * 128 * 2 * 2 * 32 * 4  # at least the KV cache


def test_nothing_outside_the_engines_probes_an_engine():
    """The modes, the methods and run.py use the contract, never getattr or hasattr on
    whatever engine they were given (one engine lacking a member would pass unseen). A
    wrapper's `__getattr__` that hands every other name to the engine it wraps (the server's
    cancel-watching engine) is delegation, not a probe."""
    probes = []
    for path in sorted((REPO / "sttrl").rglob("*.py")):
        if "engines" in path.relative_to(REPO / "sttrl").parts:
            continue
        tree = ast.parse(path.read_text())
        delegation = {id(n) for f in ast.walk(tree)
                      if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
                      for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in delegation:
                continue
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr") and node.args \
                    and "engine" in ast.unparse(node.args[0]):
                probes.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert probes == []
