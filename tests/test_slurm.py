"""Sweeps on Slurm (``hydra/launcher=slurm``) and submitit's local executor (``slurm_local``).

The presets are checked in the default run and the local executor under ``-m slow``. The
``-m slurm`` tests sweep through a real one-node Slurm cluster, as a user runs them; they need
a running cluster whose node is idle: ``.ci/slurm-up.sh`` (Debian's slurm-wlm and munge on
127.0.0.1) starts one, ``.ci/slurm-down.sh`` stops it. Run with ``pytest -m slurm``. Every job
is a Slurm job: submitted with sbatch by the launching process, run by slurmd, writing into the
sweep directory (here under /tmp, which the one node shares with itself).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR, read_scalars


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm client (sinfo, sbatch): apt-get install slurm-wlm munge, then .ci/slurm-up.sh"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        return f"no Slurm node up (sinfo: {(state.stdout + state.stderr).strip()!r}): run .ci/slurm-up.sh"
    return None


try:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401

    _plugin_problem = None
except ImportError:
    _plugin_problem = "hydra-submitit-launcher is not installed: pip install -e '.[slurm]'"
needs_plugin = pytest.mark.skipif(_plugin_problem is not None, reason=str(_plugin_problem))
_problem = _plugin_problem or _cluster_problem()
# A running cluster: CI starts one with .ci/slurm-up.sh and runs these with -m slurm.
CLUSTER = [pytest.mark.slurm, pytest.mark.skipif(_problem is not None, reason=str(_problem))]


def needs_cluster(test):
    for mark in CLUSTER:
        test = mark(test)
    return test

EPOCHS = 2
N_TRAIN = 1438  # the digits training split
EXPECTED_IPE = {"full": 1, "1": 1438, "8": 180, "32": 45, "128": 12}
# One CPU and 1 GB per job: both cores of the CI machine run jobs at once.
SLURM = ("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10")
SWEEP = ("-m", "experiment=gd_compare", f"epochs={EPOCHS}", "progress=false")


def launch(sweep_dir: Path, *overrides: str) -> subprocess.Popen:
    """``python -m runner -m ...`` from the directory above the sweep, as a user types it."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *SWEEP, *SLURM, f"hydra.sweep.dir={sweep_dir}", *overrides],
        cwd=sweep_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {
        str(p.parent.relative_to(sweep_dir)): json.loads(p.read_text())
        for p in sorted(sweep_dir.rglob("summary.json"))
        if not any(part.startswith(".") for part in p.relative_to(sweep_dir).parts)
    }


def job_logs(sweep_dir: Path) -> dict[str, str]:
    """Each Slurm job's stdout (submitit's ``<jobid>_<task>_log.out``), by Slurm job id."""
    return {p.parent.name: p.read_text() for p in sorted((sweep_dir / ".submitit").glob("*/*_log.out"))}


@needs_plugin
@pytest.mark.parametrize(
    "preset, target",
    [
        ("slurm", "hydra_plugins.hpr_cluster_launchers.cluster_launchers.SlurmLauncher"),
        ("slurm_local", "hydra_plugins.hpr_cluster_launchers.cluster_launchers.LocalLauncher"),
    ],
)
def test_each_slurm_preset_composes_to_its_launcher_and_passes_the_checks(preset, target):
    from runner import preflight

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == target
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # next to the runs, on the shared filesystem
    if preset == "slurm":
        assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task, launcher.array_parallelism) == (None, 60, 2, 32)
        assert (launcher.signal_delay_s, launcher.max_num_timeout) == (120, 3)
    preflight.check_hydra(cfg, multirun=True)  # the launcher is on the allow-list


@needs_plugin
@pytest.mark.slow
def test_a_sweep_through_submitits_local_executor_runs_each_job_in_its_own_process_and_reports_once(tmp_path):
    sweep = tmp_path / "sweep"
    # Without OMP_NUM_THREADS (the tests' own share of the cores), as a user runs it.
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "OMP_NUM_THREADS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", "experiment=gd_compare", "dataset=wine", "epochs=2", "progress=false",
         "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out = finish(proc)
    runs = summaries(sweep)
    wine_ipe = {"full": 1, "1": 142, "8": 18, "32": 5, "128": 2}  # 142 training rows
    assert sorted(runs) == sorted(f"batch_size={b}" for b in wine_ipe)
    for name, summary in runs.items():
        assert summary["status"] == "done" and summary["iterations"] == 2 * wine_ipe[name.split("=")[1]]
    pids = {int(next((sweep / name).glob("events.out.tfevents.*")).name.split(".")[-2]) for name in runs}
    assert len(pids) == 5 and proc.pid not in pids  # five processes, none of them the launcher
    # Side by side, each keeps to the preset's cpus_per_task: 1 torch thread, not one per core.
    for name in runs:
        assert "on cpu (1 thread): " in (sweep / name / "cli.log").read_text(), name
    assert out.count("Report: ") == 1 and "Sweep finished: 5 jobs: 5 done" in out
    assert "from 5 runs" in (sweep / "report.md").read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, str]:
    sweep = tmp_path_factory.mktemp("slurm") / "sweep"
    return sweep, finish(launch(sweep))


