"""Multirun sweeps through the real CLI: directories, exact counts, report, HParams, launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.cli import FAULT_ENV
from runner.loop import epoch_order
from runner.train import build_run

from conftest import CONF_DIR, read_scalars, run_in_process


def multirun(sweep_dir: Path, *overrides: str, env: dict | None = None, exit_code: int = 0) -> subprocess.CompletedProcess:
    result = run_in_process(["-m", "progress=false", f"hydra.sweep.dir={sweep_dir}", *overrides], sweep_dir.parent, env)
    assert result.returncode == exit_code, result.stderr[-3000:]
    return result


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {
        str(p.parent.relative_to(sweep_dir)): json.loads(p.read_text())
        for p in sorted(sweep_dir.rglob("summary.json"))
        if "seed_aggregate" not in p.parts and not any(part.startswith(".") for part in p.relative_to(sweep_dir).parts)
    }


@pytest.fixture(scope="module")
def gd_compare(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("gd") / "sweep"
    multirun(sweep, "experiment=gd_compare", "epochs=1")
    return sweep


EXPECTED_IPE = {"full": 1, "1": 1438, "8": 180, "32": 45, "128": 12}  # 1438 training digits


def test_gd_compare_writes_one_directory_per_cell_named_by_its_swept_key(gd_compare):
    runs = summaries(gd_compare)
    # Only the swept key names a job: epochs=1 and experiment=gd_compare are shared by all.
    assert sorted(runs) == sorted(f"batch_size={b}" for b in EXPECTED_IPE)
    for name, summary in runs.items():
        b = name.split("=")[1]
        assert summary["status"] == "done"
        assert summary["iterations_per_epoch"] == EXPECTED_IPE[b] == summary["iterations"]
        assert summary["samples_seen"] == 1438
        tb = read_scalars(gd_compare / name)
        assert [s for s, _ in tb["loss/train_iter"]] == list(range(EXPECTED_IPE[b]))


def test_gd_compare_cells_share_initial_weights_and_data_order(make_cfg):
    runs = [build_run(make_cfg("experiment=gd_compare", f"batch_size={b}")) for b in (1, 8, "full")]
    for run in runs[1:]:
        for a, b in zip(runs[0].model.parameters(), run.model.parameters()):
            assert torch.equal(a, b)
    orders = [epoch_order(r.order_generator, len(r.train), True, r.device) for r in runs]
    assert all(torch.equal(orders[0], o) for o in orders[1:])
    assert {r.lr for r in runs} == {0.01}


def test_gd_compare_report_has_one_row_per_run_and_plots(gd_compare):
    report = (gd_compare / "report.md").read_text()
    for name, summary in summaries(gd_compare).items():
        row = next(line for line in report.splitlines() if line.startswith("|") and name.split(",")[0] in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert str(summary["iterations_per_epoch"]) in cells and str(summary["iterations"]) in cells
    pngs = sorted(p.name for p in (gd_compare / "report").glob("*.png"))
    assert {"loss_vs_epoch.png", "loss_vs_iteration.png", "loss_vs_samples.png", "loss_vs_time.png"} <= set(pngs)
    assert all((gd_compare / "report" / p).stat().st_size > 10_000 for p in pngs)


def test_gd_compare_hparams_are_in_the_event_files(gd_compare):
    # No experiment summary anywhere: TensorBoard infers it from the runs' sessions.
    assert not (gd_compare / "_hparams").exists()
    for name, summary in summaries(gd_compare).items():
        acc = EventAccumulator(str(gd_compare / name))
        acc.Reload()
        assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(acc.summary_metadata)
        assert summary["hparams"]["batch_size"] == summary["batch_size"]
        assert summary["hparams"]["regime"] in ("bgd", "sgd", "minibatch")


def test_a_diverging_and_a_crashing_job_do_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    # Job #2 (batch_size=8, lr=0.05) raises as if it crashed; job #1 diverges.
    result = multirun(sweep, "dataset=iris", "epochs=2", "batch_size=1,8", "optimizer.lr=0.05,1e6", env={FAULT_ENV: "2"}, exit_code=1)
    runs = summaries(sweep)
    by_cell = {name.split("/")[0]: s for name, s in runs.items()}
    assert by_cell["batch_size=1,optimizer.lr=0.05"]["status"] == "done"
    assert by_cell["batch_size=1,optimizer.lr=1000000.0"]["status"] == "diverged"
    crashed = by_cell["batch_size=8,optimizer.lr=0.05"]
    assert crashed["status"] == "failed" and "RuntimeError" in crashed["error"] and "Traceback" in crashed["traceback"]
    assert by_cell["batch_size=8,optimizer.lr=1000000.0"]["status"] == "diverged"
    report = (sweep / "report.md").read_text()
    assert report.count("| diverged |") == 2 and report.count("| failed |") == 1
    assert "4 jobs: 1 done, 2 diverged, 1 failed — exit 1" in result.stdout + result.stderr


def test_every_sweep_point_is_validated_before_the_first_job(tmp_path):
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "dataset=iris", "epochs=1", "batch_size=8,500", "optimizer.lr=0.1,-1",
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "3 of 4 sweep points cannot run; nothing was started" in result.stderr
    assert "batch_size=500" in result.stderr and "optimizer.lr=-1" in result.stderr
    assert not sweep.exists()  # not a single job ran


@pytest.mark.slow
def test_rerunning_a_sweep_skips_finished_resumes_interrupted_and_reruns_failed(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = ("dataset=iris", "epochs=3", "batch_size=8,16,32")
    multirun(sweep, *overrides, env={FAULT_ENV: "2"}, exit_code=1)  # batch 32 crashes
    first = summaries(sweep)
    done_dir = sweep / "batch_size=8"
    killed_dir = sweep / "batch_size=16"
    (killed_dir / "summary.json").unlink()  # as if killed after its last checkpoint
    (killed_dir / "model.pt").unlink()
    (done_events,) = done_dir.glob("events.out.tfevents.*")
    (killed_events,) = killed_dir.glob("events.out.tfevents.*")
    done_mtime = done_events.stat().st_mtime_ns
    multirun(sweep, *overrides)
    second = summaries(sweep)
    assert all(s["status"] == "done" for s in second.values())
    assert second["batch_size=8"] == first["batch_size=8"]
    assert list(done_dir.glob("events.out.tfevents.*")) == [done_events]
    assert done_events.stat().st_mtime_ns == done_mtime  # untouched
    assert second["batch_size=16"]["train_loss"] == first["batch_size=16"]["train_loss"]
    # The resumed job appended to its own event file: still one file, every step once.
    assert list(killed_dir.glob("events.out.tfevents.*")) == [killed_events]
    assert [s for s, _ in read_scalars(killed_dir)["loss/train_iter"]] == list(range(24))
    assert first["batch_size=32"]["status"] == "failed"
    # The failed attempt's files, its event file included, were set aside before the rerun.
    (attempt,) = (sweep / "batch_size=32" / ".attempts").iterdir()
    assert (attempt / "summary.json").is_file()
    assert len(list((sweep / "batch_size=32").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow  # a real sweep in processes: CI runs it under -m slow
def test_seed_axis_is_aggregated(tmp_path):
    sweep = tmp_path / "sweep"
    multirun(sweep, "dataset=iris", "epochs=2", "batch_size=8,full", "seed=0,1,2")
    for b in ("8", "full"):
        group = sweep / f"batch_size={b}"
        assert sorted(p.name for p in group.glob("seed=*")) == ["seed=0", "seed=1", "seed=2"]
        mean = read_scalars(group / "seed_aggregate")["loss/train_full"]
        members = [read_scalars(group / f"seed={k}")["loss/train_full"] for k in range(3)]
        assert [s for s, _ in mean] == [0, 1, 2]  # epoch 0: the initial weights
        for i, (_, value) in enumerate(mean):
            assert value == pytest.approx(sum(m[i][1] for m in members) / 3, rel=1e-5)


@pytest.mark.slow
def test_joblib_launcher_gives_the_same_results_as_the_basic_launcher(tmp_path):
    overrides = ("dataset=iris", "epochs=2", "batch_size=4,16,full")
    multirun(tmp_path / "basic", *overrides)
    multirun(tmp_path / "joblib", *overrides, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    basic, joblib = summaries(tmp_path / "basic"), summaries(tmp_path / "joblib")
    assert sorted(basic) == sorted(joblib) and len(basic) == 3
    for name in basic:
        assert basic[name]["train_loss"] == joblib[name]["train_loss"]
        assert read_scalars(tmp_path / "basic" / name)["loss/train_iter"] == \
            read_scalars(tmp_path / "joblib" / name)["loss/train_iter"]


@pytest.mark.slow  # a real sweep in processes: CI runs it under -m slow
def test_optuna_preset_searches_the_learning_rate(tmp_path):
    sweep = tmp_path / "sweep"
    multirun(sweep, "experiment=lr_search", "dataset=iris", "epochs=1", "hydra.sweeper.n_trials=3")
    runs = summaries(sweep)
    assert len(runs) == 3 and len({s["lr"] for s in runs.values()}) == 3
    assert all(1e-4 <= s["lr"] <= 1.0 for s in runs.values())
    assert (sweep / "optimization_results.yaml").is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes_with_a_sweep(name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"experiment={name}", "output_dir=x"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params or name == "lr_search"
    header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert any(f"python -m runner -m experiment={name}" in line for line in header[:8])
    GlobalHydra.instance().clear()
