"""The hub-to-TTT conversions, on invented rows shaped like the hub's. No network."""
import json
import sys

import pytest

from sttrl.data import load_ttt, prepare
from sttrl.data.prepare import convert_aime, convert_amc, convert_gpqa, convert_gsm8k, convert_math500
from sttrl.errors import UserError


def aops(exam, n):
    return f"https://artofproblemsolving.com/wiki/index.php/2024_AIME_{exam}_Problems/Problem_{n}"


def test_aime_contest_order_and_padded_answers():
    rows = [
        {"id": 60, "problem": "Second exam, first problem.", "answer": "7", "url": aops("II", 1), "year": "2024"},
        {"id": 61, "problem": "First exam, second problem.", "answer": "25", "url": aops("I", 2), "year": "2024"},
        {"id": 62, "problem": "First exam, first problem.", "answer": "204", "url": aops("I", 1), "year": "2024"},
    ]
    assert convert_aime(rows) == [
        {"prompt": "First exam, first problem.", "answer": "204", "source": "aime", "id": "0"},
        {"prompt": "First exam, second problem.", "answer": "025", "source": "aime", "id": "1"},
        {"prompt": "Second exam, first problem.", "answer": "007", "source": "aime", "id": "2"},
    ]


def test_aime_without_urls_keeps_hub_order():
    rows = [{"problem": "b", "answer": "2"}, {"problem": "a", "answer": "1"}]
    assert [r["prompt"] for r in convert_aime(rows)] == ["b", "a"]


def test_amc_float_answers():
    rows = [{"id": 0, "problem": "Invented problem one.", "answer": 142.0, "url": "u"},
            {"id": 1, "problem": "Invented problem two.", "answer": -4.0, "url": "u"}]
    assert convert_amc(rows) == [
        {"prompt": "Invented problem one.", "answer": "142.0", "source": "amc", "id": "0"},
        {"prompt": "Invented problem two.", "answer": "-4.0", "source": "amc", "id": "1"},
    ]


def test_math500_uses_unique_id():
    rows = [{"problem": "Compute $1+1$.", "solution": "It is $\\boxed{2}$.", "answer": "2",
             "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}]
    assert convert_math500(rows) == [
        {"prompt": "Compute $1+1$.", "answer": "2", "source": "math", "id": "test/algebra/1.json"}]


def test_gsm8k_answer_after_hashes_without_commas():
    rows = [{"question": "A farmer has 1,000 hens and buys 200 more. How many now?",
             "answer": "1,000 + 200 = <<1000+200=1200>>1,200\n#### 1,200"},
            {"question": "Tom has 3 apples.", "answer": "So 3.\n####  3 "}]
    assert convert_gsm8k(rows) == [
        {"prompt": rows[0]["question"], "answer": "1200", "source": "gsm8k", "id": "0"},
        {"prompt": "Tom has 3 apples.", "answer": "3", "source": "gsm8k", "id": "1"},
    ]
    with pytest.raises(UserError, match="row 0 answer has no '####'"):
        convert_gsm8k([{"question": "q", "answer": "no marker"}])


def gpqa_rows(n):
    return [{"Question": f"  Invented question {i}?\n", "Correct Answer": f"right {i}",
             "Incorrect Answer 1": f"wrong {i}a", "Incorrect Answer 2": f"wrong {i}b",
             "Incorrect Answer 3": f"wrong {i}c ", "Record ID": f"rec{i}"} for i in range(n)]


def test_gpqa_options_and_letter():
    out = convert_gpqa(gpqa_rows(20))
    letters = set()
    for i, r in enumerate(out):
        question, options = r["prompt"].split("\n\n")
        assert question == f"Invented question {i}?"
        lines = options.split("\n")
        assert [line[:3] for line in lines] == ["A. ", "B. ", "C. ", "D. "]
        assert sorted(line[3:] for line in lines) == sorted([f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c"])
        assert lines["ABCD".index(r["answer"])] == f"{r['answer']}. right {i}"
        assert (r["source"], r["id"]) == ("gpqa_diamond", str(i))
        letters.add(r["answer"])
    assert letters == set("ABCD")  # the shuffle really moves the correct option around
    assert convert_gpqa(gpqa_rows(20)) == out  # fixed seed: same letters every run
    assert convert_gpqa(gpqa_rows(20), seed=1) != out


@pytest.mark.parametrize("convert, rows, missing", [
    (convert_aime, [{"problem": "p"}], "answer"),
    (convert_amc, [{"answer": 1.0}], "problem"),
    (convert_math500, [{"problem": "p", "answer": "1"}], "unique_id"),
    (convert_gsm8k, [{"question": "q"}], "answer"),
    (convert_gpqa, [{"Question": "q", "Correct Answer": "a"}], "Incorrect Answer 1"),
])
def test_missing_hub_fields(convert, rows, missing):
    with pytest.raises(UserError, match=f"hub row 0 has no '{missing}'"):
        convert(rows)


def test_main_writes_loadable_files(tmp_path, monkeypatch, capsys):
    fixtures = {"GSM8K-TTT": [{"question": "Tom has 3 apples.", "answer": "So 3.\n#### 3"}],
                "GPQA-TTT": gpqa_rows(3)}
    monkeypatch.setattr(prepare, "fetch", lambda name: fixtures[name])
    assert prepare.main(["--out", str(tmp_path), "--only", "gsm8k-ttt", "GPQA-TTT"]) == 0
    gsm = load_ttt(tmp_path / "GSM8K-TTT" / "test.json")
    assert gsm[0].answer == "3" and gsm[0].question.task == "math"
    gpqa = load_ttt(tmp_path / "GPQA-TTT" / "test.json")
    assert len(gpqa) == 3 and all(e.question.task == "gpqa" for e in gpqa)
    assert sorted(p.name for p in (tmp_path / "GPQA-TTT").iterdir()) == ["test.json"]  # no .tmp left
    out = capsys.readouterr().out
    assert "GSM8K-TTT: wrote 1 rows" in out and "expected 1319" in out


def test_main_default_out_is_the_registry_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STTRL_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(prepare, "fetch", lambda name: [{"question": "q", "answer": "#### 1"}])
    prepare.main(["--only", "GSM8K-TTT"])
    assert json.loads((tmp_path / "GSM8K-TTT" / "test.json").read_text())[0]["answer"] == "1"


def test_main_rejects_unknown_names():
    with pytest.raises(UserError, match="choose from AIME-TTT"):
        prepare.main(["--only", "ARITH-TTT"])


def test_write_replaces_atomically(tmp_path):
    path = tmp_path / "X" / "test.json"
    prepare.write_ttt([{"prompt": "old", "answer": "1", "source": "s", "id": "0"}], path)
    prepare.write_ttt([{"prompt": "new", "answer": "1", "source": "s", "id": "0"}], path)
    assert load_ttt(path)[0].question.prompt == "new"


def test_fetch_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match="pip install datasets"):
        prepare.fetch("GSM8K-TTT")


def test_fetch_network_failure(monkeypatch):
    class FakeDatasets:
        @staticmethod
        def load_dataset(*args, **kwargs):
            raise ConnectionError("no route to host\nsecond line")
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    with pytest.raises(UserError, match="could not download openai/gsm8k") as err:
        prepare.fetch("GSM8K-TTT")
    assert "\n" not in str(err.value)
