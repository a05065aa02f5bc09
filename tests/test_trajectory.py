"""Loss-surface trajectories (``trajectory.record``): the recorded path is the weights the run
had, the contours are the true loss, and the report and TensorBoard show them."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from runner.errors import ConfigError
from runner.instruments.sections import NEAR_FACTOR, classify, critical_batch_size
from runner.instruments.trajectory import TRAJECTORY_FILE, Trajectory, filter_normalised_direction, make_plane
from runner.loggers import MemoryLogger
from runner.loop import evaluate
from runner.report import write_report
from runner.train import build_run, fit, train

from conftest import read_scalars

LINREG = ("dataset=linreg", "dataset.d=1", "dataset.n=40", "model=linear", "loss=mse", "val_fraction=0", "batch_size=8")
MLP = ("model.hidden=[8]", "val_fraction=0.75", "batch_size=64", "epochs=2")


def flat_weights(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    torch.nn.utils.vector_to_parameters(torch.as_tensor(flat, dtype=torch.float32), model.parameters())


def images(run_dir) -> dict[str, list]:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def spot_check_contours(t: Trajectory, cfg, points=((0, 0), (17, 5), (40, 40), (20, 31))) -> None:
    """The grid's loss at a few (i, j) equals :func:`evaluate` at those weights."""
    run = build_run(cfg)
    for i, j in points:
        set_flat(run.model, t.origin + t.alphas[i] * t.directions[0] + t.betas[j] * t.directions[1])
        loss, _ = evaluate(run.model, run.loss_fn, run.train, 8192)
        assert t.losses[j, i] == pytest.approx(loss.item(), rel=1e-6), (i, j)


# --------------------------------------------------------------------------- two parameters
def test_two_parameter_path_is_the_weights_of_the_run_over_the_true_loss(make_cfg, tmp_path):
    cfg = make_cfg(*LINREG, "epochs=2", "trajectory.record=true", output_dir=tmp_path / "run")
    summary = train(cfg)
    t = Trajectory.load(tmp_path / "run" / TRAJECTORY_FILE)
    assert t.kind == "parameters" and t.axes == ("1.weight", "1.bias")
    assert summary["iterations"] == 10
    assert t.steps.tolist() == list(range(11))  # before each of the 10 updates, then the final weights
    initial = flat_weights(build_run(cfg).model)
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    np.testing.assert_array_equal(t.coords[0], initial)
    np.testing.assert_array_equal(t.coords[-1], [final["1.weight"].item(), final["1.bias"].item()])
    # A point inside: the weights after 3 updates of the same run.
    three = build_run(make_cfg(*LINREG, "budget=updates", "budget_amount=3", output_dir=tmp_path / "three"))
    fit(three, MemoryLogger())
    np.testing.assert_array_equal(t.coords[3], flat_weights(three.model))
    # The grid covers the path and its losses are the true training loss.
    assert t.alphas[0] < t.coords[:, 0].min() and t.coords[:, 0].max() < t.alphas[-1]
    assert t.betas[0] < t.coords[:, 1].min() and t.coords[:, 1].max() < t.betas[-1]
    assert t.losses.shape == (41, 41)
    spot_check_contours(t, cfg)
    # The same figure in TensorBoard, at the final iteration.
    (image,) = images(tmp_path / "run")["trajectory"]
    assert image.step == 10 and png_size(image.encoded_image_string) == (image.width, image.height) == (750, 600)


def test_recording_every_k_iterations_still_ends_at_the_final_weights(make_cfg, tmp_path):
    train(make_cfg(*LINREG, "epochs=2", "trajectory.record=true", "trajectory.every=4", output_dir=tmp_path / "run"))
    t = Trajectory.load(tmp_path / "run" / TRAJECTORY_FILE)
    assert t.steps.tolist() == [0, 4, 8, 10]
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    np.testing.assert_array_equal(t.coords[-1], [final["1.weight"].item(), final["1.bias"].item()])


def test_recording_changes_nothing_in_the_run(make_cfg, tmp_path):
    losses = {}
    for record in ("false", "true"):
        out = tmp_path / record
        train(make_cfg(*LINREG, "epochs=2", f"trajectory.record={record}", output_dir=out))
        losses[record] = (read_scalars(out)["loss/train_iter"], torch.load(out / "model.pt", weights_only=True))
    assert losses["true"][0] == losses["false"][0]
    assert all(torch.equal(losses["true"][1][k], v) for k, v in losses["false"][1].items())


