"""The .jsonl reader every resume goes through (results.jsonl, steps.jsonl): no byte sequence
other than a final fragment that is not a complete record ever removes a record."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sttrl.errors import UserError
from sttrl.files import dumps, read_jsonl

RECORDS = st.lists(st.fixed_dictionaries({
    "id": st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
    "x": st.integers(-10**6, 10**6), "y": st.one_of(st.none(), st.floats(allow_nan=False,
                                                                         allow_infinity=False))}),
    max_size=5)
# a mutation: insert one of these bytes at a position, or cut the file at a position
EDITS = st.lists(st.tuples(st.sampled_from([b"\r", b"\n", b"\0", b"\r\n", None]),
                           st.floats(0, 1)), max_size=4)


def mutate(data: bytes, edits) -> bytes:
    for byte, where in edits:
        at = int(where * len(data))
        data = data[:at] if byte is None else data[:at] + byte + data[at:]
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS, edits=EDITS)
def test_only_a_torn_last_fragment_is_ever_removed(tmp_path, records, edits):
    path = tmp_path / "r.jsonl"
    data = mutate(b"".join(dumps(r).encode() + b"\n" for r in records), edits)
    path.write_bytes(data)
    head, _, fragment = data.rpartition(b"\n")
    complete = [line for line in data.split(b"\n")[:-1] if line.strip()]
    try:
        got = read_jsonl(path, repair=True, numbered=True)
    except UserError as err:
        assert path.read_bytes() == data  # refused: nothing touched
        assert " line " in str(err) and "\n" not in str(err)
        return
    try:
        last = json.loads(fragment.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        last = None
    kept = isinstance(last, dict)
    # every complete line is a record, and so is a last fragment that parses as one
    assert len(got) == len(complete) + kept
    assert [r for _, r in got] == [json.loads(x.decode("utf-8")) for x in complete] + ([last] if kept else [])
    prefix = data[:len(data) - len(fragment)]
    assert path.read_bytes() == prefix + (fragment + b"\n" if kept else b"")
    # the repaired file reads back the same, and needs no more repair
    assert read_jsonl(path, repair=True, numbered=True) == got
    if not any(byte for byte, _ in edits):  # cuts only: a prefix of the records survives
        assert [r for _, r in got] == records[:len(got)]


def test_a_stray_carriage_return_removes_nothing(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a",\r "x": 1}\n{"id": "b"}\n{"id": "c"}\n')
    assert [r["id"] for r in read_jsonl(path, repair=True)] == ["a", "b", "c"]
    # inside a string it is a bad line, refused by number, the file unchanged
    data = b'{"id": "a"}\n{"id": "b\rx"}\n{"id": "c"}\n'
    path.write_bytes(data)
    with pytest.raises(UserError, match="line 2"):
        read_jsonl(path, repair=True)
    assert path.read_bytes() == data


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for r in read_jsonl(path, repair=True)] == ["a", "b"]
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'


def test_a_torn_last_fragment_is_removed_and_said(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "x')
    assert [r["id"] for r in read_jsonl(path, repair=True)] == ["a"]
    assert path.read_bytes() == b'{"id": "a"}\n'
    assert "removed an incomplete last line" in capsys.readouterr().err


def test_a_middle_line_that_fails_its_check_is_refused_unchanged(tmp_path):
    path = tmp_path / "r.jsonl"
    data = b'{"id": "a"}\n{"no": 1}\n{"id": "c"}'
    path.write_bytes(data)
    with pytest.raises(UserError, match=r"line 2 is not a thing \(no id\)"):
        read_jsonl(path, repair=True, problem=lambda r: None if "id" in r else "no id",
                   kind="thing")
    assert path.read_bytes() == data
