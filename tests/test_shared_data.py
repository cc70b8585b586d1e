"""Extraction and grading over every reference answer of the five shared test sets."""
import json
from pathlib import Path

import pytest

from sttrl.rewards import extract_answer, grade

DATA = Path(__file__).parents[1].parent / "shared" / "data"
SETS = ["AIME-TTT", "AMC-TTT", "MATH-TTT", "GSM8K-TTT", "GPQA-TTT"]


def _rows(name):
    path = DATA / name / "test.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


def _task(name):
    return "gpqa" if name == "GPQA-TTT" else "math"


@pytest.mark.parametrize("name", SETS)
def test_boxed_reference_grades_true(name):
    task = _task(name)
    failures = []
    for row in _rows(name):
        response = f"Working through the problem step by step.\nSo the answer is $\\boxed{{{row['answer']}}}$."
        answer = extract_answer(response, task=task)
        if not grade(answer, row["answer"], task=task):
            failures.append((row["id"], row["answer"], answer))
    assert not failures


@pytest.mark.parametrize("name", SETS)
def test_other_rows_reference_grades_false(name):
    task = _task(name)
    rows = _rows(name)
    pairs = wrong = 0
    for i, row in enumerate(rows):
        other = next((r["answer"] for r in rows[i + 1:] + rows[:i] if r["answer"] != row["answer"]), None)
        if other is None:
            continue
        answer = extract_answer(f"The answer is \\boxed{{{other}}}.", task=task)
        pairs += 1
        wrong += grade(answer, row["answer"], task=task)
    assert pairs and wrong / pairs <= 0.05
