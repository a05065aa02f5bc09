"""The batch-size scaling study (runner.scaling): the grid, the fit, B_simple at the target, and
``experiment=batch_scaling scaling=quick`` end to end as a real process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runner.loggers import MemoryLogger
from runner.losses import MeanSquaredError
from runner.scaling.analysis import EXTENSION_DIR, SCALING_JSON, StudyRun, best_points, fit
from runner.scaling.extend import extend, next_lr, planned
from runner.scaling.grid import B_SIMPLE_TAG, TAG, TargetProbe, grid_points
from runner.scaling.plots import FRONTIER_PNG, NOISE_PNG, STEPS_PNG
from runner.scaling.report import extension_words, markdown_section, prepare, recommendation

from conftest import read_scalars
from test_noise import float64_linreg, linreg_closed_form, set_weights

REPO = Path(__file__).resolve().parents[1]
RATIO = 2 ** 0.25


def test_grid_is_every_update_then_geometric_within_the_ratio():
    points = grid_points(RATIO, 5000)
    assert points[:8] == [1, 2, 3, 4, 5, 6, 7, 8]
    gaps = [b / a for a, b in zip(points, points[1:]) if b != a + 1]
    assert gaps and max(gaps) <= RATIO
    assert points[-1] >= 5000 and all(b > a for a, b in zip(points, points[1:]))


def test_probe_ends_segments_at_grid_points():
    probe = TargetProbe(target=0.1, ratio=RATIO, noise_chunk=0, last=100)
    # position 3 of an epoch at iteration 10: the next grid point is 11, one update away.
    assert probe.clip(end=50, position=3, iteration=10) == 4
    assert probe.clip(end=4, position=3, iteration=10) == 4
    assert probe.on_grid(11) and probe.on_grid(13) and not probe.on_grid(12)


@pytest.mark.parametrize("s_min,b_crit", [(100.0, 64.0), (7.5, 3.0), (2000.0, 900.0)])
def test_fit_recovers_s_min_and_b_crit_from_a_synthetic_table(s_min, b_crit):
    b = [2.0 ** k for k in range(0, 12)]
    s = [s_min * (1 + b_crit / x) for x in b]
    e = [x * y for x, y in zip(b, s)]
    assert all(math.isclose(ei, s_min * b_crit * (1 + x / b_crit), rel_tol=1e-12) for ei, x in zip(e, b))
    got_s_min, got_b_crit = fit(b, s)
    assert got_s_min == pytest.approx(s_min, rel=0.01)
    assert got_b_crit == pytest.approx(b_crit, rel=0.01)


def test_b_simple_at_the_target_equals_the_closed_form_near_the_optimum():
    """Linear regression y = X w + noise: at weights a small step from the least-squares
    optimum, the probe's B_simple (logged where the target is reached) is tr(Σ)/|G|² of the
    per-sample gradients 2 r_i [x_i, 1]."""
    model, split, X, y = float64_linreg(n=40, d=3, seed=1)
    Xt = np.hstack([X, np.ones((len(X), 1))])
    opt = np.linalg.lstsq(Xt, y, rcond=None)[0]
    w, b = opt[:3] + 0.05, opt[3] - 0.02
    set_weights(model, w, b)
    run = SimpleNamespace(model=model, loss_fn=MeanSquaredError(), train=split, cfg=SimpleNamespace(eval_batch_size=8192))
    logger = MemoryLogger()
    loss = float(np.mean((X @ w + b - y) ** 2))
    probe = TargetProbe(target=loss * 1.001, ratio=RATIO, noise_chunk=7, last=10)
    assert probe.reached(run, logger, 3)  # 3 is no power of two: measured because the target is reached
    G, trace, _ = linreg_closed_form(w, b, X, y)
    [(step, logged_loss)] = logger.scalars[TAG]
    [(noise_step, b_simple)] = logger.scalars[B_SIMPLE_TAG]
    assert step == noise_step == 3
    torch.testing.assert_close(logged_loss, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(b_simple, trace / float(G @ G), rtol=1e-9, atol=0)
    assert not TargetProbe(target=loss * 0.5, ratio=RATIO, noise_chunk=7, last=10).reached(run, MemoryLogger(), 3)


def test_a_single_run_stops_at_the_first_grid_point_at_its_target(make_cfg, tmp_path):
    """Outside a fused group (the single-run loop): the loss is logged at every grid point and
    epoch end, and the run stops at the first value <= the target, saying why."""
    from runner.train import train

    overrides = ("dataset=linreg", "dataset.d=1", "dataset.n=40", "model=linear", "loss=mse", "val_fraction=0", "batch_size=8", "optimizer.lr=0.05", "epochs=30")
    free = train(make_cfg(*overrides, output_dir=tmp_path / "free"))
    logged = read_scalars(tmp_path / "free")["vs_iteration/loss/train_full"]
    target = logged[len(logged) // 2][1] * 1.0001  # reached at an epoch end, mid-run
    summary = train(make_cfg(*overrides, f"scaling.target={target}", output_dir=tmp_path / "study"))
    series = read_scalars(tmp_path / "study")[TAG]
    steps = [s for s, _ in series]
    expected = sorted(set(grid_points(RATIO, steps[-1])) | {s for s, _ in logged if 0 < s <= steps[-1]})
    assert steps == expected[: len(steps)]  # every grid point and epoch end, in order, once
    first = next(s for s, v in series if v <= target)
    assert summary["stop_reason"] == "target_reached" and summary["iterations"] == first == steps[-1]
    assert free["stop_reason"] == "budget" and free["iterations"] > first


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling") / "sweep"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "experiment=batch_scaling", "scaling=quick", f"hydra.sweep.dir={root}", "progress=false"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


@pytest.mark.slow
def test_quick_study_writes_the_scaling_json_contract(quick_study):
    root, output = quick_study
    result = json.loads((root / SCALING_JSON).read_text())
    assert set(result) >= {"target", "points", "fit", "noise"}
    assert result["target"] == {"tag": TAG, "value": 0.3}
    assert [p["batch_size"] for p in result["points"]] == [1, 4, 16, 150]  # iris: 150 samples, no validation split
    for p in result["points"]:
        assert set(p) >= {"batch_size", "lr", "steps", "samples", "steps_range", "lr_at_edge", "runs"}
        assert len(p["runs"]) == 3 and all((root / rel / "summary.json").is_file() for rel in p["runs"])
    assert set(result["fit"]) == {"S_min", "E_min", "B_crit", "B_crit_interval"}
    lo, hi = result["fit"]["B_crit_interval"]
    assert lo <= result["fit"]["B_crit"] <= hi
    assert result["fit"]["E_min"] == pytest.approx(result["fit"]["S_min"] * result["fit"]["B_crit"])
    assert set(result["noise"]) >= {"B_simple", "B_simple_range"}
    # The sweep's end prints B_crit with its interval, B_simple and the recommendation.
    assert f"B_crit = {result['fit']['B_crit']:.3g}" in output
    assert recommendation(result) in output


@pytest.mark.slow
def test_steps_to_target_recomputed_from_the_event_files_equal_the_json(quick_study):
    root, _ = quick_study
    result = json.loads((root / SCALING_JSON).read_text())
    target = result["target"]["value"]
    for p in result["points"]:
        steps = []
        for rel in p["runs"]:
            series = read_scalars(root / rel)[TAG]
            first = next((s for s, v in series if v <= target), math.inf)
            steps.append(first)
            summary = json.loads((root / rel / "summary.json").read_text())
            if math.isfinite(first):
                assert summary["stop_reason"] == "target_reached" and summary["iterations"] == first
        assert float(np.median(steps)) == p["steps"]
        assert p["steps_range"][0] == min(steps)


@pytest.mark.slow
def test_quick_study_plots_and_report_section(quick_study):
    root, _ = quick_study
    result = json.loads((root / SCALING_JSON).read_text())
    for png in (STEPS_PNG, FRONTIER_PNG, NOISE_PNG):
        assert (root / png).stat().st_size > 10_000
    section = markdown_section(root)
    assert section is not None and section.startswith("## Which batch size?")
    assert f"B_crit ≈ {result['fit']['B_crit']:.3g}" in section
    assert f"predicted {result['noise']['B_simple']:.3g}" in section
    for p in result["points"]:
        assert f"| {p['lr']:g} | {p['steps']:g} |" in section
    elsewhere = root.parent / "not_a_study"
    elsewhere.mkdir(exist_ok=True)
    assert markdown_section(elsewhere) is None and not (elsewhere / SCALING_JSON).exists()


# ------------------------------------------------------------------ the lr grid extended at an edge
def _synthetic_cell(b: int, lr: float, best_lr: dict[int, float], prefix: str = "") -> list[StudyRun]:
    """Three seeds at (b, lr): S grows with the distance of lr from the batch size's own best lr
    (log2), and with the seed a little; an lr beyond 4x the best never reaches the target."""
    runs = []
    for seed in range(3):
        distance = abs(math.log2(lr / best_lr[b]))
        steps = None if distance > 2 else int(100 * (1 + distance) / b) + seed + 1
        runs.append(StudyRun(f"{prefix}batch_size={b},optimizer.lr={lr:g}/seed={seed}", b, lr, seed, steps, None if steps is None else steps * b, None, {}))
    return runs


def test_a_best_lr_at_a_grid_edge_is_extended_by_one_grid_step_until_inside_or_the_bound():
    grid = [0.1, 0.2, 0.4, 0.8]
    best_lr = {1: 0.05, 8: 0.3, 64: 3.2}  # below the grid, inside it, two steps above it
    runs = [r for b in best_lr for lr in grid for r in _synthetic_cell(b, lr, best_lr)]
    trained: list[tuple[int, float, list[int]]] = []

    def train_cell(templates, lr):
        b = templates[0].batch_size
        trained.append((b, lr, [t.seed for t in templates]))
        return _synthetic_cell(b, lr, best_lr, prefix=f"{EXTENSION_DIR}/")

    done = extend(runs, bound=2, train_cell=train_cell)
    # B=1: 0.05 (best, at the new edge), then 0.025 (worse): its best 0.05 is inside. B=64: 1.6,
    # then 3.2, both better than the last; the bound stops it there. B=8 is never touched.
    assert done == [(1, 0.05), (64, 1.6), (1, 0.025), (64, 3.2)]
    assert all(seeds == [0, 1, 2] for _, _, seeds in trained)
    points = {p["batch_size"]: p for p in best_points(runs)}
    assert points[1]["lr"] == 0.05 and not points[1]["lr_at_edge"] and points[1]["lr_extensions"] == [0.05, 0.025]
    assert points[8]["lr"] == 0.4 and not points[8]["lr_at_edge"] and points[8]["lr_extensions"] == []
    assert points[64]["lr"] == 3.2 and points[64]["lr_at_edge"] and points[64]["lr_extensions"] == [1.6, 3.2]
    assert points[64]["lrs"] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    assert extend(runs, bound=2, train_cell=train_cell) == []  # the bound holds on a second look
    result = {"points": list(points.values()), "fit": {"S_min": 3.0, "E_min": 30.0, "B_crit": 10.0, "B_crit_interval": None}, "noise": None}
    words = extension_words(result)
    assert words == ("Learning-rate grid extended where the best lr was at an edge: batch size 1: lr 0.05, 0.025 added, "
                     "best lr 0.05 (inside the grid); batch size 64: lr 1.6, 3.2 added, best lr 3.2 (still at the edge).")
    assert "still at an edge of its grid at batch size 64 " in recommendation(result)


def test_next_lr_is_one_step_of_the_grid_at_that_edge_rounded():
    lrs = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    assert next_lr(lrs, 0.01) == 0.00333 and next_lr(lrs, 3.0) == 9.0
    assert next_lr(lrs, 0.1) is None and next_lr([0.1], 0.1) is None
    assert planned(_synthetic_cell(4, 0.1, {4: 0.1}), bound=2) == []  # one lr: no grid to step along


def test_group_option_given_as_a_path_is_one_line_naming_the_options():
    from runner.cli import check_group_paths
    from runner.errors import ConfigError

    for given in ("scaling=../config", "dataset=../config", "+experiment=sub/x"):
        with pytest.raises(ConfigError) as info:
            check_group_paths(["seed=1", given])
        group, value = given.lstrip("+").split("=")
        message = str(info.value)
        assert message.startswith(f"{group}='{value}' is not allowed: one of ") and "\n" not in message
    with pytest.raises(ConfigError, match=r"scaling='\.\./config' is not allowed: one of quick \(conf/scaling/\*\.yaml"):
        check_group_paths(["scaling=../config"])
    check_group_paths(["scaling=quick", "dataset=iris", "hydra.sweep.dir=../out", "dataset.path=/data/x.csv"])


@pytest.mark.slow
def test_the_report_section_only_reads_and_prepare_writes_what_is_missing(quick_study, tmp_path):
    """markdown_section composes from scaling.json and writes nothing; prepare (the report
    command's step) writes scaling.json and the figures where a sweep left none."""
    import shutil

    source, _ = quick_study
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    for name in (SCALING_JSON, STEPS_PNG, FRONTIER_PNG, NOISE_PNG):
        (root / name).unlink()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert markdown_section(root) is None
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    result = prepare(root)
    assert result == json.loads((source / SCALING_JSON).read_text())
    assert all((root / name).is_file() for name in (SCALING_JSON, STEPS_PNG, FRONTIER_PNG, NOISE_PNG))
    assert markdown_section(root) == markdown_section(source)


@pytest.mark.slow
def test_an_added_lr_is_trained_per_seed_with_the_jobs_record(quick_study, tmp_path):
    """The extension's runs: one per seed of the batch size, under lr_extension/, with the
    template job's .hydra record (lr changed) and hparams naming the experiment as a job's do."""
    import shutil

    from runner.scaling.analysis import load_runs
    from runner.scaling.extend import train_cell_in

    source, _ = quick_study
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    target = json.loads((root / SCALING_JSON).read_text())["target"]["value"]
    runs = load_runs(root, target)
    templates = sorted((r for r in runs if r.batch_size == 150 and r.lr == 3.2), key=lambda r: r.seed)
    new = train_cell_in(root, target)(templates, 6.4)
    assert [(r.rel, r.batch_size, r.lr, r.seed) for r in new] == [
        (f"{EXTENSION_DIR}/batch_size=150,optimizer.lr=6.4/seed={s}", 150, 6.4, s) for s in (0, 1, 2)
    ]
    for run in new:
        out = root / run.rel
        summary = json.loads((out / "summary.json").read_text())
        assert summary["lr"] == 6.4 and summary["hparams"]["experiment"] == "batch_scaling"
        assert summary["hparams"]["optimizer.lr"] == 6.4 and summary["hparams"]["seed"] == run.seed
        overrides = (out / ".hydra" / "overrides.yaml").read_text()
        assert "optimizer.lr=6.4" in overrides and "optimizer.lr=3.2" not in overrides
        assert "lr: 6.4" in (out / ".hydra" / "config.yaml").read_text()
    assert {r.rel for r in load_runs(root, target)} == {r.rel for r in runs} | {r.rel for r in new}
