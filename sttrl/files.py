"""The run's files on disk: atomic writes, fsynced JSON lines, and the torn-line-tolerant reader.

A run killed at any instant leaves at worst a partial last line of a .jsonl file and never a
half-written .json or checkpoint; every writer in STTRL goes through here.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from sttrl.errors import UserError


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, then rename it over
    `path`: readers see the old file or the new one, never half of one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(write_failed(path, err)) from None
    os.close(fd)
    try:
        # mkstemp makes 0600; give the file the mode open() would (0666 less the umask), so
        # config.json and summary.json read like results.jsonl
        os.chmod(tmp, 0o666 & ~current_umask())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = os_error(err)
        if cause is not None:  # the old file is untouched: say so, and what to do
            raise UserError(write_failed(path, cause)) from None
        raise


def os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind `err`, if any: torch.save turns a failed write into a RuntimeError
    whose context is the file object's OSError."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def write_failed(path: Path, err: OSError) -> str:
    return (f"cannot write {path}: {err.strerror or err}; free space on that disk (or fix its "
            "permissions) and re-run the same command to resume: what was written is kept")


def write_torch_atomic(path: Path, state) -> None:
    """torch.save through write_atomic, into a Python file object so that a full disk is an
    OSError (torch's own writer reports it as an internal RuntimeError)."""
    import torch

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)
    write_atomic(path, write)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def finite(value):
    """`value` with every NaN or infinite float replaced by None, at any depth: strict JSON has
    no NaN, so a diverged loss is written as null (and flagged by the writer of the record)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def has_non_finite(value) -> bool:
    """Whether any float in `value`, at any depth, is NaN or infinite."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_non_finite(v) for v in value)
    return False


def dumps(data, **kwargs) -> str:
    """json.dumps that writes strict JSON: non-finite floats become null."""
    return json.dumps(finite(data), sort_keys=True, allow_nan=False, **kwargs)


def write_json_atomic(path: Path, data) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(dumps(data, indent=2))
    write_atomic(path, write)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line, flushed and fsynced before returning."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:  # a partial line is a torn last fragment: the next read removes it
        raise UserError(write_failed(path, err)) from None


def rewrite_jsonl(path: Path, records: list[dict]) -> None:
    """Replace a .jsonl file with these records, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("".join(dumps(r) + "\n" for r in records))
    write_atomic(path, write)


def read_jsonl(path: Path, repair: bool = False, numbered: bool = False,
               problem: Callable[[object], str | None] | None = None,
               kind: str = "valid record") -> list:
    """Every record of a .jsonl file, parsed. Lines end at b"\n" only (a stray b"\r" is JSON
    whitespace or a bad line, never a line break). Only the last fragment, the bytes after the
    last newline, may be left out, and only when it is not a complete record: a write a kill
    cut off. A complete last record that lost its newline (a hand edit) is kept. Any other line
    that does not parse, or that `problem(record)` rejects (says why), is a one-line error
    naming it, and the file is left as it was. With `repair` (the writer's read, before it
    appends), a kept last record gets its newline and a torn fragment is cut off, with a line on
    stderr. With `numbered`, each item is (line number, record)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a file of JSON lines; move it away")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}; fix its permissions or "
                        "move it away") from None
    *lines, fragment = raw.split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            record = parse_line(path, number, line, problem, kind)
            records.append((number, record) if numbered else record)
    torn = False
    if fragment.strip():
        number = len(lines) + 1
        try:
            record = json.loads(fragment.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            record = None
        torn = not isinstance(record, dict)  # a cut-off object never parses as one
        if not torn:
            record = parse_line(path, number, fragment, problem, kind)
            records.append((number, record) if numbered else record)
    if repair and fragment:
        try:
            with open(path, "r+b") as f:
                if torn or not fragment.strip():
                    f.truncate(len(raw) - len(fragment))
                else:
                    f.seek(len(raw))
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise UserError(f"cannot repair the last line of {path}: "
                            f"{err.strerror or err}") from None
        if torn:
            print(f"sttrl: {path}: removed an incomplete last line ({len(fragment)} bytes, a write "
                  "cut off by a kill); its work is redone", file=sys.stderr)
    return records


def parse_line(path: Path, number: int, line: bytes, problem=None, kind: str = "valid record"):
    """One line's record, or a one-line UserError naming the line."""
    fix = "fix or remove that line"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: line {number} is not UTF-8 text; fix or remove it") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON at line {number}, column {err.colno} "
                        f"({err.msg}); {fix}") from None
    except RecursionError:
        raise UserError(f"{path}: line {number} is nested too deeply; {fix}") from None
    why = problem(record) if problem else None
    if why:
        raise UserError(f"{path}: line {number} is not a {kind} ({why}); fix or remove it")
    return record
