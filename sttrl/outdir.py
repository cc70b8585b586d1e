"""The output folder of a run: create it or say why not, hold its lock, clean up after a
failed start, and keep the saved config (config.json) and its history (config_history.jsonl)
that refuse to mix two experiments' results in one folder."""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from sttrl.config import NON_RESULT_FIELDS, Config
from sttrl.errors import UserError
from sttrl.files import append_jsonl, dumps, read_jsonl, write_json_atomic

LOCK_NAME = "run.lock"
HISTORY_NAME = "config_history.jsonl"
# Files written through files.write_atomic; a kill mid-write leaves `<name>.XXXX.tmp` beside
# them (for checkpoint.pt as large as the model and its optimiser), removed on the next start.
ATOMIC_FILES = ("checkpoint.pt", "config.json", "summary.json", "results.jsonl", "evals.jsonl",
                "steps.jsonl")


# ---- the output folder -----------------------------------------------------------------------

def prepare_output_dir(out: Path) -> None:
    """Create the folder, or say in one line why it cannot be used."""
    try:
        for folder in (out, *out.parents):
            if folder.exists() or folder.is_symlink():
                if not folder.is_dir():
                    where = "is" if folder == out else f"is under {folder}, which is"
                    raise UserError(f"--output_dir {out} {where} a file, not a folder; "
                                    "pick another --output_dir")
                break
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --output_dir {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--output_dir {out} is not writable by this user; "
                        "pick another --output_dir or fix its permissions")


def lock_output_dir(out: Path) -> int:
    """Take the folder's lock for the life of this process; returns its file descriptor.

    flock locks belong to the open file, so the OS drops the lock when the process dies, even by
    SIGKILL: a lock file never goes stale. The file holds the holder's pid, for the message."""
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise UserError(f"cannot create the lock file {path}: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise OSError("the lock file was replaced")  # leave_no_trace removed it meanwhile
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{out} is in use by another run (pid {holder}); wait for it to finish, "
                        "or use another --output_dir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as err:
        os.close(fd)
        raise UserError(f"cannot write the lock file {path}: {err.strerror or err}; free space "
                        "on that disk") from None
    return fd


def unlock_output_dir(fd: int) -> None:
    os.close(fd)  # closing the only descriptor releases the flock


def remove_stale_temps(out: Path) -> None:
    """Temporary files of atomic writes a kill interrupted (only ever ours: we hold the lock)."""
    for name in ATOMIC_FILES:
        for tmp in out.glob(f"{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


# ---- the saved config ------------------------------------------------------------------------

def read_saved_config(path: Path) -> dict | None:
    if not (path.exists() or path.is_symlink()):
        return None
    fix = "fix it, or delete it to let this run's config replace it"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                        f"{err.msg}); {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; {fix}") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a JSON object of options; {fix}")
    return saved


def canonical_saved(saved: dict) -> dict:
    """A config saved before names were canonicalised, spelt as they are now."""
    from sttrl.data.datasets import canonical_dataset
    from sttrl.engines.models import canonical_model

    saved = dict(saved)
    if saved.get("data_path") is None and isinstance(saved.get("dataset"), str):
        try:
            saved["dataset"] = canonical_dataset(saved["dataset"])
        except UserError:
            pass  # an unknown name stays as it was and compares as different
    if isinstance(saved.get("model"), str):
        saved["model"] = canonical_model(saved["model"])
    return saved


def check_saved_config(out: Path, config: dict, allow_change: bool, digest: str | None = None,
                       allow_data_change: bool = False) -> None:
    """Refuse to mix two different experiments' results in one folder. Only compares: the
    config is saved by `save_config` once the engine has started, so a run that fails to start
    (a wrong --model) leaves nothing that refuses the corrected command."""
    path = out / "config.json"
    saved = read_saved_config(path)
    if saved is None:
        return
    saved_digest = saved.pop("data_sha256", None)
    saved.pop("config_sha", None)
    # an option added since the run started counts as unchanged if it has its default
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    saved = canonical_saved({**{k: v for k, v in defaults.items() if k not in saved}, **saved})
    diff = sorted(k for k in set(saved) | set(config)
                  if k not in NON_RESULT_FIELDS and saved.get(k) != config.get(k))
    if diff and not allow_change:
        raise UserError(f"{out} holds a run with a different config ({', '.join(diff)}); "
                        "use another --output_dir or pass --allow_config_change")
    if saved_digest and digest and saved_digest != digest and not allow_data_change:
        source = config.get("data_path") or config.get("dataset")
        raise UserError(f"{out} holds a run on different questions: {source} has changed since "
                        "that run started (its sha256 differs); use another --output_dir, or "
                        "pass --allow_data_change to resume on the edited data")


def config_sha(config: dict, digest: str | None) -> str:
    """12 hex digits that name what a results line was computed with: the options that change
    results, and the data's hash. Each results line carries it (`config_sha`)."""
    kept = {k: v for k, v in config.items() if k not in NON_RESULT_FIELDS | {"config_sha"}}
    text = dumps({"config": kept, "data_sha256": digest})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_config(out: Path, config: dict, digest: str | None) -> None:
    """config.json holds the config the folder's newest lines come from; config_history.jsonl
    keeps every config that produced lines (--allow_config_change), oldest first."""
    sha = config_sha(config, digest)
    history = out / HISTORY_NAME
    known = read_jsonl(history, repair=True) if history.exists() else []
    if not known:  # a run from before the history was kept: its config.json comes first
        saved = read_saved_config(out / "config.json")
        if saved is not None:
            old_digest = saved.pop("data_sha256", None)
            saved.pop("config_sha", None)
            old = config_sha(saved, old_digest)
            if old != sha:
                known = [{"config_sha": old, "data_sha256": old_digest, "config": saved}]
                append_jsonl(history, known[0])
    if not known or known[-1].get("config_sha") != sha:
        append_jsonl(history, {"config_sha": sha, "data_sha256": digest, "config": config,
                               "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    write_json_atomic(out / "config.json", {**config, "config_sha": sha,
                                            **({"data_sha256": digest} if digest else {})})


def missing_folders(out: Path) -> list[Path]:
    """`out` and its parents that do not exist yet, deepest first (what a run creates)."""
    try:
        return [f for f in (out, *out.parents) if not f.exists() and not f.is_symlink()]
    except OSError:  # a parent this user cannot search: prepare_output_dir says so
        return []


def leave_no_trace(out: Path, made: list[Path]) -> None:
    """After a failed run: a folder holding nothing but our lock file loses it, and the
    folders this run created go again, so a refused start leaves the disk as it was. Called
    with the lock held: nobody else is writing there."""
    try:
        if [p.name for p in out.iterdir()] == [LOCK_NAME]:
            (out / LOCK_NAME).unlink()
            for folder in made:  # deepest first; rmdir refuses one that is not empty
                folder.rmdir()
    except OSError:
        pass
