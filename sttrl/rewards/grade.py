"""Decide whether a predicted answer equals a reference answer.

math: a cheap comparison first (normalised strings, then exact rationals), then math-verify for
whatever that cannot settle. Model output is hostile (a 1 MB string, \\boxed{9^{9^{9^{9}}}}),
so math-verify never runs in this process: it runs in child processes (verify_worker.py) that
are killed and replaced when one request takes longer than the grade timeout (2 s by default,
set_grade_timeout changes it). Killing a process is the only bound that also holds when the
time goes into C code (sympy's big-integer arithmetic ignores signals) and when grade is
called off the main thread, where math-verify's own signal.alarm timeout cannot work.
Cheap pre-screens (length, nesting depth, numeric power towers, huge exponents/factorials)
reject the obvious cases before they cost a timeout, and a string whose parse timed out once
is refused from then on, so one hostile sample costs one timeout, not one per comparison.
gpqa: the choice letters must be equal.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from sttrl.rewards.extract import MAX_ANSWER_CHARS, check_task, letter_of

DEFAULT_TIMEOUT_S = 2.0  # 10x the slowest real MATH grade on a cold worker (~0.16 s)
STARTUP_TIMEOUT_S = 60.0  # importing sympy on a busy machine; not counted in the grade timeout
MAX_DEPTH = 20  # bracket nesting; real answers stay under 6
MAX_WORKERS = os.cpu_count() or 1  # concurrent graders beyond this wait for a free worker

_timeout_s = DEFAULT_TIMEOUT_S
_hung: set[str] = set()  # strings whose parse ran past the timeout once


def set_grade_timeout(seconds: float) -> None:
    """Bound, in seconds, on one math-verify request (a parse or comparison that hangs)."""
    global _timeout_s
    if not seconds > 0:
        raise ValueError(f"grade timeout must be > 0 seconds, got {seconds!r}")
    _timeout_s = float(seconds)


def clear_grade_cache(workers: bool = False) -> None:
    """Forget cached grades and hung strings; workers=True also empties the idle workers'
    parse caches (the benchmark's cold mode)."""
    _grade_math.cache_clear()
    _hung.clear()
    if workers:
        with _idle_lock:
            for worker in _idle:
                worker.ask(["clear"], STARTUP_TIMEOUT_S)


def grade(pred: str | None, reference: str | None, task: str = "math") -> bool:
    """True when pred is equivalent to reference. None on either side is False; nothing is eval'ed."""
    check_task(task)
    if pred is None or reference is None:
        return False
    pred, reference = str(pred), str(reference)
    if task == "gpqa":
        letter = letter_of(pred)
        return letter is not None and letter == letter_of(reference)
    if pred == reference:
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS:
        return False  # also keeps megabyte strings out of the cache
    return _grade_math(pred, reference)


@lru_cache(maxsize=1 << 16)
def _grade_math(pred: str, ref: str) -> bool:
    a, b = _normalize(pred), _normalize(ref)
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = _rational(a), _rational(b)
    if x is not None and y is not None:
        if x == y:
            return True
        # math-verify rounds decimals and reads percentages, so only exact forms may settle "unequal" here.
        if "." not in a + b and "%" not in pred + ref:
            return False
    if pred in _hung or ref in _hung or _too_hard(pred) or _too_hard(ref):
        return False
    return _verify_in_worker(pred, ref)


# --- the cheap comparison -------------------------------------------------------------------

_DOLLAR = re.compile(r"(?<!\\)\$")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf)\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_SPACING = re.compile(r"(?<!\\)\\[!,;: ]")  # \! \, \; \: \<space>, but not the "\\" of "\\ 0"
_DROPPED = ("~", "^\\circ", "^{\\circ}", "\\circ", "°", "\\%", "%", "\\$")
_FRAC_DIGITS = re.compile(r"\\frac(\d)(\d)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ASSIGNMENT = re.compile(r"[A-Za-z]=([^=]+)")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(r"(-?)(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def _normalize(s: str) -> str:
    """Formatting-only rewrites, each of which math-verify also accepts as equal."""
    s = _DOLLAR.sub("", s)
    s = _TEXT.sub(r"\1", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACING.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for junk in _DROPPED:
        s = s.replace(junk, "")
    s = "".join(s.split()).rstrip(".")
    s = _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    m = _ASSIGNMENT.fullmatch(s)  # "x=5" states the value 5
    if m:
        s = m.group(1)
    m = _PAREN_LETTER.fullmatch(s)  # "(B)" after \text{(B)} lost its wrapper
    if m:
        s = m.group(1)
    if _DECIMAL.fullmatch(s):  # "142.0" -> "142", "-.50" -> "-0.5", exactly (no float)
        sign = "-" if s.startswith("-") else ""
        whole, _, frac = s.lstrip("-").partition(".")
        whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
        s = ("" if whole == "0" and not frac else sign) + whole + ("." + frac if frac else "")
    return s


def _rational(s: str) -> Fraction | None:
    if len(s) > 100:  # int() refuses very long digit strings anyway
        return None
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    m = _FRACTION.fullmatch(s)
    if m is None:
        return None
    sign, a, b, c, d = m.groups()
    num, den = (a, b) if a is not None else (c, d)
    return Fraction(int(sign + num), int(den)) if int(den) else None


# --- pre-screens: reject what would only burn a timeout --------------------------------------

_TOWER = re.compile(r"\^[{(]?[\d.]+\^")  # 9^{9^{9}}, 9^9^9: numeric power towers
_BIG_EXPONENT = re.compile(r"\^[{(]?\+?\d{6,}")
_BIG_FACTORIAL = re.compile(r"\d{5,}!")


def _too_hard(s: str) -> bool:
    s = "".join(s.split()).replace("**", "^")
    if _TOWER.search(s) or _BIG_EXPONENT.search(s) or _BIG_FACTORIAL.search(s):
        return True
    depth = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "})]":
            depth -= 1
    return False


# --- math-verify worker processes -----------------------------------------------------------

_WORKER_SCRIPT = str(Path(__file__).with_name("verify_worker.py"))


class _Worker:
    """One verify_worker.py child, used by one thread at a time."""

    def __init__(self):
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, _WORKER_SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self.poller = select.poll()  # poll, not select: fds above 1024 are common in big processes
        self.poller.register(self.proc.stdout.fileno(), select.POLLIN)
        self.pending = b""
        self.ready = False

    def ask(self, request: list, timeout: float) -> list[str]:
        """Reply lines up to the final one; the last is "timeout" when the worker hung or died,
        in which case it has been replaced."""
        if self.proc.poll() is not None:  # died between requests
            self.restart()
        if not self.ready:
            if self._read_line(time.monotonic() + STARTUP_TIMEOUT_S) != "ready":
                raise RuntimeError(f"math-verify worker did not start: {sys.executable} {_WORKER_SCRIPT}")
            self.ready = True
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
        except OSError:
            self.restart()
            return ["timeout"]
        deadline = time.monotonic() + timeout
        lines = []
        while not lines or lines[-1] not in ("0", "1", "ok"):
            line = self._read_line(deadline)
            if line is None:
                self.restart()
                return lines + ["timeout"]
            lines.append(line)
        return lines

    def _read_line(self, deadline: float) -> str | None:
        while b"\n" not in self.pending:
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0 or not self.poller.poll(left_ms):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:  # the worker died (segfault, MemoryError at start-up, killed)
                return None
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()

    def restart(self) -> None:
        # The replacement imports math-verify while the caller carries on; the next ask waits for it.
        self.close()
        self.start()


_idle: list[_Worker] = []
_idle_lock = threading.Lock()
_slots = threading.BoundedSemaphore(MAX_WORKERS)


def _verify_in_worker(pred: str, ref: str) -> bool:
    with _slots:
        with _idle_lock:
            worker = _idle.pop() if _idle else None
        if worker is None:
            worker = _Worker()
        try:
            lines = worker.ask(["grade", pred, ref], _timeout_s)
        finally:
            with _idle_lock:
                _idle.append(worker)
    if lines[-1] == "timeout":
        if "g" not in lines:
            _hung.add(ref)
        elif "p" not in lines:
            _hung.add(pred)
    return lines[-1] == "1"


def _forget_workers_after_fork() -> None:
    # A forked child must not talk to its parent's workers; it starts its own on first use.
    global _idle, _idle_lock, _slots
    _idle, _idle_lock, _slots = [], threading.Lock(), threading.BoundedSemaphore(MAX_WORKERS)


def _close_workers() -> None:
    with _idle_lock:
        for worker in _idle:
            worker.close()
        _idle.clear()


os.register_at_fork(after_in_child=_forget_workers_after_fork)
atexit.register(_close_workers)
