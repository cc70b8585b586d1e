"""The generic half of validating options: a number's allowed Range, a Choice of names, and
a value's JSON type. `sttrl.config.RULES` is the table that applies them to the fields."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Range:
    """A number's allowed interval, and how its message says it."""

    lo: float | None = None
    """Lower bound (None: none)."""
    hi: float | None = None
    """Upper bound (None: none)."""
    lo_open: bool = False
    """The lower bound itself is not allowed (> lo rather than >= lo)."""
    hi_open: bool = False
    """The upper bound itself is not allowed (below hi)."""
    integer: bool = False
    """The message says "an integer from lo to hi"."""
    lo_text: str = ""
    """How the message writes the lower bound (default: the number)."""
    unit: str = ""
    """Written after an open-ended bound (" seconds")."""

    def __call__(self, name: str, value) -> str | None:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        if above and below:
            return None
        lo = self.lo_text or f"{self.lo}"
        if self.integer:
            allowed = f"an integer from {lo} to {self.hi}"
        elif self.hi is None:
            allowed = f"{'>' if self.lo_open else '>='} {lo}{self.unit}"
        elif self.lo_open:
            allowed = f"> {lo} and <= {self.hi}"
        else:
            allowed = f"from {lo} to {'below ' if self.hi_open else ''}{self.hi}"
        return f"--{name} must be {allowed}, got {value}"


def integers(lo: int, hi: int) -> Range:
    return Range(lo, hi, integer=True)


@dataclass(frozen=True)
class Choice:
    """One of a few names."""

    values: tuple
    """The names allowed."""
    text: str = ""
    """What the message says is allowed (default: "one of" the names)."""
    also: Callable[[str], bool] | None = None
    """Accepts values beyond the names (cuda:N)."""

    def __call__(self, name: str, value) -> str | None:
        if value in self.values or (self.also is not None and self.also(value)):
            return None
        return f"--{name} must be {self.text or 'one of ' + ', '.join(self.values)}, got {value!r}"


def cuda_index(device: str) -> bool:
    """cuda:N, for the device Choice."""
    return device.startswith("cuda:") and device[5:].isdigit()


def module_names(name: str, value: str) -> str | None:
    if all(n.strip().isidentifier() for n in value.split(",")):
        return None
    return f"--{name} must be comma-separated module names (q_proj,v_proj), got {value!r}"


def type_problem(name: str, kind: type, value) -> str | None:
    if kind is bool and not isinstance(value, bool):
        return f"--{name} must be true or false, got {value!r}"
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        return f"--{name} must be an integer, got {value!r}"
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                          or not math.isfinite(value)):
        return f"--{name} must be a finite number, got {value!r}"
    if kind is str and (not isinstance(value, str) or value == ""):
        return f"--{name} must be a non-empty string"
    return None
