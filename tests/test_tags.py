"""Tag names: the names of runs written before the renaming read as today's, everywhere the
runner reads event files (the report, findings, seed statistics, ``runner.api``), and an old
checkpoint's metrics resume under today's names. (That TensorBoard's Time Series lists the
``loss`` group first is checked in a real browser: ``test_browser``.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner import tags
from runner.events.read import event_files, read_scalar_series
from runner.epochs import TrainState
from runner.report import write_report
from runner.events.writer import EventWriter
from runner.train import train

from conftest import compose_cfg

# The names runs were written with before the renaming: first path parts, old → new.
OLD_HEADS = {
    "by_iteration/": "vs_iteration/",
    "by_samples/": "vs_samples/",
    "by_time_ms/": "vs_time_ms/",
    "acc/": "metric/acc/",
    "gap/": "overfit_gap/",
}


def old_name(tag: str) -> str:
    """Today's tag as a run written before the renaming named it."""
    if tag == "update/grad_norm":
        return "grad_norm"
    for old, new in OLD_HEADS.items():
        if tag.startswith(new):
            rest = tag[len(new) :]
            return old + (old_name(rest) if old.startswith("by_") else rest)
    return tag


@pytest.mark.parametrize(
    "old, new",
    [
        ("acc/train", "metric/acc/train"),
        ("acc/val", "metric/acc/val"),
        ("gap/loss", "overfit_gap/loss"),
        ("gap/acc", "overfit_gap/acc"),
        ("grad_norm", "update/grad_norm"),
        ("grad_norm/std", "update/grad_norm/std"),  # a seed aggregate's companion
        ("acc/val/min", "metric/acc/val/min"),
        ("by_iteration/loss/train_full", "vs_iteration/loss/train_full"),
        ("by_samples/acc/val", "vs_samples/metric/acc/val"),
        ("by_time_ms/gap/loss", "vs_time_ms/overfit_gap/loss"),
    ],
)
def test_an_old_tag_reads_under_its_present_name(old, new):
    assert tags.current(old) == new
    assert tags.current(new) == new  # idempotent: today's names are left alone


@pytest.mark.parametrize("tag", ["loss/train_iter", "loss/val", "lr", "time/train_s", "noise/b_crit", "scaling/b_simple_by_update", "accuracy", "gradient"])
def test_tags_the_runner_never_renamed_are_unchanged(tag):
    assert tags.current(tag) == tag


def test_today_names_sort_the_loss_group_first():
    """TensorBoard orders groups by its tag comparison, where ``_`` and ``/`` break words and
    break characters come before letters; among plain lowercase names that is string order."""
    groups = {t.split("/", 1)[0] for t in (tags.LOSS_ITER, tags.ACC_TRAIN, tags.GAP_LOSS, tags.LR, tags.GRAD_NORM, tags.TRAIN_SECONDS, *tags.on_axes(tags.LOSS_FULL))}
    assert min(groups) == "loss" and sorted(groups)[-3:] == ["vs_iteration", "vs_samples", "vs_time_ms"]


def _train(run_dir: Path, *overrides: str) -> None:
    cfg = compose_cfg(["dataset=iris", "epochs=2", *overrides])
    cfg.output_dir = str(run_dir)
    train(cfg)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


def _rewrite_with_old_names(run: Path) -> None:
    """The run's event files replaced by one holding every point under its old name."""
    series = read_scalar_series(run)
    for path in event_files(run):
        path.unlink()
    writer = EventWriter(run)
    for tag, s in series.items():
        for step, value, wall in zip(s.steps.tolist(), s.values.tolist(), s.wall_times.tolist()):
            writer.add_scalar(old_name(tag), value, step, wall)
    writer.close()


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path]:
    """A sweep of BGD and mini-batch, and a copy whose event files use the old names."""
    new = tmp_path_factory.mktemp("new")
    for regime in ("bgd", "minibatch"):
        _train(new / f"regime={regime}", f"regime={regime}")
    old = tmp_path_factory.mktemp("old") / "sweep"
    shutil.copytree(new, old)
    for run in sorted(old.iterdir()):
        _rewrite_with_old_names(run)
    return new, old


def test_an_old_run_reads_as_a_new_one(sweeps):
    new, old = sweeps
    for name in ("regime=bgd", "regime=minibatch"):
        written = {t for path in event_files(old / name) for t in _tags_in(path)}
        assert "by_samples/acc/val" in written and "grad_norm" in written and "gap/loss" in written
        today, before = read_scalar_series(new / name), read_scalar_series(old / name)
        assert sorted(before) == sorted(today)
        assert "vs_samples/metric/acc/val" in before and "update/grad_norm" in before
        for tag, series in today.items():
            np.testing.assert_array_equal(before[tag].steps, series.steps, err_msg=tag)
            np.testing.assert_array_equal(before[tag].values, series.values, err_msg=tag)


def test_an_old_sweep_gets_the_same_report_and_findings(sweeps):
    new, old = sweeps
    write_report(new)
    write_report(old)
    assert sorted(p.name for p in (old / "report").glob("*.png")) == sorted(p.name for p in (new / "report").glob("*.png"))
    findings_new, findings_old = (json.loads((d / "findings.json").read_text()) for d in (new, old))
    assert findings_old == findings_new and set(findings_new["axes"]) == {"samples", "updates", "seconds"}
    first_new, first_old = ((d / "report.md").read_text().split("\n## ")[1] for d in (new, old))
    assert first_new.startswith("Findings") and first_old == first_new  # word for word


def test_an_old_checkpoints_metrics_resume_under_present_names():
    state = TrainState(metrics={"loss/val": 0.5, "acc/val": 0.75, "gap/loss": 0.1}, best_metrics={"acc/train": 1.0}, initial_metrics=None)
    assert state.metrics == {"loss/val": 0.5, "metric/acc/val": 0.75, "overfit_gap/loss": 0.1}
    assert state.best_metrics == {"metric/acc/train": 1.0} and state.initial_metrics is None


def _tags_in(path: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return {value.tag for event in EventFileLoader(str(path)).Load() for value in event.summary.value}
