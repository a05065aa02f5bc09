"""The report: its table, its plots, their TensorBoard copies, and the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest
from omegaconf import OmegaConf

from runner import report
from runner.aggregate import find_runs, natural_key, read_summary
from runner.events.read import Series
from runner.report import PLOTS, Labels, write_report
from runner.events.writer import EventWriter
from runner.train import train

from conftest import REPO, compose_cfg

IRIS = ("dataset=iris", "epochs=2")
REGIMES = ("bgd", "sgd", "minibatch")
ALL_PLOTS = {spec.name for spec in PLOTS}
SEED_FIGURE = "final_over_seeds"  # runner.seedstats: drawn when a configuration has several seeds
FAILED_ERROR = "model=cnn needs image-shaped inputs; iris has 4 features"


def _train(run_dir: Path, *overrides: str) -> dict:
    """Trains into ``run_dir`` and leaves Hydra's record of the overrides and config."""
    cfg = compose_cfg([*IRIS, *overrides])
    # Set after composing: the "=" in sweep paths would not survive the override parser.
    cfg.output_dir = str(run_dir)
    summary = train(cfg)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in (*IRIS, *overrides)))
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return summary


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """bgd / sgd / minibatch × 2 seeds, one diverged run and one failed run, as a multirun lays them out."""
    root = tmp_path_factory.mktemp("sweep")
    for regime in REGIMES:
        for seed in (0, 1):
            _train(root / f"dataset=iris,epochs=2,regime={regime}" / f"seed={seed}", f"regime={regime}", f"seed={seed}")
    diverged = _train(root / "batch_size=1,dataset=iris,epochs=2,optimizer.lr=1e6" / "seed=0", "batch_size=1", "optimizer.lr=1e6")
    assert diverged["status"] == "diverged"
    failed = root / "dataset=iris,epochs=2,model=cnn" / "seed=0"
    failed.mkdir(parents=True)
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "error": FAILED_ERROR}))
    return root


@pytest.fixture(scope="module")
def reported(sweep) -> Path:
    write_report(sweep)
    return sweep


def _table(markdown: str) -> dict[str, dict[str, str]]:
    """The runs table as run name → column → cell."""
    runs_section = re.split(r"^## (?:Runs|The run)$", markdown, flags=re.M)[1].split("\n## ")[0]
    lines = [line for line in runs_section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("*`")] = dict(zip(header, cells))
    return rows


# --------------------------------------------------------------------------- report.md
def test_table_has_one_row_per_run_with_counts_from_the_summary(reported):
    rows = _table((reported / "report.md").read_text())
    runs = {
        f"regime={regime}, seed={seed}": reported / f"dataset=iris,epochs=2,regime={regime}" / f"seed={seed}"
        for regime in REGIMES
        for seed in (0, 1)
    }
    runs["batch_size=1, optimizer.lr=1e6, seed=0"] = reported / "batch_size=1,dataset=iris,epochs=2,optimizer.lr=1e6" / "seed=0"
    runs["model=cnn, seed=0"] = reported / "dataset=iris,epochs=2,model=cnn" / "seed=0"
    group_rows = {f"regime={regime}, mean of seeds 0–1" for regime in REGIMES}
    assert set(rows) == set(runs) | group_rows

    for name, run in runs.items():
        summary = read_summary(run)
        row = rows[name]
        assert row["status"] == summary["status"]
        if summary["status"] != "failed":
            assert row["iterations/epoch"] == str(summary["iterations_per_epoch"])
            assert row["total updates"] == str(summary["iterations"])
            assert row["N"] == str(summary["n_train"])
            assert row["samples seen"] == str(summary["samples_seen"])
    # 120 training samples: BGD 1 update per epoch, SGD 120, mini-batch (32) ceil(120/32) = 4.
    assert [rows[f"regime={r}, seed=0"]["iterations/epoch"] for r in REGIMES] == ["1", "120", "4"]
    assert [rows[f"regime={r}, seed=0"]["total updates"] for r in REGIMES] == ["2", "240", "8"]


def test_unfinished_runs_stay_in_the_table_with_their_reason(reported, sweep):
    rows = _table((reported / "report.md").read_text())
    diverged = rows["batch_size=1, optimizer.lr=1e6, seed=0"]
    iteration = read_summary(sweep / "batch_size=1,dataset=iris,epochs=2,optimizer.lr=1e6" / "seed=0")["divergence"]["iteration"]
    assert diverged["status"] == "diverged"
    assert f"non-finite loss at iteration {iteration} " in diverged["notes"]
    assert diverged["final train loss"] == "—"
    failed = rows["model=cnn, seed=0"]
    assert failed["status"] == "failed" and failed["notes"] == FAILED_ERROR
    assert failed["N"] == failed["val acc"] == "—"


