"""Fixtures (the tiny random models, built offline; one local Ray per scale-engine module) and
what a run says about the tests it left out. Shared helpers are in helpers.py."""
from __future__ import annotations

import shutil
import tempfile

import pytest

from helpers import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_vllm_model(tmp_path_factory) -> str:
    """The tiny model with head_dim 32 (hidden 64, 2 heads): vLLM's CPU attention rejects 16."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny_vllm") / "model", hidden=64))


@pytest.fixture(scope="module")
def ray_cpu():
    """One local Ray for the module (the engines use it and leave it running)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


DESELECTED: list = []


def pytest_deselected(items):
    DESELECTED.extend(items)


def pytest_terminal_summary(terminalreporter):
    """Say which marked tests the marker expression left out, and how to run them (skipped
    tests say why in the short summary: -rs in pyproject's addopts)."""
    slow = [i for i in DESELECTED if i.get_closest_marker("slow")]
    if slow:
        terminalreporter.write_line(
            f"{len(slow)} slow test(s) not run (the real SmolLM2, minutes): "
            "run everything with -m 'slow or not slow' (CI does), or only them with -m slow")