def test_a_resumed_run_records_the_same_path(make_cfg, tmp_path):
    train(make_cfg(*LINREG, "epochs=2", "trajectory.record=true", output_dir=tmp_path / "whole"))
    split = tmp_path / "split"
    train(make_cfg(*LINREG, "epochs=1", "trajectory.record=true", output_dir=split))
    (split / "summary.json").unlink()  # leaves the epoch-end checkpoint to resume from
    train(make_cfg(*LINREG, "epochs=2", "trajectory.record=true", output_dir=split))
    a, b = Trajectory.load(tmp_path / "whole" / TRAJECTORY_FILE), Trajectory.load(split / TRAJECTORY_FILE)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.coords, b.coords)


# --------------------------------------------------------------------------- larger models
def test_mlp_path_on_its_pca_plane(make_cfg, tmp_path):
    """An MLP: the plane of the path's top principal components through the final weights; the
    final point is its origin, the first the initial weights' projection, contours exact."""
    cfg = make_cfg(*MLP, "trajectory.record=true", "trajectory.resolution=21", output_dir=tmp_path / "run")
    summary = train(cfg)
    t = Trajectory.load(tmp_path / "run" / TRAJECTORY_FILE)
    assert t.kind == "pca" and t.steps.tolist() == list(range(summary["iterations"] + 1))
    final = torch.cat([v.reshape(-1) for v in torch.load(tmp_path / "run" / "model.pt", weights_only=True).values()]).double().numpy()
    np.testing.assert_allclose(t.origin, final, rtol=0, atol=0)
    np.testing.assert_allclose(t.directions @ t.directions.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(t.coords[-1], [0, 0], atol=1e-12)
    initial = flat_weights(build_run(cfg).model)
    np.testing.assert_allclose(t.coords[0], t.directions @ (initial - final), rtol=1e-9, atol=1e-12)
    spot_check_contours(t, cfg, points=((0, 0), (20, 12), (10, 10)))


def test_pca_plane_holds_a_path_that_lies_in_a_plane_exactly():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(30, 2)))[0].T
    final = rng.normal(size=30)
    path = final + rng.normal(size=(12, 2)) @ basis
    path[-1] = final
    plane = make_plane(nn.Linear(5, 5), path, "pca", seed=0)
    coords = plane.coordinates(path)
    np.testing.assert_allclose(plane.origin + coords @ plane.directions, path, atol=1e-12)
    assert sum(plane.explained) == pytest.approx(1.0)


def test_random_directions_are_filter_normalised():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    d = filter_normalised_direction(model, torch.Generator().manual_seed(1))
    offset = 0
    for p in model.parameters():
        part = d[offset : offset + p.numel()].reshape(p.shape)
        offset += p.numel()
        if p.dim() == 1:
            assert not part.any()  # biases are not perturbed
        else:
            np.testing.assert_allclose(np.linalg.norm(part, axis=1), p.detach().double().norm(dim=1).numpy(), rtol=1e-12)


def test_random_plane_run(make_cfg, tmp_path):
    cfg = make_cfg(*MLP, "trajectory.record=true", "trajectory.directions=random", "trajectory.resolution=9", output_dir=tmp_path / "run")
    train(cfg)
    t = Trajectory.load(tmp_path / "run" / TRAJECTORY_FILE)
    assert t.kind == "random" and t.losses.shape == (9, 9)
    spot_check_contours(t, cfg, points=((0, 8), (4, 4)))