def test_numbers_have_four_significant_digits(reported, sweep):
    rows = _table((reported / "report.md").read_text())
    summary = read_summary(sweep / "dataset=iris,epochs=2,regime=sgd" / "seed=1")
    row = rows["regime=sgd, seed=1"]
    assert row["final train loss"] == f"{summary['train_loss']:.4g}"
    assert row["val acc"] == f"{summary['val_acc']:.4g}"
    mean_row = rows["regime=sgd, mean of seeds 0–1"]
    members = [read_summary(sweep / "dataset=iris,epochs=2,regime=sgd" / f"seed={k}") for k in (0, 1)]
    assert mean_row["val loss"] == f"{np.mean([m['val_loss'] for m in members]):.4g}"


def test_report_names_the_directory_explains_and_links_every_plot(reported):
    text = (reported / "report.md").read_text()
    assert text.startswith(f"# Report: {reported.name}\n")
    assert "## How to read this" in text and "lags one update" in text
    assert "`dataset=iris`, `epochs=2`" in text  # the shared settings, said once
    for name in ALL_PLOTS:
        assert f"](report/{name}.png)" in text


# --------------------------------------------------------------------------- plots
def test_plots_are_real_pngs_with_content(reported):
    assert {p.stem for p in (reported / "report").glob("*.png")} == ALL_PLOTS | {SEED_FIGURE}
    for png in (reported / "report").glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), png.name
        assert len(data) > 10_000, png.name
        pixels = mpimg.imread(png)
        assert pixels.shape[:2] == (500, 900), png.name  # 9 × 5 in at 100 dpi
        assert pixels[..., :3].var() > 0.01, png.name
        rgb = (pixels[..., :3] * 255).round().astype(np.uint32)
        colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
        assert len(colours) > 50, png.name


def _event_dirs(root: Path) -> set[Path]:
    return {p.parent for p in root.rglob("events.out.tfevents.*")}


def test_the_report_adds_no_run_to_tensorboard(reported):
    # Every directory holding events is a training run: the plots stay out of TensorBoard,
    # whose Scalars tab draws the same curves.
    runs_with_events = {run for run in find_runs(reported) if list(run.glob("events.out.tfevents.*"))}
    assert _event_dirs(reported) == runs_with_events and len(runs_with_events) == 7
    assert not (reported / "_report").exists()


def test_regenerating_replaces_images_and_leaves_the_backend_alone(reported):
    backend = matplotlib.rcParams["backend"]
    before = _event_dirs(reported)
    write_report(reported)
    assert _event_dirs(reported) == before
    assert {p.stem for p in (reported / "report").glob("*.png")} == ALL_PLOTS | {SEED_FIGURE}
    assert matplotlib.rcParams["backend"] == backend


def test_a_single_run_gets_the_same_report(sweep):
    run = sweep / "dataset=iris,epochs=2,regime=minibatch" / "seed=1"
    path = write_report(run)
    assert path == run / "report.md"
    text = path.read_text()
    assert text.startswith("# Report: dataset=iris,epochs=2,regime=minibatch/seed=1\n")
    rows = _table(text)
    assert list(rows) == ["dataset=iris,epochs=2,regime=minibatch/seed=1"]
    assert rows["dataset=iris,epochs=2,regime=minibatch/seed=1"]["total updates"] == "8"
    # One line compares nothing: the per-update loss, validation against training with the
    # gap between them, and accuracy; the other five would redraw these on another axis.
    assert {p.stem for p in (run / "report").glob("*.png")} == {"loss_vs_iteration", "train_vs_val_loss", "val_acc_vs_epoch"}
    assert text.count("](report/") == 3


# --------------------------------------------------------------------------- pieces
def test_labels_drop_what_every_configuration_shares():
    labels = Labels.build(
        ["batch_size=8,dataset=iris,epochs=3", "batch_size=32,dataset=iris,epochs=3", "model.hidden=[64,64],dataset=iris,epochs=3"],
        fallback="sweep",
    )
    assert labels.common == ("dataset=iris", "epochs=3")
    assert labels.config("batch_size=8,dataset=iris,epochs=3") == "batch_size=8"
    assert labels.config("model.hidden=[64,64],dataset=iris,epochs=3", "mean of seeds 0–4") == "model.hidden=[64,64], mean of seeds 0–4"
    assert Labels.build(["."], fallback="sweep").config(".") == "sweep"


