import time

import pytest

from sttrl.errors import UserError
from sttrl.rewards import extract_answer
from sttrl.rewards.extract import MAX_ANSWER_CHARS


@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{5}.", "5"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{\\{1\\pm\\sqrt{5},-2\\}}", "\\{1\\pm\\sqrt{5},-2\\}"),  # escaped braces do not close the box
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\fbox{7}", "7"),
    ("$\\boxed 5$.", "5"),
    ("\\boxed {  42 }", "42"),
    ("The answer is \\boxed{12", None),  # truncated: the box decides, no guess from fallbacks
    ("\\boxed{}", None),
])
def test_boxed(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The final answer is $5$.", "5"),
    ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
    ("final answer: 42", "42"),
    ("The final answer is **17**.", "17"),
    ("The final answer is therefore $x=3$ for sure", "x=3"),
    ("The final answer is $$\n2\\pi\n$$", "2\\pi"),
    ("The final answer is \\(7\\)", "7"),
])
def test_final_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("I think it is 3, or maybe 4", "4"),
    ("we get -7 in the end", "-7"),
    ("about 3.25 metres", "3.25"),
    ("a ratio of 3/4.", "3/4"),
    ("total 1,234 apples", "1234"),
    ("that is 1,234,567.5", "1234567.5"),
    ("pages 3-4", "4"),  # a hyphen after a digit is a range, not a sign
    ("H2O only", None),  # digits inside words are not numbers
    ("no digits here", None),
    ("", None),
])
def test_last_number(text, expected):
    assert extract_answer(text) == expected


def test_order_and_flags():
    text = "The final answer is 7. Check: 8 \\boxed{9} and 10"
    assert extract_answer(text) == "9"
    assert extract_answer(text, boxed=False) == "7"
    assert extract_answer(text, boxed=False, final_answer=False) == "10"
    assert extract_answer(text, boxed=False, final_answer=False, last_number=False) is None
    assert extract_answer("only 5 here", last_number=False) is None


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{C}", "C"),
    ("\\boxed{\\text{(C)}}", "C"),
    ("\\boxed{(b)}", "B"),
    ("\\boxed{C) 3.5 GeV}", "C"),
    ("\\boxed{Deuterium}", None),  # never the first letter of a word
    ("The answer is (B).", "B"),
    ("The answer is (B). This answer is final.", "B"),
    ("**Answer:** D", "D"),
    ("Answer: $\\text{A}$", "A"),
    ("Options A and B fail, so D wins", "D"),
    ("BAD CAD DAB", None),  # letters inside words never count
    ("the answer is a function", None),
])
def test_gpqa(text, expected):
    assert extract_answer(text, task="gpqa") == expected


def test_gpqa_flags():
    assert extract_answer("Answer: B, though C", task="gpqa") == "B"
    assert extract_answer("Answer: B, though C", task="gpqa", final_answer=False) == "C"
    assert extract_answer("though C", task="gpqa", last_number=False) is None


def test_unknown_task():
    with pytest.raises(UserError, match="math, gpqa"):
        extract_answer("5", task="poetry")


def test_overlong_answers_are_none_not_truncated():
    inside = "1" * (MAX_ANSWER_CHARS + 1)
    assert extract_answer(f"\\boxed{{{inside}}}") is None
    assert extract_answer(f"The final answer is ${inside}$") is None
    assert extract_answer(f"\\boxed{{{'1' * MAX_ANSWER_CHARS}}}") == "1" * MAX_ANSWER_CHARS


@pytest.mark.parametrize("text", [
    "\\boxed{" * 150_000,  # 1 MB of unclosed boxes
    "x " * 500_000 + "\\boxed{" + "{" * 200 + "1" + "}" * 200 + "}",
    "final answer is" + " " * 1_000_000,
    "1," * 500_000,
    "9" * 1_000_000,
    "answer" + " " * 1_000_000 + "x",
    "answer is " * 100_000,
    "A " * 500_000,
])
@pytest.mark.parametrize("task", ["math", "gpqa"])
def test_hostile_inputs_are_fast(text, task):
    start = time.perf_counter()
    extract_answer(text, task=task)
    assert time.perf_counter() - start < 5
