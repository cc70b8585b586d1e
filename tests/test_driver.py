"""The per-question driver end to end on a tiny random model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, kill_after_two_lines, lines, tiny_config, without_timings, write_questions
from sttrl.errors import UserError
from sttrl.run import run


def test_run_writes_results_and_summary(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json")
    summary = run(tiny_config(tiny_model, data, tmp_path / "out"))
    recs = lines(tmp_path / "out")
    assert [r["id"] for r in recs] == ["q0", "q1", "q2", "q3"]
    for r in recs:
        for key in ("pseudo_label", "vote", "pass@1_before", "pass@1_after", "maj@N_before",
                    "rewards", "skipped", "seconds", "label_correct", "reward_accuracy"):
            assert key in r
        assert {"generate", "vote", "eval", "reset", "total"} <= set(r["seconds"])
        assert r["skipped"] == (r["skip_reason"] is not None)
        assert r["skipped"] or len(r["train"]) == 2
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in ("questions", "pass@1_before", "pass@1_after", "maj@N_before", "label_accuracy",
                "wall_seconds", "config"):
        assert key in saved
    assert saved["questions"] == summary["questions"] == 4
    assert saved["config"]["n_votes"] == 8


def test_equal_rewards_skip_the_update(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=2)
    # greedy rollouts: every sample is the same, so every reward is equal
    run(tiny_config(tiny_model, data, tmp_path / "out", temperature=0.0))
    recs = lines(tmp_path / "out")
    assert all(r["skipped"] and r["train"] == [] for r in recs)
    assert all("all rewards equal" in r["skip_reason"] or "no answer" in r["skip_reason"]
               for r in recs)


def test_scrambled_references_leave_training_bit_identical(tiny_model, tmp_path):
    """The label never reaches training: only evaluation numbers may change. The second run's
    references are the first run's pseudo-labels (so its evaluation must change: every vote
    becomes right), the first run's are the true sums."""
    data = write_questions(tmp_path / "q.json")
    run(tiny_config(tiny_model, data, tmp_path / "out_a", continuous=True))
    a = lines(tmp_path / "out_a")
    assert any(not r["skipped"] for r in a) and any(r["pseudo_label"] for r in a)
    rows = json.loads(Path(data).read_text())
    for row, r in zip(rows, a):
        row["answer"] = r["pseudo_label"] or "no answer"
    scrambled = tmp_path / "scrambled.json"
    scrambled.write_text(json.dumps(rows))
    run(tiny_config(tiny_model, str(scrambled), tmp_path / "out_b", continuous=True))
    b = lines(tmp_path / "out_b")
    for ra, rb in zip(a, b):
        for key in ("pseudo_label", "vote", "rewards", "train", "answers_after", "skip_reason"):
            assert ra[key] == rb[key], key
    wa = torch.load(tmp_path / "out_a" / "checkpoint.pt", weights_only=False)["engine"]["model"]
    wb = torch.load(tmp_path / "out_b" / "checkpoint.pt", weights_only=False)["engine"]["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["label_correct"] for r in b] == [bool(r["pseudo_label"]) for r in a]
    assert [r["label_correct"] for r in a] != [r["label_correct"] for r in b]


def test_adaptation_never_receives_the_reference():
    import inspect

    from sttrl.algorithms import ttrl
    from sttrl.data import Question
    from sttrl.rewards import reward

    assert "answer" not in {f for f in Question.__dataclass_fields__}
    for fn in (ttrl.adapt, reward.ttrl_rewards):
        params = set(inspect.signature(fn).parameters)
        assert not params & {"answer", "reference", "ref", "ground_truth", "example"}


def test_continuous_keeps_weights_and_reset_restores_them(tiny_model, tmp_path):
    from helpers import local_engine

    data = write_questions(tmp_path / "q.json")
    initial = local_engine(tiny_model).model.state_dict()
    run(tiny_config(tiny_model, data, tmp_path / "cont", continuous=True))
    adapted = torch.load(tmp_path / "cont" / "checkpoint.pt", weights_only=False)["engine"]["model"]
    assert any(not torch.equal(initial[k], adapted[k]) for k in initial)
    # reset mode: pass@1 after of each question is measured from the initial weights plus
    # that question's update only, so a question's line does not depend on those before it
    run(tiny_config(tiny_model, data, tmp_path / "reset"))
    solo = write_questions(tmp_path / "solo.json")
    rows = json.loads(Path(solo).read_text())[2:3]
    Path(solo).write_text(json.dumps(rows))
    run(tiny_config(tiny_model, solo, tmp_path / "alone"))
    both = lines(tmp_path / "reset")[2], lines(tmp_path / "alone")[0]
    # config_sha names each run's own config (its data file differs), so it differs
    assert both[0].pop("config_sha") != both[1].pop("config_sha")
    assert without_timings([both[0]])[0] | {"index": 0} == without_timings([both[1]])[0]
    assert not (tmp_path / "reset" / "checkpoint.pt").exists()


@pytest.mark.parametrize("continuous", [False, True])
def test_killed_run_resumes_without_loss_or_duplicates(tiny_model, tmp_path, continuous):
    data = write_questions(tmp_path / "q.json", n=5)
    flags = ["--model", tiny_model, "--data_path", data, "--device", "cpu", "--n_votes", "8",
             "--n_train", "6", "--n_eval", "4", "--max_new_tokens", "8", "--lr", "5e-3",
             "--steps_per_question", "2", "--temperature", "1.0", "--progress", "false",
             "--continuous", str(continuous)]
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    subprocess.run([sys.executable, "main.py", *flags, "--output_dir", str(ref_out)], cwd=REPO,
                   check=True, capture_output=True)
    results = kill_after_two_lines(flags, out)
    killed_at = results.read_text().count("\n")
    assert 2 <= killed_at < 5
    # a torn last line, as a kill in the middle of a write would leave
    with open(results, "a") as f:
        f.write('{"id": "q')
    subprocess.run([sys.executable, "main.py", *flags, "--output_dir", str(out)], cwd=REPO,
                   check=True, capture_output=True)
    got, want = lines(out), lines(ref_out)
    assert [r["id"] for r in got] == [f"q{i}" for i in range(5)]
    assert without_timings(got) == without_timings(want)


def test_a_different_config_in_the_same_folder_is_refused(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=1)
    run(tiny_config(tiny_model, data, tmp_path / "out"))
    with pytest.raises(UserError, match="different config.*lr"):
        run(tiny_config(tiny_model, data, tmp_path / "out", lr=1e-3))
    run(tiny_config(tiny_model, data, tmp_path / "out", lr=1e-3, allow_config_change=True))
    # more questions is not a different experiment
    run(tiny_config(tiny_model, data, tmp_path / "out", lr=1e-3, num_questions=1))