def _long_run(directory: Path, points: int) -> report.RunRecord:
    writer = EventWriter(directory)
    steps = np.arange(points)
    writer.add_scalars("loss/train_iter", steps, 1.0 / (1.0 + steps) + 0.1 * (steps % 3))
    writer.close()
    return report.RunRecord(path=directory, rel=".", summary={"status": "done"}, config=".", seed=None)


def test_long_iteration_curves_become_a_labelled_moving_mean(tmp_path):
    spec = next(s for s in PLOTS if s.name == "loss_vs_iteration")
    long_line = report.Line("sgd", [_long_run(tmp_path / "long", 50_000)], color="C0")
    curve = report._curve(long_line, spec)
    assert "moving mean" in curve.note
    assert len(curve.x) < 2_000 and curve.x[0] == 1.0  # step 0 plotted at iteration + 1
    # Late windows span hundreds of updates, so the period-3 wiggle averages to its mean (0.1).
    assert curve.y[-1] == pytest.approx(1.0 / 50_000 + 0.1, abs=1e-3)
    raw_first = 1.0  # the first update's own loss: windows below one iteration are not blurred
    assert curve.y[0] == pytest.approx(raw_first)
    short_line = report.Line("bgd", [_long_run(tmp_path / "short", 1_000)], color="C1")
    short = report._curve(short_line, spec)
    assert short.note == "" and len(short.x) == 1_000


def test_diverged_curves_stop_at_their_last_finite_value():
    series = Series(np.arange(5), np.array([1.0, 2.0, np.inf, np.nan, 3.0], np.float32), np.zeros(5))
    assert report._finite_prefix(series).values.tolist() == [1.0, 2.0]


