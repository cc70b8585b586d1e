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


# --- item 9: "Final Answer: <sentence>" takes the value the sentence commits to ---------------

@pytest.mark.parametrize("text, expected", [
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("Final Answer: The value of $ABCDEFGH$ is 120.", "120"),
    ("The final answer is: the domain of $f(x)$ is 19", "19"),
    ("Final Answer: Jane started growing Sphere 3 hours ago.", "3"),
    ("Final Answer: the area is $\\frac{3}{4}$ square units.", "\\frac{3}{4}"),
    ("Final Answer: so we get x = 7 in the end.", "7"),
    ("Final Answer: we have 3 boxes and the total weight is 12 kg.", "12"),
    ("Final Answer: Jane has $2\\sqrt{3}$ apples", "2\\sqrt{3}"),
    # short final answers keep working
    ("Final Answer: $\\frac{1}{2}$", "\\frac{1}{2}"),
    ("The final answer is 42", "42"),
    ("Final Answer: x^2+1", "x^2+1"),
    ("Final Answer: 2\\sqrt{3}", "2\\sqrt{3}"),
    ("Final Answer: Evelyn", "Evelyn"),
    ("Final Answer: 5 apples.", "5 apples"),
    ("Final Answer: x \\geq 5", "x \\geq 5"),
    ("Final Answer: x >= 5", "x >= 5"),
    ("Final Answer: The answer is Evelyn.", "Evelyn"),
    ("Final Answer: The value of x is 5, which is odd.", "5"),  # the last "is" with a value
    ("Final Answer: The answer is 1, 2, 3.", "1, 2, 3"),         # a list stays one answer
    ("Final Answer: The answer is (1, 2).", "(1, 2)"),
    ("Final Answer: 5 is the answer", "5"),
])
def test_final_answer_sentence(text, expected):
    assert extract_answer(text) == expected


# --- item 11: the last number inside a math span returns the span -----------------------------

@pytest.mark.parametrize("text, expected", [
    ("The answer is $\\frac{5}{6}$", "\\frac{5}{6}"),
    ("so it is $10^3$", "10^3"),
    ("which gives $\\sqrt{16}$.", "\\sqrt{16}"),
    ("so \\(\\frac{5}{6}\\) it is", "\\frac{5}{6}"),
    ("hence $x = \\frac{5}{6}$", "\\frac{5}{6}"),   # the span's value after its last "="
    ("we get $3 + 4 = 7$ apples", "7"),
    ("$$\\frac{7}{8}$$", "\\frac{7}{8}"),
    ("costs \\$5 and \\$7", "7"),                    # escaped dollars are money, not math
    ("$x$ is 5", "5"),                               # the number is outside the span
    ("an unclosed $ 5", "5"),
])
def test_last_number_inside_math_span(text, expected):
    assert extract_answer(text) == expected


def test_last_number_span_too_long_falls_back_to_the_number():
    text = "$" + "x+" * MAX_ANSWER_CHARS + "9$"
    assert extract_answer(text) == "9"


# --- item 13: gsm8k is a task name (graded as math) --------------------------------------------

def test_gsm8k_task():
    from sttrl.rewards.extract import check_task
    assert check_task("gsm8k") == "math" and check_task("math") == "math"
    assert extract_answer("so \\boxed{18}", task="gsm8k") == "18"
    assert extract_answer("The answer is 18 dollars", task="gsm8k") == "18"
    with pytest.raises(UserError, match="math, gpqa, gsm8k"):
        check_task("aime")


@pytest.mark.parametrize("text", [
    "Final Answer: " + "word " * 200_000,
    "Final Answer: " + "is " * 300_000,
    "Final Answer: " + "$x$ " * 250_000,
    "$" + "1+" * 500_000,
    "$1$" * 300_000,
    "\\(" * 400_000 + "1",
    "$$" * 400_000 + "1",
])
def test_hostile_sentences_and_spans_are_fast(text):
    start = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - start < 5
