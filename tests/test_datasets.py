import ast
import dataclasses
import json
import operator
import random
import re
from pathlib import Path

import pytest

from sttrl.data import datasets
from sttrl.data.datasets import DATASETS, Example, Question, load_dataset, load_ttt, make_arith, resolve_data_dir
from sttrl.errors import UserError

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
ROWS = {"AIME-TTT": 30, "AMC-TTT": 83, "MATH-TTT": 500, "GSM8K-TTT": 1319, "GPQA-TTT": 198}


def write(tmp_path, content, name="t.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def row(i=0, **kw):
    return {"prompt": f"What is {i} + 1?", "answer": str(i + 1), "source": "toy", "id": i, **kw}


# --- load_ttt ---------------------------------------------------------------------------

def test_load_ttt_reads_rows_and_normalises_ids(tmp_path):
    path = write(tmp_path, [row(0), row(1, id="b")])
    ex = load_ttt(path)
    assert ex == [Example(Question("0", "What is 0 + 1?", "toy", "math"), "1"),
                  Example(Question("b", "What is 1 + 1?", "toy", "math"), "2")]


def test_question_has_no_answer_and_is_frozen():
    fields = {f.name for f in dataclasses.fields(Question)}
    assert fields == {"id", "prompt", "source", "task"}
    q = Question("1", "p", "s", "math")
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.prompt = "other"


def test_numbers_keep_the_file_text(tmp_path):
    path = write(tmp_path, '[{"prompt": "p", "answer": 142.0, "source": "amc", "id": 7},'
                           ' {"prompt": "q", "answer": 1e3, "source": "amc", "id": 8}]')
    ex = load_ttt(path)
    assert [e.answer for e in ex] == ["142.0", "1e3"]
    assert [e.question.id for e in ex] == ["7", "8"]
    assert all(type(e.answer) is str and type(e.question.id) is str for e in ex)


def test_task_from_source_or_field(tmp_path):
    path = write(tmp_path, [row(0, source="gpqa_diamond"), row(1, source="GPQA"), row(2, task="gpqa"), row(3)])
    assert [e.question.task for e in load_ttt(path)] == ["gpqa", "gpqa", "gpqa", "math"]
    with pytest.raises(UserError, match="row 0: 'task' must be one of math, gpqa"):
        load_ttt(write(tmp_path, [row(0, task="code")]))


def test_bad_json_names_line_and_column(tmp_path):
    path = write(tmp_path, '[\n  {"prompt": "p",\n   "answer" "1"}\n]')
    with pytest.raises(UserError, match=r"t\.json: invalid JSON at line 3, column 13"):
        load_ttt(path)


def test_nan_is_rejected(tmp_path):
    with pytest.raises(UserError, match="NaN"):
        load_ttt(write(tmp_path, '[{"prompt": "p", "answer": NaN, "source": "s", "id": 1}]'))


@pytest.mark.parametrize("content, message", [
    ({"prompt": "p"}, "top level is a JSON object; a TTT file is a JSON list"),
    ([], "the list is empty"),
    (["just text"], "row 0 is a JSON string; each row must be an object"),
    ([row(0), {"answer": "1", "source": "s", "id": 5}], "row 1 has no 'prompt'"),
    ([{"prompt": "p", "answer": "1", "id": 5}], "row 0 has no 'source'"),
    ([{"prompt": "p", "answer": "1", "source": "s"}], "row 0 has no 'id'"),
    ([row(0, prompt="  ")], "row 0: 'prompt' must be a non-empty string, got an empty string"),
    ([row(0, prompt=12)], "row 0: 'prompt' must be a non-empty string, got a JSON number"),
    ([row(0, prompt=["a"])], "'prompt' must be a non-empty string, got a JSON list"),
    ([row(0, answer="")], "row 0: 'answer' must be a non-empty string or a number"),
    ([row(0, answer=True)], "'answer' must be a non-empty string or a number, got a JSON boolean"),
    ([row(0, id={"a": 1})], "'id' must be a non-empty string or a number, got a JSON object"),
    ([row(0, source="")], "'source' must be a non-empty string"),
    ([row(0), row(1), row(2, id="1")], "row 2 repeats id '1' of row 1; ids must be unique"),
    ([row(0, id=3), row(1, id="3")], "row 1 repeats id '3' of row 0"),
])
def test_row_errors(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_ttt(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_row_without_an_answer_is_label_free_not_refused(tmp_path):
    # the method needs no labels: such rows load with no reference (pass@1 is not measured)
    for rows in ([{"prompt": "p", "source": "s", "id": 5}], [row(0, answer=None), row(1)]):
        examples = load_ttt(write(tmp_path, rows))
        assert examples[0].answer is None and examples[0].question.prompt
    assert examples[1].answer is not None


def test_missing_file_and_size_bound(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no such file"):
        load_ttt(tmp_path / "nope.json")
    path = write(tmp_path, [row(0)])
    monkeypatch.setattr(datasets, "MAX_FILE_BYTES", 10)
    with pytest.raises(UserError, match="may be at most"):
        load_ttt(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes('[{"prompt": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_ttt(path)


def test_bom_is_accepted_and_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([row(0)]).encode())
    assert len(load_ttt(path)) == 1
    with pytest.raises(UserError, match="nested too deeply"):
        load_ttt(write(tmp_path, "[" * 100_000 + "]" * 100_000))


# --- registry ---------------------------------------------------------------------------

def make_registry(root, name="AIME-TTT", rows=None):
    (root / name).mkdir(parents=True)
    write(root / name, rows or [row(0)], "test.json")
    return root


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("STTRL_DATA_DIR", raising=False)
    assert resolve_data_dir() == Path(datasets.__file__).parents[2] / "data"
    monkeypatch.setenv("STTRL_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_load_by_name_argument_beats_env(tmp_path, monkeypatch):
    arg = make_registry(tmp_path / "arg", rows=[row(0), row(1)])
    env = make_registry(tmp_path / "env", rows=[row(0)])
    monkeypatch.setenv("STTRL_DATA_DIR", str(env))
    assert len(load_dataset("AIME-TTT")) == 1
    assert len(load_dataset("aime-ttt", data_dir=arg)) == 2  # names are case-insensitive


def test_load_by_path(tmp_path):
    path = write(tmp_path, [row(0), row(1)], "mine.json")
    assert len(load_dataset(data_path=path)) == 2
    with pytest.raises(UserError, match="exactly one"):
        load_dataset("AIME-TTT", data_path=path)
    with pytest.raises(UserError, match="exactly one"):
        load_dataset()


def test_unknown_name_lists_known_names():
    with pytest.raises(UserError) as err:
        load_dataset("AIME-2025")
    for name in (*DATASETS, "ARITH-TTT", "ARITH-TTT-L2", "ARITH-TTT-L3"):
        assert name in str(err.value)


def test_missing_registry_file_says_where_and_what_to_do(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("MATH-TTT", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MATH-TTT" / "test.json") in msg
    assert "sttrl prepare" in msg and "--data_dir" in msg and "STTRL_DATA_DIR" in msg


# --- ARITH-TTT --------------------------------------------------------------------------

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expr: str) -> int:
    """Integer arithmetic evaluated from the parse tree, independent of the generator's code."""
    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise AssertionError(f"unexpected node {ast.dump(node)}")
    return walk(ast.parse(expr, mode="eval").body)


def numbers(expr):
    return [int(x) for x in re.findall(r"\d+", expr)]


@pytest.mark.parametrize("name, level", [("ARITH-TTT", 1), ("ARITH-TTT-L2", 2), ("ARITH-TTT-L3", 3)])
def test_arith_answers_and_shapes(name, level):
    ex = load_dataset(name, seed=3)
    assert len(ex) == 100
    assert [e.question.id for e in ex[:2]] == [f"arith-L{level}-0000", f"arith-L{level}-0001"]
    assert len({e.question.prompt for e in ex}) == 100  # distinct questions
    for e in ex:
        m = re.fullmatch(r"What is (.+)\?", e.question.prompt)
        assert m, e.question.prompt
        expr = m[1]
        assert e.answer == str(evaluate(expr)) and int(e.answer) >= 0
        assert e.question.source == "arith" and e.question.task == "math"
        if level == 1:
            assert re.fullmatch(r"\d [-+*] \d", expr)
        elif level == 2:
            assert re.fullmatch(r"\d\d [-+*] \d\d", expr)
        else:
            assert len(re.findall(r"[-+*]", expr)) == 3


def test_arith_is_deterministic_and_leaves_global_random_alone():
    random.seed(123)
    before = random.random()
    random.seed(123)
    a = make_arith(50, seed=7, level=3)
    assert random.random() == before
    assert a == make_arith(50, seed=7, level=3)
    assert [e.question.prompt for e in a] != [e.question.prompt for e in make_arith(50, seed=8, level=3)]
    assert load_dataset("ARITH-TTT", arith_n=5, seed=1) == make_arith(5, seed=1)


def test_arith_more_questions_than_level_one_has():
    # level 1 has about 200 distinct questions; asking for more must still finish
    assert len(make_arith(500, seed=0, level=1)) == 500


@pytest.mark.parametrize("kw", [{"n": 0}, {"n": 2.5}, {"n": True}, {"level": 4}])
def test_arith_bad_arguments(kw):
    with pytest.raises(UserError):
        make_arith(**kw)


# --- the real shared files ---------------------------------------------------------------

@pytest.mark.parametrize("name", DATASETS)
def test_real_shared_files(name):
    if not (SHARED / name / "test.json").is_file():
        pytest.skip(f"{SHARED} is not present")
    ex = load_dataset(name, data_dir=SHARED)
    assert len(ex) == ROWS[name]
    raw = json.loads((SHARED / name / "test.json").read_text(encoding="utf-8"))
    assert [e.answer for e in ex] == [str(r["answer"]) for r in raw]
    assert [e.question.prompt for e in ex] == [r["prompt"] for r in raw]
    tasks = {e.question.task for e in ex}
    assert tasks == ({"gpqa"} if name == "GPQA-TTT" else {"math"})
    if name == "GPQA-TTT":
        assert {e.answer for e in ex} <= set("ABCD")
    if name == "MATH-TTT":
        assert ex[0].question.id.startswith("test/")