# --------------------------------------------------------------------------- command line
def test_command_line_writes_aggregates_and_report(sweep):
    done = subprocess.run(
        [sys.executable, "-m", "runner.report", str(sweep)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sweep / "report.md")
    aggregate = sweep / "dataset=iris,epochs=2,regime=sgd" / "seed_aggregate"
    assert len(list(aggregate.glob("events.out.tfevents.*"))) == 1 and (aggregate / "aggregate.json").is_file()
    # Nothing but runs and aggregates holds events: no _layout, _hparams or _report pseudo-runs.
    assert {p.parent.name for p in sweep.rglob("events.out.tfevents.*")} <= {"seed=0", "seed=1", "seed_aggregate"}
    assert not any((sweep / name).exists() for name in ("_layout", "_hparams", "_report"))


def test_command_line_rejects_a_missing_directory(tmp_path):
    bad = tmp_path / "no_such_sweep"
    done = subprocess.run(
        [sys.executable, "-m", "runner.report", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"Error: {bad}: no such directory"


def test_a_directory_without_runs_is_refused_with_one_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "_layout").exists()


# --------------------------------------------------------------------------- numeric order
def _formats() -> dict[str, Any]:
    return {
        "repr": repr,
        "g": lambda v: f"{v:g}",
        "4g": lambda v: f"{v:.4g}",
        "e": lambda v: f"{v:.3e}",
        "E": lambda v: f"{v:E}",
        "fixed": lambda v: f"{v:.12f}",
    }


@pytest.mark.parametrize("style", sorted(_formats()))
def test_natural_key_orders_decimal_and_scientific_numbers_by_value(style):
    """Sweep directories named by floats (Optuna's lrs, 1e-4, 0.00495) sort by value, not as text
    and not by their digit runs (0.00495 is 0 "." 495, which came after 0.0151 = 0 "." 151)."""
    rng = np.random.default_rng(len(style))
    values = np.concatenate([10 ** rng.uniform(-8, 8, 300), [0.0, 0.00495, 0.0151, 0.0157, 0.716, 0.0726, 1.0, 10.0]])
    fmt = _formats()[style]
    names = [f"batch_size=8,optimizer.lr={fmt(float(v))}" for v in rng.permutation(values)]
    ordered = [float(name.rsplit("=", 1)[1]) for name in sorted(names, key=natural_key)]
    assert ordered == sorted(ordered)


@pytest.mark.parametrize(
    "names",
    [
        ["seed=-2", "seed=-1", "seed=0", "seed=2", "seed=10"],
        ["lr=1e-05", "lr=0.0001", "lr=0.001", "lr=0.01", "lr=1e+00", "lr=2.5E1"],
        ["2026-01-02_03-04-05", "2026-01-02_03-04-06", "2026-01-10_00-00-00"],  # dates: no minus signs
        ["layer.2", "layer.10"],
        ["batch_size=1,seed=0", "batch_size=8,seed=0", "batch_size=32,seed=0", "batch_size=full,seed=0"],
    ],
)
def test_natural_key_keeps_integers_signs_and_dates_in_order(names):
    assert sorted(reversed(names), key=natural_key) == names


# --------------------------------------------------------------------------- single run, epoch 0, smoothing
SWEEP_ONLY_WORDS = ("seed", "band", "Dashed", "dashed", "regimes", "mean of", "Runs without")


def test_a_single_run_report_speaks_of_a_single_run(sweep):
    run = sweep / "dataset=iris,epochs=2,regime=bgd" / "seed=0"
    text = write_report(run).read_text()
    how_to_read = text.split("## How to read this")[1].split("## Plots")[0].replace(str(run), "<run>")
    assert "from the run in" in text and "1 run(s)" not in text
    for word in SWEEP_ONLY_WORDS:
        assert word not in how_to_read, word
    assert "## The run" in text and "## Runs" not in text


def test_a_sweep_report_explains_bands_and_dashed_lines(reported):
    text = (reported / "report.md").read_text()
    assert "mean over seeds" in text and "Dashed lines are runs" in text
    assert "from 8 runs in" in text


def test_every_regime_starts_from_the_same_initial_loss_at_epoch_0(sweep):
    runs = {regime: sweep / f"dataset=iris,epochs=2,regime={regime}" / "seed=0" for regime in REGIMES}
    records = {r: report.RunRecord(path=p, rel=r, summary=read_summary(p), config=r, seed=0) for r, p in runs.items()}
    for name in ("loss_vs_epoch", "loss_vs_samples", "val_loss_vs_epoch"):
        spec = next(s for s in PLOTS if s.name == name)
        curves = [report._curve(report.Line(r, [rec], color="C0"), spec) for r, rec in records.items()]
        assert [c.x[0] for c in curves] == [0.0, 0.0, 0.0], name
        assert curves[0].y[0] == curves[1].y[0] == curves[2].y[0], name
        assert [len(c.x) for c in curves] == [3, 3, 3], name  # epochs 0, 1, 2


def test_a_noisy_iteration_curve_is_a_smoothed_line_over_its_faint_raw_values(tmp_path):
    spec = next(s for s in PLOTS if s.name == "loss_vs_iteration")
    noisy = report.Line("batch_size=1", [_long_run(tmp_path / "sgd", 5_000)], color="C0")
    quiet = report.Line("batch_size=full", [_long_run(tmp_path / "bgd", 20)], color="C1")
    fig = report._draw(spec, [noisy, quiet], "", "loss")
    lines = fig.axes[0].get_lines()
    labelled = {line.get_label(): line for line in lines if not line.get_label().startswith("_")}
    assert set(labelled) == {"batch_size=1 [moving mean]", "batch_size=full"}
    raw = [line for line in lines if line.get_label().startswith("_")]
    assert len(raw) == 1 and len(raw[0].get_xdata()) == 5_000 and raw[0].get_alpha() < 0.5
    smoothed = labelled["batch_size=1 [moving mean]"]
    assert len(smoothed.get_xdata()) < 1_000 and smoothed.get_zorder() > raw[0].get_zorder()
    late = lambda line: np.asarray(line.get_ydata())[np.asarray(line.get_xdata()) > 1_000]  # noqa: E731
    assert np.ptp(late(smoothed)) < 0.1 * np.ptp(late(raw[0]))  # the period-3 noise averaged out


def test_a_single_run_without_validation_gets_the_training_loss_by_epoch(make_cfg, tmp_path):
    """No validation set, so no validation-against-training figure: its place goes to the
    training loss by epoch, and an older report's other figures are taken away."""
    from runner.train import train

    run = tmp_path / "r"
    train(make_cfg("dataset=iris", "epochs=2", "batch_size=32", "val_fraction=0", output_dir=run))
    (run / "report").mkdir(exist_ok=True)
    (run / "report" / "loss_vs_samples.png").write_bytes(b"an older report's figure")
    text = write_report(run).read_text()
    assert {p.stem for p in (run / "report").glob("*.png")} == {"loss_vs_iteration", "loss_vs_epoch"}
    assert "](report/loss_vs_epoch.png)" in text and "loss_vs_samples" not in text
