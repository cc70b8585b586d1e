import importlib
import multiprocessing
import threading
import time

import pytest

from sttrl.errors import UserError
from sttrl.rewards import clear_grade_cache, extract_answer, grade, set_grade_timeout

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
    """The hard bound: the worker is killed, from a non-main thread, and the string is remembered."""
    assert not grade_module._too_hard(HANGS)
    clear_grade_cache()
    set_grade_timeout(0.5)
    out = {}
    try:
        thread = threading.Thread(target=lambda: out.update(r=_timed(grade, HANGS, "5")))
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
        result, seconds = out["r"]
        assert result is False and seconds < 5
        # Its parse hung, so every later comparison refuses it without asking a worker.
        assert _timed(grade, HANGS, "6")[1] < 0.5
        # The replacement worker still grades (with the default bound: a fresh worker's first
        # symbolic comparison can take over 0.5 s on a loaded machine).
        set_grade_timeout(grade_module.DEFAULT_TIMEOUT_S)
        assert grade("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
    finally:
        set_grade_timeout(grade_module.DEFAULT_TIMEOUT_S)
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
