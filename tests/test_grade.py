import importlib
import multiprocessing
import threading
import time

import pytest

from sttrl.errors import UserError
from sttrl.rewards import ANSWER_FORMS, clear_grade_cache, extract_answer, grade, set_grade_timeout

grade_module = importlib.import_module("sttrl.rewards.grade")  # the package's `grade` is the function


@pytest.mark.parametrize("pred, ref", [
    ("142.0", "142"),
    ("\\frac12", "0.5"),
    ("10\\%", "10"),
    ("x=5", "5"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\dfrac{1}{2}", "1/2"),
    ("B", "\\text{(B)}"),
    ("(B)", "\\text{(B)}"),
    ("3\\sqrt{2}", "\\sqrt{18}"),
    ("(1,2)", "(1,2)"),
    ("10080", "10,\\!080"),
    ("18.90", "\\$18.90"),
    ("30", "30^\\circ"),
    ("5.4", "5.4 \\text{ cents}"),
    ("Evelyn", "\\text{Evelyn}"),
    ("1 + \\sqrt{19}, 1 - \\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("0.333333", "\\frac13"),  # math-verify's 6-digit rounding
    ("-.50", "-\\frac{1}{2}"),
])
def test_equivalent(pred, ref):
    assert grade(pred, ref)


@pytest.mark.parametrize("pred, ref", [
    ("141", "142"),
    ("0.33", "\\frac13"),
    ("\\frac{1}{3}", "\\frac{1}{2}"),
    ("(2,1)", "(1,2)"),
    ("\\text{(C)}", "\\text{(B)}"),
    ("\\text{east}", "\\text{even}"),
    ("2\\sqrt{3}", "3\\sqrt{2}"),
    ("", "5"),
    ("$$", "5"),
])
def test_not_equivalent(pred, ref):
    assert not grade(pred, ref)


# --- item 8: answer form ------------------------------------------------------------------------

UNEVALUATED = ["9 - 4", "9-4", "2+3", "\\frac{10}{2}", "\\sqrt{25}", "10/2", "\\frac{5}{1}", "5!", "5x",
               "10^3", "2 \\cdot 2.5"]


@pytest.mark.parametrize("expr", UNEVALUATED)
def test_strict_rejects_unevaluated_expressions(expr):
    ref = "1000" if expr == "10^3" else ("120" if expr == "5!" else "5")
    assert not grade(expr, ref)                    # strict is the default
    assert not grade(ref, expr)                    # and symmetric (vote clusters use grade both ways)
    assert not grade(expr, ref, form="strict")
    assert not grade(ref + ".0", expr, form="strict")


@pytest.mark.parametrize("expr, ref", [
    ("9 - 4", "5"), ("2+3", "5"), ("\\frac{10}{2}", "5"), ("\\sqrt{25}", "5"), ("10/2", "5"),
    ("10^3", "1000"),
])
def test_symbolic_is_the_old_behaviour(expr, ref):
    assert grade(expr, ref, form="symbolic") and grade(ref, expr, form="symbolic")


@pytest.mark.parametrize("pred, ref", [
    ("5", "5.0"), ("-3", "-3"), ("142.0", "142"), ("1,234", "1234"), ("0.5", ".50"), ("$5", "5"),
    ("\\$5", "5"), ("5\\%", "5"), ("\\text{5}", "5"), (" 5 ", "5"), ("5 apples", "5"), ("5 cm", "5"),
    ("5\\text{ cm}", "5"), ("5.4 \\text{ cents}", "5.4"), ("5 \\text{cm}^2", "5"), ("x=5", "5"),
    ("x = 5", "5"), ("+5", "5"), ("30^\\circ", "30"), ("10,\\!080", "10080"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    # reduced fractions are plain numbers: they equal the same value in any plain form
    ("1/2", "\\frac{1}{2}"), ("0.5", "\\frac12"), ("-.50", "-\\frac{1}{2}"),
    ("\\frac{-35}{9}", "-\\frac{35}{9}"),
    ("1.5", "\\frac{3}{2}"), ("0.333333", "\\frac13"),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"), ("\\frac{9}{19}", "\\frac9{19}"),  # MATH-500 forms
    ("\\frac{9}{5}", "1\\frac{4}{5}"), ("137.5", "137 \\frac{1}{2}"),  # mixed numbers are plain numbers
    ("10080", "10, \\!080"),
])
def test_strict_plain_numbers_still_match(pred, ref):
    assert grade(pred, ref) and grade(ref, pred)


@pytest.mark.parametrize("pred, ref", [
    ("\\frac{5}{6}", "\\frac{5}{6}"), ("\\dfrac{5}{6}", "\\frac{5}{6}"),
    ("3\\sqrt{2}", "\\sqrt{18}"), ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"), ("[1,2)", "[1, 2)"),
    ("2/4", "\\frac{2}{4}"), ("2x+2", "2(x+1)"),
])
def test_strict_keeps_symbolic_equivalence_between_non_plain_answers(pred, ref):
    assert grade(pred, ref, form="strict")


def test_strict_fraction_against_an_integer_is_wrong():
    assert not grade("\\frac{10}{2}", "5") and not grade("2/4", "1/2")
    assert not grade("2\\frac{2}{4}", "2.5")  # a mixed number's fraction must be proper and reduced
    assert grade("\\frac{10}{2}", "5", form="symbolic")


def test_forms_and_unknown_form():
    assert ANSWER_FORMS == ("strict", "symbolic")
    with pytest.raises(UserError, match="strict, symbolic"):
        grade("5", "5", form="loose")
    assert grade("B", "\\text{(B)}", task="gpqa", form="strict")  # gpqa letters are unaffected
    assert grade("B", "(B)", task="gpqa", form="symbolic")


def test_cache_keys_on_the_form():
    clear_grade_cache()
    assert not grade("9-4", "5", form="strict")
    assert grade("9-4", "5", form="symbolic")
    assert not grade("9-4", "5", form="strict")


# --- item 10: comma lists are not thousands ----------------------------------------------------

@pytest.mark.parametrize("form", ANSWER_FORMS)
def test_comma_lists_are_not_thousands(form):
    assert not grade("32, 349", "32349", form=form)
    assert not grade("32349", "32, 349", form=form)
    assert not grade("12, 345", "12345", form=form)
    assert grade("12,345", "12345", form=form)
    assert grade("1,234,567", "1234567", form=form)
    assert grade("32, 349", "32,349") is False
    assert grade("32, 349", "32,  349", form=form)  # the same list
    assert grade("1, 2", "1,2", form=form)          # not a thousands group either way


def test_none_and_gpqa():
    assert not grade(None, "5")
    assert not grade("5", None)
    assert grade("C", "C", task="gpqa")
    assert grade("\\text{(c)}", "C", task="gpqa")
    assert not grade("B", "C", task="gpqa")
    assert not grade("Deuterium", "D", task="gpqa")
    with pytest.raises(UserError, match="allowed"):
        grade("1", "1", task="chess")


def test_cache_hits():
    clear_grade_cache()
    grade("\\sqrt{8}", "2\\sqrt{2}")
    grade("\\sqrt{8}", "2\\sqrt{2}")
    info = grade_module._grade_math.cache_info()
    assert info.hits >= 1 and info.misses == 1


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("response", [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{9^9^9^9}",
    "\\boxed{2^{1000000000}}",
    "\\boxed{123456789!}",
    "\\boxed{" + "{" * 200 + "1" + "}" * 200 + "}",
    "\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}",
])
def test_hostile_answers_are_refused_quickly(response):
    answer = extract_answer(response)
    assert answer is not None and grade_module._too_hard(answer)
    result, seconds = _timed(grade, answer, "5")
    assert result is False and seconds < 5


def test_megabyte_strings():
    big = "1" * 1_000_000
    assert _timed(grade, big, "5")[0] is False
    assert _timed(grade, "5", big)[0] is False
    assert grade(big, big)  # identical strings are equal, at any length
    result, seconds = _timed(grade, big + "+x", big)
    assert result is False and seconds < 5


HANGS = "x + 9^{(9)^{9}}"  # passes every pre-screen, then sympy computes 9**387420489


def test_worker_timeout_from_a_thread():
    """The hard bound: the worker is killed, from a non-main thread, retried once with the longer
    budget, and then only the pair is refused (an ordinary-size string is not blacklisted)."""
    assert not grade_module._too_hard(HANGS)
    clear_grade_cache()
    set_grade_timeout(0.2)
    out = {}
    try:
        thread = threading.Thread(target=lambda: out.update(r=_timed(grade, HANGS, "y+1")))
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
        result, seconds = out["r"]
        assert result is False and seconds < 5
        assert HANGS not in grade_module._hung and grade_module._pair_hung(HANGS, "y+1")
        # The pair is refused from then on, also under the other form (a separate cache entry).
        assert _timed(lambda: grade(HANGS, "y+1", form="symbolic"))[1] < 0.5
        # The replacement worker still grades (with the default bound: a fresh worker's first
        # symbolic comparison can take over 0.5 s on a loaded machine).
        set_grade_timeout(grade_module.DEFAULT_TIMEOUT_S)
        assert grade("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
    finally:
        set_grade_timeout(grade_module.DEFAULT_TIMEOUT_S)
        clear_grade_cache()


class _FakeWorkers:
    """Stands in for the worker pool: replies from a script keyed on (pred, ref, attempt)."""

    def __init__(self, script):
        self.script = script  # (pred, ref) -> list of replies, one per attempt
        self.calls = []

    def __call__(self, pred, ref, timeout):
        attempt = sum(1 for p, r, _ in self.calls if (p, r) == (pred, ref))
        self.calls.append((pred, ref, timeout))
        replies = self.script[(pred, ref)]
        return replies[min(attempt, len(replies) - 1)]


SLOW, HUNG_PARSE_PRED, HUNG_COMPARE = ["g", "p", "1"], ["g", "timeout"], ["g", "p", "timeout"]


def test_slow_comparison_is_retried_with_a_larger_budget(monkeypatch):
    clear_grade_cache()
    set_grade_timeout(0.5)
    legit = "F_n = \\sum_{k=0}^{n-1} F_{n-k-1} F_k"
    reordered = "F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}"
    fake = _FakeWorkers({(legit, reordered): [HUNG_PARSE_PRED, SLOW],
                         (legit, "F_n"): [SLOW]})
    monkeypatch.setattr(grade_module, "_ask_worker", fake)
    try:
        assert grade(legit, reordered)  # timed out once, then passed with the 4x budget
        assert [t for _, _, t in fake.calls] == [0.5, 0.5 * grade_module.RETRY_FACTOR]
        assert legit not in grade_module._hung
        assert grade(legit, "F_n", form="symbolic")  # the string is still graded elsewhere
    finally:
        set_grade_timeout(grade_module.DEFAULT_TIMEOUT_S)
        clear_grade_cache()


def test_timeout_twice_blacklists_the_pair_not_the_string(monkeypatch):
    clear_grade_cache()
    slow = "\\sum_{k=0}^{n} k^2"
    fake = _FakeWorkers({(slow, "y"): [HUNG_PARSE_PRED], (slow, "z"): [SLOW], (slow, "w"): [HUNG_PARSE_PRED],
                         (slow, "v"): [SLOW], ("a+b", "b+a"): [HUNG_COMPARE], ("a+b", "c"): [SLOW]})
    monkeypatch.setattr(grade_module, "_ask_worker", fake)
    try:
        assert not grade(slow, "y") and len(fake.calls) == 2  # one retry
        assert slow not in grade_module._hung and grade_module._pair_hung(slow, "y")
        assert grade_module._pair_hung("y", slow)  # either order
        assert not grade("y", slow, form="symbolic") and len(fake.calls) == 2  # refused, no worker
        assert grade(slow, "z") and len(fake.calls) == 3  # the string is not refused elsewhere
        # A second pair whose retry hung in this same string's parse: now the string is refused
        # (the hostile-input bound: one hostile sample costs two pairs, not one per comparison).
        assert not grade(slow, "w") and len(fake.calls) == 5
        assert slow in grade_module._hung
        assert not grade(slow, "v") and len(fake.calls) == 5
        # A hang in the comparison itself blames neither string.
        assert not grade("a+b", "b+a") and len(fake.calls) == 7
        assert grade("a+b", "c") and "a+b" not in grade_module._hung
    finally:
        clear_grade_cache()
    assert not grade_module._pair_hung(slow, "y") and slow not in grade_module._hung


def test_oversized_string_is_blacklisted_after_one_timeout(monkeypatch):
    clear_grade_cache()
    big = "+".join(["x"] * (grade_module.ORDINARY_CHARS // 2 + 1))
    assert len(big) > grade_module.ORDINARY_CHARS and not grade_module._too_hard(big)
    fake = _FakeWorkers({(big, "y"): [HUNG_PARSE_PRED], (big, "z"): [SLOW]})
    monkeypatch.setattr(grade_module, "_ask_worker", fake)
    try:
        assert not grade(big, "y") and len(fake.calls) == 1  # no retry
        assert big in grade_module._hung
        assert not grade(big, "z") and len(fake.calls) == 1
    finally:
        clear_grade_cache()


def test_concurrent_threads():
    pairs = [("\\sqrt{12}", "2\\sqrt{3}", True), ("\\pi/3", "\\frac{\\pi}{3}", True),
             ("\\sqrt{12}", "3\\sqrt{2}", False), ("x^2+1", "1+x^2", True)] * 3
    clear_grade_cache()
    results = [None] * len(pairs)

    def work(i):
        results[i] = grade(pairs[i][0], pairs[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [expected for _, _, expected in pairs]


def _grade_in_child(queue):
    queue.put((len(grade_module._idle), grade("\\sqrt{50}", "5\\sqrt{2}")))


def test_forked_child_uses_its_own_worker():
    assert grade("\\sqrt{27}", "3\\sqrt{3}")  # the parent has a worker before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_grade_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == (0, True)  # forgot the parent's workers, started its own
    child.join(timeout=30)
    assert grade("\\sqrt{32}", "4\\sqrt{2}")  # and the parent's worker is untouched
