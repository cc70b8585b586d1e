"""Decide whether a predicted answer equals a reference answer.

math: a cheap comparison first (normalised strings, then exact rationals), then math-verify for
whatever that cannot settle. Model output is hostile (a 1 MB string, \\boxed{9^{9^{9^{9}}}}),
so math-verify never runs in this process: it runs in child processes (verify_worker.py) that
are killed and replaced when one request takes longer than the grade timeout (2 s by default,
set_grade_timeout changes it). Killing a process is the only bound that also holds when the
time goes into C code (sympy's big-integer arithmetic ignores signals) and when grade is
called off the main thread, where math-verify's own signal.alarm timeout cannot work.
Cheap pre-screens (length, nesting depth, numeric power towers, huge exponents/factorials)
reject the obvious cases before they cost a timeout. A request that times out is retried once
with RETRY_FACTOR times the budget (a legitimate comparison can be slow on a loaded machine);
if the retry times out too, that (pred, ref) pair is refused from then on. A string is refused
everywhere only when its own parse timed out on the retry in HUNG_STRIKES different pairs, or
at once when it is longer than ORDINARY_CHARS, so one hostile sample costs a bounded number of
timeouts per process, not one per comparison.

Answer form (math only): under form="strict" (the default) a plain number (integer, decimal or
a fraction in lowest terms, after formatting is normalised) equals only another plain number,
so "9 - 4", "\\frac{10}{2}" or "10^3" never earn the credit of "5" or "1000"; answers that are
not plain numbers keep math-verify's equivalence. form="symbolic" skips that rule.
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
from math import gcd
from pathlib import Path

from sttrl.errors import UserError
from sttrl.rewards.extract import MAX_ANSWER_CHARS, check_task, letter_of

DEFAULT_TIMEOUT_S = 2.0  # 10x the slowest real MATH grade on a cold worker (~0.16 s)
STARTUP_TIMEOUT_S = 60.0  # importing sympy on a busy machine; not counted in the grade timeout
MAX_DEPTH = 20  # bracket nesting; real answers stay under 6
MAX_WORKERS = os.cpu_count() or 1  # concurrent graders beyond this wait for a free worker
RETRY_FACTOR = 4.0  # a timed-out request is retried once with this many times the budget
ORDINARY_CHARS = 200  # longer strings are refused after one parse timeout (MATH answers: <= 53)
HUNG_STRIKES = 2  # pairs whose retry hung in a string's own parse before the string is refused
ANSWER_FORMS = ("strict", "symbolic")

_timeout_s = DEFAULT_TIMEOUT_S
_hung: set[str] = set()  # strings refused everywhere (see the module docstring)
_hung_pairs: set[tuple[str, str]] = set()  # (pred, ref) pairs, sorted, that timed out twice
_strikes: dict[str, int] = {}  # string -> pairs whose retry hung in that string's parse


def set_grade_timeout(seconds: float) -> None:
    """Bound, in seconds, on one math-verify request (a parse or comparison that hangs)."""
    global _timeout_s
    if not seconds > 0:
        raise ValueError(f"grade timeout must be > 0 seconds, got {seconds!r}")
    _timeout_s = float(seconds)


def check_form(form: str) -> str:
    if not (isinstance(form, str) and form in ANSWER_FORMS):
        raise UserError(f"unknown answer form {form!r}; allowed: {', '.join(ANSWER_FORMS)}")
    return form


def clear_grade_cache(workers: bool = False) -> None:
    """Forget cached grades and hung strings and pairs; workers=True also empties the idle
    workers' parse caches (the benchmark's cold mode)."""
    _grade_math.cache_clear()
    _hung.clear()
    _hung_pairs.clear()
    _strikes.clear()
    if workers:
        with _idle_lock:
            for worker in _idle:
                worker.ask(["clear"], STARTUP_TIMEOUT_S)


def grade(pred: str | None, reference: str | None, task: str = "math", *,
          form: str = "strict") -> bool:
    """True when pred is equivalent to reference. None on either side is False; nothing is eval'ed.

    form="strict": a plain number only equals a plain number ("9 - 4" is not "5", nor "5" "9 - 4");
    form="symbolic": any math-verify equivalence counts. gpqa letters ignore the form."""
    task = check_task(task)
    check_form(form)
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
    return _grade_math(pred, reference, form)


@lru_cache(maxsize=1 << 16)
def _grade_math(pred: str, ref: str, form: str) -> bool:
    a, b = _normalize(pred), _normalize(ref)
    if not a or not b:
        return False
    if a == b:
        return True
    if form == "strict" and _is_plain(pred, a) != _is_plain(ref, b):
        return False  # an unevaluated expression never equals a plain number, either way round
    x, y = _rational(a), _rational(b)
    if x is not None and y is not None:
        if x == y:
            return True
        # math-verify rounds decimals and reads percentages, so only exact forms may settle "unequal" here.
        if "." not in a + b and "%" not in pred + ref:
            return False
    if pred in _hung or ref in _hung or _pair_hung(pred, ref) or _too_hard(pred) or _too_hard(ref):
        return False
    return _verify_in_worker(pred, ref)


# --- the cheap comparison -------------------------------------------------------------------

_DOLLAR = re.compile(r"(?<!\\)\$")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf)\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_SPACING = re.compile(r"(?<!\\)\\[!,;: ]")  # \! \, \; \: \<space>, but not the "\\" of "\\ 0"
_DROPPED = ("~", "^\\circ", "^{\\circ}", "\\circ", "°", "\\%", "%", "\\$")
_FRAC_DIGITS = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_BRACED = re.compile(r"\\frac(?:\{(\d+)\}(\d)|(\d)\{(\d+)\})")  # \frac{270}7, \frac9{19}
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LATEX_THOUSANDS = re.compile(r",\s*\\!\s*(?=\d{3}(?!\d))")  # MATH's "11,\! 111,\! 100"
_LIST_COMMA = re.compile(r",\s")  # "32, 349" is a list of two numbers, not 32349
_ASSIGNMENT = re.compile(r"[A-Za-z]=([^=]+)")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(r"(-?)(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def _normalize(s: str) -> str:
    """Formatting-only rewrites, each of which math-verify also accepts as equal."""
    s = _DOLLAR.sub("", s)
    s = _TEXT.sub(r"\1", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _LATEX_THOUSANDS.sub(",", s)
    s = s.replace("{,}", ",")  # LaTeX's thousands separator: "1{,}000" is 1,000
    s = _SPACING.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for junk in _DROPPED:
        s = s.replace(junk, "")
    listed = _LIST_COMMA.search(s) is not None
    s = "".join(s.split()).rstrip(".")
    s = _FRAC_DIGITS.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_BRACED.sub(lambda m: "\\frac{%s}{%s}" % ((m[1], m[2]) if m[1] else (m[3], m[4])), s)
    if _THOUSANDS.fullmatch(s) and not listed:
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


# --- answer form: is it a plain number? ----------------------------------------------------------

_SIGNED_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_PLAIN_FRACTION = re.compile(r"-?(?:\\frac\{(-?\d+)\}\{(\d+)\}|(\d+)/(\d+))")
_MIXED_NUMBER = re.compile(r"-?\d+\\frac\{(\d+)\}\{(\d+)\}")  # 1\frac{4}{5}, as MATH writes it
# A number then unit words: "5 apples", "5.4 cents", "5 cm^2", "12 square units".
_WITH_UNITS = re.compile(r"(\S+)\s+([A-Za-z]+(?:\s+[A-Za-z]+){0,3})(?:\s*\^\{?[23]\}?)?")


def _plain_normalized(n: str) -> bool:
    """n (already normalised) is an integer, a decimal, or a fraction in lowest terms."""
    if len(n) > 100:
        return False
    if _SIGNED_DECIMAL.fullmatch(n):
        return True
    m = _MIXED_NUMBER.fullmatch(n)
    if m is not None:  # a whole part and a proper fraction in lowest terms
        return 0 < int(m.group(1)) < int(m.group(2)) and gcd(int(m.group(1)), int(m.group(2))) == 1
    m = _PLAIN_FRACTION.fullmatch(n)
    if m is None:
        return False
    num, den = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    num, den = abs(int(num)), int(den)
    return den > 1 and gcd(num, den) == 1  # "10/2", "\frac{4}{2}", "5/1" are unevaluated


def _is_plain(raw: str, normalized: str) -> bool:
    """A plain number after the usual normalisation: "5", "-3", "142.0", "1,234", ".5", "$5",
    "5\\%", "\\text{5}", "x=5", "30^\\circ", "\\frac{1}{2}", "1/2", "1\\frac{4}{5}", also with unit
    words after a space or in \\text{} ("5 apples", "5\\text{ cm}^2"). Not: "9-4", "10/2",
    "\\sqrt{25}", "10^3", "5x", "32, 349"."""
    if _plain_normalized(normalized):
        return True
    spaced = _TEXT.sub(r" \1 ", _DOLLAR.sub("", raw)).strip().rstrip(".")
    m = _WITH_UNITS.fullmatch(spaced)
    if m is None or ("\\" not in raw and len(m.group(2)) < 2):
        return False  # a bare single letter ("5 x") is a variable, not a unit; "5\\text{ m}" is
    return _plain_normalized(_normalize(m.group(1)))


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


def _ask_worker(pred: str, ref: str, timeout: float) -> list[str]:
    """One grade request to a free worker: its reply lines, the last "1", "0" or "timeout"."""
    with _slots:
        with _idle_lock:
            worker = _idle.pop() if _idle else None
        if worker is None:
            worker = _Worker()
        try:
            return worker.ask(["grade", pred, ref], timeout)
        finally:
            with _idle_lock:
                _idle.append(worker)


def _pair_key(pred: str, ref: str) -> tuple[str, str]:
    return (pred, ref) if pred <= ref else (ref, pred)


def _pair_hung(pred: str, ref: str) -> bool:
    """Whether this pair (either order) timed out on its retry; it is refused from then on."""
    return _pair_key(pred, ref) in _hung_pairs


def _stuck_on(lines: list[str], pred: str, ref: str) -> str | None:
    """The string whose parse a timed-out request was stuck on; None for the comparison itself."""
    if "g" not in lines:
        return ref
    if "p" not in lines:
        return pred
    return None


def _verify_in_worker(pred: str, ref: str) -> bool:
    lines = _ask_worker(pred, ref, _timeout_s)
    if lines[-1] != "timeout":
        return lines[-1] == "1"
    stuck = _stuck_on(lines, pred, ref)
    if stuck is not None and len(stuck) > ORDINARY_CHARS:
        _hung.add(stuck)  # not an ordinary answer: one timeout is enough
        return False
    lines = _ask_worker(pred, ref, _timeout_s * RETRY_FACTOR)
    if lines[-1] != "timeout":
        return lines[-1] == "1"
    _hung_pairs.add(_pair_key(pred, ref))
    stuck = _stuck_on(lines, pred, ref)
    if stuck is not None:
        _strikes[stuck] = _strikes.get(stuck, 0) + 1
        if _strikes[stuck] >= HUNG_STRIKES:
            _hung.add(stuck)
    return False


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
