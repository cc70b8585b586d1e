"""Shared helpers for the benchmark scripts: machine facts, medians, peak memory, the JSON result.

Every script writes `benchmarks/results/<name>.json` with the same top-level keys:
`name`, `command` (the exact command line), `machine` (see `machine_info`), `settings`,
`results` and `notes`; `benchmarks/make_report.py` turns those files into docs/PERFORMANCE.md.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    """The command that ran this script, as one could paste it again from the repo root."""
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([str(exe), str(script), *sys.argv[1:]])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _system_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    """CPU seconds of this process and its live children (e.g. the math-verify workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


_START: dict = {}


def start_contention_probe() -> None:
    _START.update(wall=time.perf_counter(), system=_system_busy_s(), own=_own_busy_s())


def contention() -> dict | None:
    """CPU time other processes used while this benchmark ran: the measure of a quiet machine."""
    if not _START:
        return None
    wall = time.perf_counter() - _START["wall"]
    other = (_system_busy_s() - _START["system"]) - (_own_busy_s() - _START["own"])
    return {"wall_s": round(wall, 1), "other_processes_cpu_s": round(max(0.0, other), 1),
            "other_processes_mean_cores": round(max(0.0, other) / wall, 3) if wall > 0 else None}


def machine_info() -> dict:
    """CPU model, cores, RAM, library versions, date: recorded beside every result.

    Also starts the contention probe that `write_result` reads: CPU seconds used by every other
    process on the machine while the benchmark ran.
    """
    import torch

    start_contention_probe()
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
    }
    for lib in ("transformers", "trl", "accelerate"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            pass
    return info


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rnd(x, digits: int = 3):
    return None if x is None else round(x, digits)


def write_result(name: str, machine: dict, settings: dict, results: dict,
                 notes: list[str] | None = None) -> Path:
    """Write benchmarks/results/<name>.json and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = {**machine, "load_average_at_end": load_average(), "contention": contention()}
    data = {"name": name, "command": command_line(), "machine": machine, "settings": settings,
            "results": results, "notes": notes or []}
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def default_model() -> str:
    from sttrl.engines.models import resolve_model
    return resolve_model(None)


def actor_settings(path: str, **fields):
    """The scale engine's actor settings for the model at `path`, from the default CPU config,
    with `fields` replaced: for the benchmarks that drive one actor without an engine."""
    import dataclasses

    from sttrl.config import Config, resolve
    from sttrl.engines.ray.common import ActorSettings
    from sttrl.parts import parts

    engine = parts(resolve(Config(engine="ray"), on_gpu=False)).engine
    return dataclasses.replace(ActorSettings.derive(engine, path, pad_id=0), **fields)
