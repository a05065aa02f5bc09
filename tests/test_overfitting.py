"""Overfitting made visible: overfit_gap/loss and overfit_gap/acc, early stopping's min_delta and restore_best,
train_size, and the report's best-epoch mark, each against a known answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from runner.epochs import TrainState, _track_best
from runner.errors import ConfigError
from runner.report import PLOTS, Labels, _draw, _lines, _load_records, _configurations
from runner.train import build_run, train

from conftest import read_scalars

IRIS = ("dataset=iris", "optimizer.lr=0.05")


def test_gap_is_validation_minus_training_exactly_as_read_back(make_cfg, tmp_path):
    summary = train(make_cfg(*IRIS, "epochs=3", output_dir=tmp_path / "r"))
    tags = read_scalars(tmp_path / "r")
    steps = [s for s, _ in tags["overfit_gap/loss"]]
    assert steps == [0, 1, 2, 3]  # epoch 0 (initial weights) and every epoch end
    for name, (high, low) in {"overfit_gap/loss": ("loss/val", "loss/train_full"), "overfit_gap/acc": ("metric/acc/train", "metric/acc/val")}.items():
        gap = np.array([v for _, v in tags[name]], np.float32)
        # float32 a - b is the exact difference rounded once: what the runner logs.
        want = np.array([v for _, v in tags[high]], np.float32) - np.array([v for _, v in tags[low]], np.float32)
        assert gap.tobytes() == want.tobytes(), name
    assert summary["gap_loss"] == np.float32(summary["val_loss"]) - np.float32(summary["train_loss"])
    assert summary["gap_acc"] == np.float32(summary["train_acc"]) - np.float32(summary["val_acc"])
    assert "vs_iteration/overfit_gap/loss" in tags  # on every x-axis, like the other epoch-level scalars


def test_no_gap_without_a_validation_split(make_cfg, tmp_path):
    summary = train(make_cfg(*IRIS, "val_fraction=0", output_dir=tmp_path / "r"))
    assert not any(tag.startswith("overfit_gap/") for tag in read_scalars(tmp_path / "r"))
    assert summary["gap_loss"] is None and summary["gap_acc"] is None


def _fake_run(min_delta: float, restore_best: bool) -> SimpleNamespace:
    cfg = OmegaConf.create({"early_stopping_min_delta": min_delta, "early_stopping_restore_best": restore_best})
    return SimpleNamespace(cfg=cfg, model=torch.nn.Linear(2, 1))


def test_min_delta_counts_only_improvements_larger_than_it():
    # Keras: an epoch improves when loss < best - min_delta. With min_delta 0.05:
    # 1.0 (first: best), 0.95 (not < 0.95), 0.94 (< 0.95: best), 0.91 (not < 0.89), 0.80 (best).
    run, state = _fake_run(0.05, False), TrainState()
    bests = []
    for epoch, loss in enumerate([1.0, 0.95, 0.94, 0.91, 0.80], start=1):
        state.epoch, state.metrics = epoch, {"loss/train_full": 9.0, "loss/val": loss}
        _track_best(run, state)
        bests.append(state.best_epoch)
    assert bests == [1, 1, 3, 3, 5] and state.best_loss == 0.80 and state.best_weights is None
    run, state = _fake_run(0.0, True), TrainState()  # min_delta 0: any decrease
    for epoch, loss in enumerate([1.0, 0.99, 0.99], start=1):
        state.epoch, state.metrics = epoch, {"loss/train_full": loss}
        _track_best(run, state)
    assert state.best_epoch == 2 and state.best_weights is not None


def test_patience_with_min_delta_stops_when_no_epoch_improves_by_enough(make_cfg, tmp_path):
    base = train(make_cfg(*IRIS, "epochs=4", "early_stopping_patience=1", output_dir=tmp_path / "a"))
    assert base["epochs"] == 4 and not base["stopped_early"]  # every epoch improves a little
    summary = train(make_cfg(*IRIS, "epochs=4", "early_stopping_patience=1", "early_stopping_min_delta=10", output_dir=tmp_path / "b"))
    assert (summary["epochs"], summary["best_epoch"], summary["stopped_early"]) == (2, 1, True)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


# A min_delta no loss can beat makes epoch 1 the best: its weights are those of a 1-epoch run.
RESTORE = (*IRIS, "early_stopping_restore_best=true", "early_stopping_min_delta=1e9")


def test_restore_best_saves_the_best_epochs_weights(make_cfg, tmp_path):
    one = train(make_cfg(*IRIS, "epochs=1", output_dir=tmp_path / "one"))
    last = train(make_cfg(*IRIS, "epochs=3", output_dir=tmp_path / "last"))
    best = train(make_cfg(*RESTORE, "epochs=3", output_dir=tmp_path / "best"))
    assert (best["restored_best"], best["best_epoch"], best["epochs"]) == (True, 1, 3)
    assert not last["restored_best"] and best["best_metrics"]["loss/val"] == one["val_loss"]
    assert all(torch.equal(_weights(tmp_path / "best")[k], w) for k, w in _weights(tmp_path / "one").items())
    assert not all(torch.equal(_weights(tmp_path / "last")[k], w) for k, w in _weights(tmp_path / "one").items())


def test_a_resumed_run_restores_the_best_epoch_from_its_checkpoint(make_cfg, tmp_path):
    train(make_cfg(*IRIS, "epochs=1", output_dir=tmp_path / "one"))
    out = tmp_path / "resumed"
    train(make_cfg(*RESTORE, "epochs=2", output_dir=out))
    (out / "summary.json").unlink()  # as if killed after the epoch-2 checkpoint
    summary = train(make_cfg(*RESTORE, "epochs=3", output_dir=out))  # continues to epoch 3
    assert (summary["status"], summary["epochs"], summary["best_epoch"], summary["restored_best"]) == ("done", 3, 1, True)
    assert all(torch.equal(_weights(out)[k], w) for k, w in _weights(tmp_path / "one").items())


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("early_stopping_min_delta=-0.1", r"early_stopping_min_delta=-0.1 is not allowed: a finite number in \[0, "),
        ("train_size=0", r"train_size=0 is not allowed: an integer in \[1, "),
        ("train_size=121", "at most the training part's 120 samples"),
    ],
)
def test_bad_values_are_refused_naming_the_key(make_cfg, override, match):
    with pytest.raises(ConfigError, match=match):
        build_run(make_cfg(*IRIS, override))


def test_train_size_keeps_that_many_training_samples_and_the_same_validation(make_cfg):
    raw = ("dataset.standardize=false",)  # each part would be scaled with its own statistics
    full, small = build_run(make_cfg(*IRIS, *raw)), build_run(make_cfg(*IRIS, *raw, "train_size=30", "batch_size=8"))
    assert (len(full.train), len(small.train)) == (120, 30)
    assert torch.equal(full.val.X, small.val.X)  # the validation part is untouched
    full_rows = {tuple(r) for r in full.train.X.tolist()}
    small_rows = [tuple(r) for r in small.train.X.tolist()]
    assert set(small_rows) <= full_rows and len(set(small_rows)) == len(set(map(tuple, np.unique(small.train.X.numpy(), axis=0))))


def test_the_report_marks_a_single_runs_best_epoch(make_cfg, tmp_path):
    train(make_cfg(*RESTORE, "epochs=3", output_dir=tmp_path / "r"))
    records = _load_records(tmp_path / "r")
    configs = _configurations(records)
    lines = _lines(configs, Labels.build(list(configs), fallback="r"))
    for name in ("train_vs_val_loss", "gap_loss_vs_epoch"):
        spec = next(s for s in PLOTS if s.name == name)
        fig = _draw(spec, lines, "", "loss")
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.texts] == ["best epoch 1"], name
        assert any(list(l.get_xdata()) == [1, 1] for l in ax.lines), name  # the vertical mark
    from runner.report import write_report

    text = write_report(tmp_path / "r").read_text()
    assert "model.pt holds epoch 1's weights" in text and "lowest val loss at epoch 1 of 3" in text


@pytest.mark.slow
def test_the_overfit_preset_opens_the_gap(tmp_path):
    """``python -m runner experiment=overfit`` as printed: validation loss bottoms out and
    climbs while the training loss keeps falling."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "runner", "experiment=overfit", "progress=false", f"hydra.run.dir={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    tags = read_scalars(out)
    val = [v for _, v in tags["loss/val"]]
    train_full = [v for _, v in tags["loss/train_full"]]
    gap = [v for _, v in tags["overfit_gap/loss"]]
    best = summary["best_epoch"]
    assert summary["n_train"] == 60 and summary["restored_best"]
    assert 1 <= best < 40 and val[best] == min(val)
    assert val[-1] > 1.1 * val[best]  # climbed again
    assert train_full[-1] < train_full[best] / 5  # while training kept fitting
    assert gap[-1] > gap[best] and (out / "report" / "train_vs_val_loss.png").is_file()
