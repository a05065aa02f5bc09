"""The command line, as a user types it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF_DIR, read_scalars


def run_cli(*args: str, cwd: Path, command=(sys.executable, "-m", "runner")) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_help_lists_every_group_and_option(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("dataset", "model", "loss", "optimizer", "scheduler", "regime"):
        assert f"{group}:" in result.stdout
        for option in (CONF_DIR / group).glob("*.yaml"):
            assert option.stem in result.stdout, (group, option.stem)
    assert "schema_" not in result.stdout  # schemas are not user-facing options
    assert "python -m runner board [DIR]" in result.stdout


def test_console_script_is_installed(tmp_path):
    script = shutil.which("hpr", path=str(Path(sys.executable).parent))
    assert script is not None
    result = run_cli("--help", cwd=tmp_path, command=(script,))
    assert result.returncode == 0 and "optimizer:" in result.stdout


def test_cli_run_writes_the_run_directory_and_says_where(tmp_path):
    out = tmp_path / "run"
    result = run_cli("dataset=iris", "epochs=2", "optimizer=adam", "optimizer.lr=0.01", "batch_size=1",
                     f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["iterations"] == 240 and summary["batch_size"] == 1
    assert len(read_scalars(out)["loss/train_iter"]) == 240
    assert (out / "model.pt").is_file()
    assert result.stdout.count("Open in TensorBoard: ") == 1 and f" board {out.resolve()}\n" in result.stdout
    assert (out / "cli.log").read_text().count("epoch ") >= 2  # Hydra keeps a log file per job


def test_progress_bar_when_forced(tmp_path):
    result = run_cli("dataset=iris", "epochs=1", "progress=true", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stderr and "4/4" in result.stderr and "loss=" in result.stderr


@pytest.mark.slow
def test_default_experiment_runs_from_the_command_line(tmp_path):
    result = run_cli(f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["val_acc"] > 0.9


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    """``hpr --help | head`` closes the pipe early: output nobody reads is dropped quietly
    (runner.cli's PipeSafeStream) and the command's own status stands, as a run piped to
    ``head -1`` still finishes its training."""
    proc = subprocess.Popen([sys.executable, "-m", "runner", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # no reader left: the first write fails with EPIPE
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and stderr == "", stderr


@pytest.mark.slow  # a real training run in a process
def test_a_reader_that_goes_away_does_not_break_the_run(tmp_path):
    """`hpr ... | head -1`: the run finishes and writes its results; no logging tracebacks."""
    run = subprocess.Popen(
        [sys.executable, "-m", "runner", "dataset=blobs", "epochs=1", "progress=false", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert run.stdout.readline().strip()  # the first line, as `head -1` reads it
    run.stdout.close()  # ... and goes away
    stderr = run.stderr.read()
    assert run.wait(timeout=600) == 0, stderr
    assert "Logging error" not in stderr and "BrokenPipe" not in stderr and "Traceback" not in stderr, stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "done"
