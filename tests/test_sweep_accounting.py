"""Sweep accounting is exact: a job counts by what it ended as in *this* sweep (runner.outcomes),
never by the summary its directory happens to hold; a refused job feeds no report row and no
seed statistics; the last line counts each outcome and the exit status says whether all finished."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from runner import outcomes
from runner.aggregate import find_runs
from runner.sweep import sweep_outcome

BLOBS = ("progress=false", "dataset=blobs", "epochs=1")


def sweep(sweep_dir: Path, *overrides: str, launcher: str = "basic") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    extra = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]
    return subprocess.run(
        [sys.executable, "-m", "runner", "-m", *extra, f"hydra.sweep.dir={sweep_dir}", *BLOBS, *overrides],
        cwd=sweep_dir.parent, env=env, capture_output=True, text=True, timeout=600,
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    line = next(line for line in reversed(result.stderr.splitlines() + result.stdout.splitlines()) if "Sweep finished:" in line)
    return line.split("Sweep finished: ", 1)[1]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def report_runs(sweep_dir: Path) -> list[str]:
    """The run names in report.md's per-run table."""
    return [line.split("|")[1].strip().strip("`") for line in (sweep_dir / "report.md").read_text().splitlines() if line.startswith("| `")]


# ------------------------------------------------------------------ the ledger and the last line
def test_the_last_line_counts_this_sweeps_outcomes_and_missing_jobs(tmp_path):
    outcomes.start(tmp_path, expected=5)
    for job, outcome in enumerate(["done", "done", "refused", "failed"]):
        (tmp_path / f"j{job}").mkdir()
        outcomes.record(tmp_path, job, tmp_path / f"j{job}", outcome)
    assert sweep_outcome(tmp_path) == ("5 jobs: 2 done, 1 failed, 1 refused, 1 not run — exit 1", 1)


def test_a_new_sweep_into_the_same_directory_starts_a_new_count(tmp_path):
    outcomes.start(tmp_path, expected=1)
    outcomes.record(tmp_path, 0, tmp_path / "a", "refused")
    outcomes.start(tmp_path, expected=2)
    outcomes.record(tmp_path, 0, tmp_path / "a", "done")
    outcomes.record(tmp_path, 1, tmp_path / "b", "diverged")
    assert sweep_outcome(tmp_path) == ("2 jobs: 1 done, 1 diverged", 0)


def test_a_sweep_that_recorded_no_job_does_not_exit_0(tmp_path):
    outcomes.start(tmp_path, expected=None)
    assert sweep_outcome(tmp_path) == ("0 jobs: no job recorded its outcome — exit 1", 1)


def test_find_runs_leaves_out_the_directories_the_sweep_refused(tmp_path):
    for name in ("mine", "foreign"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text('{"status": "done"}')
    outcomes.start(tmp_path, expected=2)
    outcomes.record(tmp_path, 0, tmp_path / "mine", "done")
    outcomes.record(tmp_path, 1, tmp_path / "foreign", "refused")
    outcomes._current.clear()  # read back from disk, as `python -m runner.report` does
    outcomes._memory.clear()
    assert find_runs(tmp_path) == [tmp_path / "mine"]


def test_a_fused_group_on_a_full_disk_says_so_once_per_job_and_counts_them_failed(tmp_path, monkeypatch, capsys):
    from runner.launchers import fused

    def full_disk(members):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fused, "train_group", full_disk)
    launcher = fused.FusedLauncher()
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    outs = [tmp_path / f"seed={k}" for k in (1, 2)]
    launcher._jobs = [SimpleNamespace(idx=k, out=out) for k, out in enumerate(outs)]
    outcomes.start(tmp_path, expected=2)
    launcher._train([SimpleNamespace(out=out, summary=None) for out in outs])
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert errors == [f"Error: {out}: the disk is full (no space left on device); free some space and rerun the same command to resume" for out in outs]
    assert sweep_outcome(tmp_path) == ("2 jobs: 2 failed — exit 1", 1)
    assert all(json.loads((out / "summary.json").read_text())["resumable"] is True for out in outs)


# ------------------------------------------------------------------ real sweeps
@pytest.mark.slow
def test_a_job_refused_for_another_config_is_counted_refused_and_left_out_of_report_and_seeds(tmp_path):
    root = tmp_path / "sweep"
    first = sweep(root, "seed=1,2")
    assert first.returncode == 0 and last_line(first) == "2 jobs: 2 done"
    foreign = (root / "seed=2" / "summary.json").read_bytes()
    # Another learning rate into the same directories: seed=2 holds a run of the other config.
    second = sweep(root, "seed=2,3", "optimizer.lr=0.2")
    assert second.returncode == 1, second.stderr[-2000:]
    assert last_line(second) == "2 jobs: 1 done, 1 refused — exit 1"
    [error] = error_lines(second)
    assert "seed=2" in error and "different config" in error
    assert (root / "seed=2" / "summary.json").read_bytes() == foreign  # left exactly as it was
    assert "seed=2" not in report_runs(root) and "seed=3" in report_runs(root)
    aggregate = json.loads((root / "seed_aggregate" / "aggregate.json").read_text())
    assert 2 not in aggregate["seeds"] and 3 in aggregate["seeds"]


@pytest.mark.slow
def test_a_job_directory_that_is_a_file_refuses_the_sweep_before_it_starts(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "seed=2").write_text("mine\n")
    result = sweep(root, "seed=1,2")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert error_lines(result) == ["Error: 1 of 2 job directories cannot be used; nothing was started:"]
    assert "seed=2" in result.stderr and "is an existing file" in result.stderr
    assert sorted(p.name for p in root.iterdir()) == ["seed=2"]  # nothing written
    assert (root / "seed=2").read_text() == "mine\n"


@pytest.mark.slow
def test_fused_sweeps_count_a_repeat_as_done_and_a_locked_job_as_refused(tmp_path):
    root = tmp_path / "sweep"
    first = sweep(root, "seed=1,2", launcher="fused")
    assert first.returncode == 0 and last_line(first) == "2 jobs: 2 done"
    again = sweep(root, "seed=1,2", launcher="fused")  # the same sweep again: nothing to do, both done
    assert again.returncode == 0, again.stderr[-2000:]
    assert last_line(again) == "2 jobs: 2 done"
    held = root / "seed=1"
    before = (held / "summary.json").read_bytes()
    with open(held / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process writes seed=1
        longer = sweep(root, "seed=1,2", "epochs=2", launcher="fused")
    assert longer.returncode == 1, longer.stderr[-2000:]
    assert last_line(longer) == "2 jobs: 1 done, 1 refused — exit 1"
    [error] = error_lines(longer)
    assert "seed=1" in error and "another process" in error
    assert (held / "summary.json").read_bytes() == before
    assert json.loads((root / "seed=2" / "summary.json").read_text())["status"] == "done"  # kept as it was
    assert report_runs(root) == ["seed=2"]
