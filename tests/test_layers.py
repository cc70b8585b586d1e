"""The package's import graph: data flows one way, so no module imports from a layer above it,
and no import cycle exists (imports inside functions count too)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sttrl"

# Bottom to top. A module may import from its own layer and the layers below it.
LAYERS = [
    ("sttrl", "sttrl.types", "sttrl.errors", "sttrl.files"),  # records, errors, file writing
    ("sttrl.data", "sttrl.rewards"),  # questions and prompts; answers, grading, votes, rewards
    ("sttrl.algorithms",),  # the methods: rewards -> update, and the registry
    ("sttrl.engines",),  # local and scale engines: generate, train, reset (given their settings)
    ("sttrl.config", "sttrl.config_rules", "sttrl.parts"),  # the options, their rules, the parts
    ("sttrl.reporting",),  # results files, summaries, the report
    ("sttrl.modes",),  # the per-question and dataset loops
    ("sttrl.run", "sttrl.cli", "sttrl.outdir", "sttrl.serve"),  # one run, its folder; the command line; the server
]


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    assert level is not None, f"{module} is in no declared layer"
    return level


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every sttrl module this file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sttrl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sttrl"):
            found.add(node.module)
            # `from sttrl.algorithms import ttrl` imports the submodule sttrl.algorithms.ttrl
            for a in node.names:
                if (PACKAGE.parent / (node.module + "." + a.name).replace(".", "/")).with_suffix(
                        ".py").exists():
                    found.add(f"{node.module}.{a.name}")
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in sorted(graph().items()) for t in sorted(targets)
              if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    edges = {m: {t for t in ts if t in edges and t != m} for m, ts in edges.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(m, path):
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself: an engine importing a mode is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sttrl.modes.question import run_questions\n")
    targets = imports(bad)
    assert "sttrl.modes.question" in targets
    assert layer_of("sttrl.modes.question") > layer_of("sttrl.engines.local")


def test_files_stay_short():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "files over 400 lines: " + ", ".join(long)