@pytest.mark.parametrize(
    "override,key",
    [("trajectory.directions=up", "trajectory.directions"), ("trajectory.resolution=2", "trajectory.resolution"),
     ("trajectory.every=0", "trajectory.every"), ("trajectory.margin=-1", "trajectory.margin")],
)
def test_bad_trajectory_settings_are_refused_naming_the_key(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_run(make_cfg(override))


# --------------------------------------------------------------------------- the report
def test_report_draws_every_path_over_one_surface_and_into_tensorboard(make_cfg, tmp_path):
    for batch in (1, 8, "full"):
        train(make_cfg(*LINREG, f"batch_size={batch}", "trajectory.record=true", output_dir=tmp_path / "sweep" / f"b{batch}"))
    report = write_report(tmp_path / "sweep").read_text()
    assert "## Loss-surface trajectories" in report and "![Trajectories](report/trajectory.png)" in report
    png = (tmp_path / "sweep" / "report" / "trajectory.png").read_bytes()
    assert png_size(png) == (750, 600)
    (image,) = images(tmp_path / "sweep" / "report")["report/trajectory"]
    assert png_size(image.encoded_image_string) == (750, 600)
    write_report(tmp_path / "sweep")  # a second report replaces the image, never appends one
    assert len(images(tmp_path / "sweep" / "report")["report/trajectory"]) == 1


def test_report_of_runs_without_instruments_has_no_instrument_sections(make_cfg, tmp_path):
    train(make_cfg(*LINREG, output_dir=tmp_path / "run"))
    report = write_report(tmp_path / "run").read_text()
    assert "Gradient noise" not in report and "trajectories" not in report
    assert not list((tmp_path / "run" / "report").glob("trajectory*.png"))


def test_batch_sizes_are_classified_with_a_factor_two_rule():
    groups = classify([1, 8, 16, 32, 64, 65, 1000], critical=32.0)
    assert NEAR_FACTOR == 2.0
    assert groups == {"below": [1, 8], "near": [16, 32, 64], "above": [65, 1000]}


def test_noise_report_marks_the_batch_sizes_against_the_measured_critical_batch_size(make_cfg, tmp_path):
    for batch in (1, 4, "full"):
        out = tmp_path / "sweep" / f"b{batch}"
        train(make_cfg(*LINREG, f"batch_size={batch}", "noise.every=2", output_dir=out))
    report = write_report(tmp_path / "sweep").read_text()
    # Compared at equal loss: each run's B_simple where its loss (interpolated between epoch
    # ends) first reached the median of the runs' lowest losses at a measurement.
    curves = []
    for b in (1, 4, "full"):
        scalars = read_scalars(tmp_path / "sweep" / f"b{b}")
        steps, values = zip(*scalars["noise/b_simple"])
        loss_steps, loss_values = zip(*scalars["vs_iteration/loss/train_full"])
        curves.append((np.interp(steps, loss_steps, loss_values), np.asarray(values)))
    level = float(np.median([losses.min() for losses, _ in curves]))
    at = []
    for losses, values in curves:
        hit = np.flatnonzero(losses <= level)
        if len(hit):
            i = hit[0]
            t = 0.0 if i == 0 else (np.log(losses[i - 1]) - np.log(level)) / (np.log(losses[i - 1]) - np.log(losses[i]))
            at.append(float(np.exp(np.log(values[max(i - 1, 0)]) + t * (np.log(values[i]) - np.log(values[max(i - 1, 0)])))))
    critical = float(np.median(at))
    assert "## Gradient noise" in report and (tmp_path / "sweep" / "report" / "noise_scale.png").is_file()
    assert f"about **{critical:.3g}**" in report
    groups = classify([1, 4, 40], critical)
    names = {1: "1", 4: "4", 40: "40 (full)"}
    for where in ("Below", "Near", "Above"):
        listed = ", ".join(names[b] for b in groups[where.lower()]) or "none"
        assert f"{where} it: {listed}" in report


def test_critical_batch_size_compares_runs_at_equal_training_loss():
    """A run measured once at the initial weights (loss 2, B_simple 48) does not pin the
    estimate: runs are compared where their loss first reached the median lowest loss (0.5)."""
    from runner.events.read import Series

    class Record:
        def __init__(self, steps, b_simple, loss_steps, losses):
            self.scalars = {
                "noise/b_simple": Series(np.asarray(steps), np.asarray(b_simple, dtype=np.float32), np.zeros(len(steps))),
                "vs_iteration/loss/train_full": Series(np.asarray(loss_steps), np.asarray(losses, dtype=np.float32), np.zeros(len(loss_steps))),
            }

    once = Record([0], [48.0], [0, 10], [2.0, 1.0])
    # Loss 2 -> 1 -> 0.25 at updates 0, 10, 20; B_simple 50, 100, 400 there: at loss 0.5 (halfway in
    # log loss between 1 and 0.25) log-log interpolation gives 200.
    falling = Record([0, 10, 20], [50.0, 100.0, 400.0], [0, 10, 20], [2.0, 1.0, 0.25])
    lower = Record([0, 10], [40.0, 300.0], [0, 10], [2.0, 0.5])
    critical, runs, level = critical_batch_size([once, falling, lower])
    assert level == pytest.approx(0.5)
    assert runs == 2
    assert critical == pytest.approx((200.0 + 300.0) / 2, rel=1e-5)


# --------------------------------------------------------------------------- the README command
@pytest.mark.slow
def test_trajectories_experiment_as_the_readme_runs_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "experiment=trajectories", "progress=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    paths = {b: Trajectory.load(sweep / f"batch_size={b}" / TRAJECTORY_FILE) for b in ("full", "1", "16")}
    starts = {tuple(t.coords[0]) for t in paths.values()}
    assert starts == {(0.0, 0.0)}  # the same start: init zeros
    assert [len(paths[b].steps) - 1 for b in ("full", "16", "1")] == [10, 70, 1000]
    assert (sweep / "report" / "trajectory.png").is_file()
    assert "![Trajectories](report/trajectory.png)" in (sweep / "report.md").read_text()
    assert images(sweep / "report")["report/trajectory"]
