"""The run directory as a user meets it: one writer, refused reruns change nothing, broken
files and a full disk give one line and exit 2, never a traceback. Real processes throughout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner.checkpoint import LAST, PREV
from runner.rundir import LOCK_FILE, exclusive

# Real processes into real run directories, minutes together: with the slow tests (CI runs them).
pytestmark = pytest.mark.slow

SMALL = ("dataset=iris", "epochs=2", "progress=false")


def run_cli(out: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "runner", *overrides, f"hydra.run.dir={out}"],
        cwd=next(p for p in out.parents if p.is_dir()), env=env, capture_output=True, text=True, timeout=timeout,
    )


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def results_and_record(root: Path) -> dict[str, str]:
    """The run's results and Hydra's record of its config; not the lock (it names the last
    process that held it), the log (it appends each attempt) or the report (regenerated)."""
    kept = ("summary.json", "model.pt", "checkpoints/", "tb/", ".hydra/")
    return {k: v for k, v in hashes(root).items() if k.startswith(kept)}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Exit 2, and stderr is exactly one line starting with ``Error:`` (no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_cli(out, *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def done_run(finished_run, tmp_path) -> Path:
    """Each test's own copy of one finished run (a copy is a run, as the README promises): one
    training process for the module instead of one per test."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out, symlinks=True)
    return out


# ------------------------------------------------------------------ one writer
def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = [sys.executable, "-m", "runner", "dataset=iris", "batch_size=1", "epochs=1000", "progress=false", f"hydra.run.dir={out}"]
    first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / LAST).exists() and time.time() < deadline:
            time.sleep(0.05)
        record = hashes(out / ".hydra")
        second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        line = one_line_error(second)
        assert f"pid {first.pid}" in line and str(out) in line
        assert first.poll() is None  # the holder runs on
        assert hashes(out / ".hydra") == record
    finally:
        first.kill()
        first.wait(timeout=30)
    # The kernel dropped the dead process's lock: the next user takes it over.
    with exclusive(out):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"


# ------------------------------------------------------------------ reruns into a finished directory
def test_a_rerun_with_another_config_into_a_finished_run_is_refused_and_changes_nothing(done_run):
    before = hashes(done_run)
    line = one_line_error(run_cli(done_run, *SMALL, "optimizer.lr=0.5"))
    assert "optimizer.lr: 0.1 -> 0.5" in line and str(done_run) in line
    assert {k: v for k, v in hashes(done_run).items() if k != LOCK_FILE and not k.endswith(".log")} == {
        k: v for k, v in before.items() if k != LOCK_FILE and not k.endswith(".log")
    }


def test_a_rerun_with_the_same_config_keeps_the_finished_run_and_its_record(done_run):
    before = results_and_record(done_run)
    result = run_cli(done_run, *SMALL, "progress=true")  # a key that does not change results
    assert result.returncode == 0, result.stderr[-3000:]
    assert results_and_record(done_run) == before


# ------------------------------------------------------------------ broken files
def test_a_run_directory_that_is_a_file_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.write_text("notes")
    line = one_line_error(run_cli(out, *SMALL))
    assert str(out) in line and "existing file" in line
    assert out.read_text() == "notes"
    line = one_line_error(run_cli(out / "sub", *SMALL))
    assert str(out) in line


@pytest.mark.parametrize("content", [b'{"status": "do', b"\x00\xff garbage", b"[1, 2]"])
def test_a_damaged_summary_is_one_line_and_kept(done_run, content):
    (done_run / "summary.json").write_bytes(content)
    line = one_line_error(run_cli(done_run, *SMALL))
    assert str(done_run / "summary.json") in line
    assert (done_run / "summary.json").read_bytes() == content


def _reshape_first_weight(path: Path) -> None:
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["model"]))
    payload["model"][key] = torch.zeros(3, 3)
    torch.save(payload, path)


def test_a_checkpoint_of_the_wrong_shape_falls_back_to_prev_then_is_one_line(done_run):
    (done_run / "summary.json").unlink()  # interrupted after its last checkpoint
    _reshape_first_weight(done_run / "checkpoints" / LAST)
    resumed = run_cli(done_run, *SMALL)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "cannot be loaded" in resumed.stdout + resumed.stderr and json.loads((done_run / "summary.json").read_text())["status"] == "done"

    (done_run / "summary.json").unlink()
    for name in (LAST, PREV):
        _reshape_first_weight(done_run / "checkpoints" / name)
    kept = hashes(done_run / "checkpoints")
    line = one_line_error(run_cli(done_run, *SMALL))
    assert str(done_run / "checkpoints") in line and "last.ckpt" in line and "prev.ckpt" in line
    assert "weights_only" not in line and "resume=never" in line
    assert hashes(done_run / "checkpoints") == kept


def test_an_unsafe_checkpoint_is_not_met_with_advice_to_trust_it(done_run):
    (done_run / "summary.json").unlink()
    script = "import os, torch\nclass Evil:\n    def __reduce__(self):\n        return (os.getpid, ())\n"
    for name in (LAST, PREV):
        subprocess.run([sys.executable, "-c", script + f"torch.save({{'state': Evil()}}, {str(done_run / 'checkpoints' / name)!r})"], check=True)
    line = one_line_error(run_cli(done_run, *SMALL))
    assert "weights_only" not in line and "only load by running code" in line and "resume=never" in line


# ------------------------------------------------------------------ a full disk
@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_leaves_no_temporary_files_and_resumes_once_freed(small_disk):
    out = small_disk / "run"
    args = ("dataset=iris", "batch_size=1", "epochs=40", "progress=false", "checkpoint_every=100")
    line = one_line_error(run_cli(out, *args))
    assert str(out) in line and "disk is full" in line
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n.startswith(".writing-") or n.endswith(".tmp")], names
    assert "model.pt" not in names and "summary.json" not in names
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_cli(out, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["iterations"] == 40 * 120