@needs_cluster
def test_gd_compare_sweep_runs_every_job_on_slurm_and_reports_once_where_launched(uninterrupted):
    sweep, out = uninterrupted
    runs = summaries(sweep)
    assert sorted(runs) == sorted(f"batch_size={b}" for b in EXPECTED_IPE)
    for name, summary in runs.items():
        ipe = EXPECTED_IPE[name.split("=")[1]]
        assert summary["status"] == "done", summary
        assert (summary["iterations_per_epoch"], summary["iterations"], summary["samples_seen"]) == (ipe, EPOCHS * ipe, EPOCHS * N_TRAIN)
        assert (sweep / name / "model.pt").is_file()
    # Each job ran as its own Slurm array task (submitit's folder per task, named by job id).
    logs = job_logs(sweep)
    assert len(logs) == 5 and all(re.fullmatch(r"\d+_[0-4]", jobid) for jobid in logs), sorted(logs)
    assert all("Job completed successfully" in text for text in logs.values())
    # The end-of-sweep work ran once, in the launching process, after every job: not in a job.
    assert out.count("Report: ") == 1 and "Sweep finished: 5 jobs: 5 done" in out
    assert not any("Report: " in text or "Sweep finished" in text for text in logs.values())
    report = (sweep / "report.md").read_text()
    assert "from 5 runs" in report and "5 done" in report
    rows = [line for line in report.splitlines() if line.startswith("| `batch_size=")]
    assert sorted(row.split("`")[1] for row in rows) == sorted(runs)
    assert all(f"| {EPOCHS * EXPECTED_IPE[row.split('`')[1].split('=')[1]]} |" in row for row in rows)


def slurm_job_id(sweep: Path, proc: subprocess.Popen, timeout: float = 300) -> str:
    """The Slurm job id of the sweep's only job, once it runs and has a checkpoint to resume."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        folders = [p.name for p in (sweep / ".submitit").glob("*") if p.is_dir() and p.name.isdigit()]
        ckpt = next(sweep.glob("*/checkpoints/last.ckpt"), None)
        if folders and ckpt is not None:
            try:
                if torch.load(ckpt, weights_only=True)["state"]["iteration"] >= 100:
                    return folders[0]
            except Exception:
                pass  # being replaced right now
        time.sleep(0.05)
    raise AssertionError(f"the job did not start training (launcher exit {proc.poll()})")


def release_when_requeued(jobid: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """A requeued job waits out Slurm's begin-time delay (about two minutes); start it now."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        state = subprocess.run(["squeue", "-h", "-j", jobid, "-o", "%T %r"], capture_output=True, text=True).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            # slurmd refuses a job credential issued in the same second as the one it revoked
            # when the job was requeued ("Job credential revoked"): that is what the delay is for.
            time.sleep(2)
            subprocess.run(["scontrol", "update", f"jobid={jobid}", "starttime=now"], check=True)
            return
        time.sleep(0.2)
    raise AssertionError(f"job {jobid} was not requeued")


def assert_equal_runs(run: Path, reference: Path) -> None:
    got, want = json.loads((run / "summary.json").read_text()), json.loads((reference / "summary.json").read_text())
    assert got["status"] == "done"
    for key in ("iterations", "samples_seen", "train_loss", "val_loss", "train_acc", "val_acc", "initial_train_loss"):
        assert got[key] == want[key], key
    weights, ref_weights = (torch.load(p / "model.pt", weights_only=True) for p in (run, reference))
    assert weights.keys() == ref_weights.keys()
    for key in ref_weights:
        torch.testing.assert_close(weights[key], ref_weights[key], rtol=0, atol=0)
    scalars, ref_scalars = read_scalars(run), read_scalars(reference)
    assert [step for step, _ in scalars["loss/train_iter"]] == list(range(want["iterations"]))  # each step once
    assert scalars["loss/train_iter"] == ref_scalars["loss/train_iter"]
    assert scalars["loss/train_full"] == ref_scalars["loss/train_full"]


@pytest.mark.parametrize(
    "interrupt",
    [
        # A preemption or an operator's requeue: Slurm sends SIGTERM, the run saves a
        # checkpoint at the next update and exits; Slurm starts the same batch script again.
        pytest.param(lambda jobid: ["scontrol", "requeue", jobid], id="scontrol-requeue", marks=CLUSTER),
        # The warning before the time limit (sbatch --signal=USR2@signal_delay_s): the run saves
        # a checkpoint, then submitit's handler resubmits the same job and requeues it.
        pytest.param(lambda jobid: ["scancel", "--signal=USR2", jobid], id="time-limit-signal", marks=CLUSTER),
    ],
)
def test_a_requeued_job_resumes_from_its_checkpoint_and_ends_equal_to_an_uninterrupted_one(uninterrupted, tmp_path, interrupt):
    reference = uninterrupted[0] / "batch_size=1"
    # Only batch_size=1 (the longest job), with a checkpoint every 100 updates so that the
    # interruption comes mid-epoch; checkpoint_every changes no number.
    sweep = tmp_path / "sweep"
    proc = launch(sweep, "batch_size=1", "checkpoint_every=100")
    jobid = slurm_job_id(sweep, proc)
    subprocess.run(interrupt(jobid), check=True)
    release_when_requeued(jobid, proc)
    out = finish(proc)
    assert "Sweep finished: 1 job: 1 done" in out
    # Nothing is swept, so the job's directory is named by its overrides.
    (run,) = [p.parent for p in sweep.glob("*/summary.json")]
    log = (run / "cli.log").read_text()
    assert "Stopped by signal" in log and "Resuming from" in log, log[-3000:]
    restarts = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts, restarts
    assert_equal_runs(run, reference)
