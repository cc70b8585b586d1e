"""The one logger both modes use (sttrl/modes/logger.py): --progress, --tensorboard and --wandb
log every question, and in --mode dataset every rollout batch (which ignored them before)."""
import sys
import types

import pytest

from helpers import tiny_config, write_questions
from sttrl.errors import UserError
from sttrl.run import run


class FakeWriter:
    """torch.utils.tensorboard.SummaryWriter, recording."""

    made: list = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


class FakeRun:
    def __init__(self, **kw):
        self.init, self.logged, self.finished = kw, [], False

    def log(self, scalars, step):
        self.logged.append((dict(scalars), step))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_loggers(monkeypatch):
    """Both packages, faked in sys.modules: what the logger hands them is recorded."""
    FakeWriter.made = []
    runs = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeWriter))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(
        init=lambda **kw: runs.append(FakeRun(**kw)) or runs[-1]))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return FakeWriter.made, runs


@pytest.mark.parametrize("mode", ["question", "dataset"])
def test_both_modes_log_every_unit_to_the_bar_tensorboard_and_wandb(tiny_model, tmp_path, capsys,
                                                                    fake_loggers, mode):
    writers, runs = fake_loggers
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    summary = run(tiny_config(tiny_model, data, out, mode=mode, prompts_per_step=1, eval_every=1,
                              progress=True, tensorboard=True, wandb=True))
    [writer], [wandb_run] = writers, runs
    assert writer.log_dir == str(out / "tb") and writer.closed
    assert wandb_run.init["dir"] == str(out) and wandb_run.init["mode"] == "offline"
    assert wandb_run.init["config"] == summary["config"] and wandb_run.finished
    key = "pass@1_before" if mode == "question" else "pass@1"  # dataset: each batch is evaluated
    assert [step for tag, _, step in writer.scalars if tag == key] == [1, 2]
    assert [step for _, step in wandb_run.logged] == [1, 2]
    assert all(key in scalars for scalars, _ in wandb_run.logged)
    if mode == "dataset":
        assert all("groups_with_signal" in scalars for scalars, _ in wandb_run.logged)
    bar = capsys.readouterr().err
    assert ("questions" if mode == "question" else "batches") in bar and "2/2" in bar


@pytest.mark.parametrize("mode", ["question", "dataset"])
@pytest.mark.parametrize("flag,package", [("tensorboard", "torch.utils.tensorboard"),
                                          ("wandb", "wandb")])
def test_a_missing_logging_package_is_one_line_in_both_modes(tiny_model, tmp_path, monkeypatch,
                                                             mode, flag, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: import fails
    data = write_questions(tmp_path / "q.json", n=1)
    batch = {"prompts_per_step": 1} if mode == "dataset" else {}  # one full rollout batch
    with pytest.raises(UserError, match=f"--{flag} needs the {flag} package"):
        run(tiny_config(tiny_model, data, tmp_path / "out", mode=mode, **batch, **{flag: True}))
