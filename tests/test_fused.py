"""hydra/launcher=fused: same-shape jobs trained as one stacked model give each job exactly the
results (files, summaries, per-iteration losses, final weights) the basic launcher gives it."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.checkpoint import FAULT_ENV as CHECKPOINT_FAULT
from runner.epochs import TrainState
from runner.launchers.fused import fusion_key
from runner.launchers.fused_group import Member, train_group
from runner.loggers import MemoryLogger, TensorBoardLogger
from runner.launchers.stacked import FusedStep, StackedModel
from runner.launchers.stacked_optim import StackedOptimizer
from runner.losses import SparseCategoricalCrossentropy
from runner.models import MLP
from runner.train import build_run, fit

from conftest import assert_train_seconds_logged, read_scalars, run_in_process

TIMINGS = {"train_seconds", "seconds_per_epoch", "spent"}


def multirun(sweep_dir: Path, *overrides: str, launcher: str = "fused", exit_code: int = 0, process: bool = False) -> subprocess.CompletedProcess:
    """The sweep, in this process unless ``process``: a run compared bit for bit with one made by a
    fresh process (a resumed one) is made by a fresh process too, with the same thread settings."""
    argv = ["-m", "progress=false", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}", *overrides]
    if process:
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        result = subprocess.run([sys.executable, "-m", "runner", *argv], cwd=sweep_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    else:
        result = run_in_process(argv, sweep_dir.parent)
    assert result.returncode == exit_code, result.stderr[-3000:]
    return result


def run_dirs(root: Path) -> list[str]:
    return sorted(
        str(p.parent.relative_to(root)) for p in root.rglob("summary.json")
        if "seed_aggregate" not in p.parts and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def tree(root: Path) -> list[str]:
    """Every file name under ``root`` but the event files' (named by host and time) and Hydra's log;
    the outcome ledger's folder (named by the sweep's id) as ``.sweep/<id>``."""
    names = (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "tfevents" not in p.name and p.suffix != ".log")
    return sorted(re.sub(r"^\.sweep/[^/]+/", ".sweep/<id>/", name) for name in names)


def assert_close_values(got: Any, want: Any, tol: float, where: tuple[str, str]) -> None:
    """Floats within ``tol`` (also inside dicts such as ``best_metrics``), anything else equal."""
    if isinstance(want, dict) and isinstance(got, dict):
        assert set(got) == set(want), where
        for key in want:
            assert_close_values(got[key], want[key], tol, (*where, key))
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=tol, abs=tol, nan_ok=True), where
    else:
        assert got == want, where


def assert_same_results(got_root: Path, want_root: Path, tol: float = 1e-5) -> None:
    """Same runs, same summaries (timings aside), same per-iteration losses and final weights."""
    assert run_dirs(got_root) == run_dirs(want_root)
    for name in run_dirs(want_root):
        got, want = got_root / name, want_root / name
        summary, expected = (json.loads((p / "summary.json").read_text()) for p in (got, want))
        assert set(summary) == set(expected)
        for key in set(expected) - TIMINGS - {"dataset"}:
            assert_close_values(summary[key], expected[key], tol, (name, key))
        scalars, reference = read_scalars(got), read_scalars(want)
        assert set(scalars) == set(reference)
        for tag in ("loss/train_iter", "lr", "loss/train_full", "loss/val", "metric/acc/val"):
            if tag not in reference:
                continue
            assert [s for s, _ in scalars[tag]] == [s for s, _ in reference[tag]], (name, tag)
            torch.testing.assert_close(
                torch.tensor([v for _, v in scalars[tag]]), torch.tensor([v for _, v in reference[tag]]), atol=tol, rtol=tol, equal_nan=True
            )
        assert (got / "model.pt").exists() == (want / "model.pt").exists(), name
        if (want / "model.pt").exists():
            weights, ref = (torch.load(p / "model.pt", weights_only=True) for p in (got, want))
            assert weights.keys() == ref.keys()
            for key in ref:
                torch.testing.assert_close(weights[key], ref[key], atol=tol, rtol=tol)


# ------------------------------------------------------------------ the stacked optimizer alone
OPTIMIZERS = {
    "sgd": lambda p, h: torch.optim.SGD(p, lr=h["lr"], weight_decay=h["wd"]),
    "momentum": lambda p, h: torch.optim.SGD(p, lr=h["lr"], momentum=h["beta"], dampening=h["damp"], weight_decay=h["wd"]),
    "nesterov": lambda p, h: torch.optim.SGD(p, lr=h["lr"], momentum=h["beta"], nesterov=True, weight_decay=h["wd"]),
    "adam": lambda p, h: torch.optim.Adam(p, lr=h["lr"] / 10, betas=(h["beta"], 0.99), weight_decay=h["wd"]),
    "adam_amsgrad": lambda p, h: torch.optim.Adam(p, lr=h["lr"] / 10, betas=(0.9, h["beta"]), amsgrad=True),
    "adamw": lambda p, h: torch.optim.AdamW(p, lr=h["lr"] / 10, weight_decay=h["wd"]),
    "rmsprop": lambda p, h: torch.optim.RMSprop(p, lr=h["lr"] / 10, alpha=h["beta"], weight_decay=h["wd"]),
    "rmsprop_centered": lambda p, h: torch.optim.RMSprop(p, lr=h["lr"] / 100, momentum=h["beta"], centered=True),
    "adagrad": lambda p, h: torch.optim.Adagrad(p, lr=h["lr"], lr_decay=h["damp"], weight_decay=h["wd"], initial_accumulator_value=h["damp"]),
}
HPARAMS = st.fixed_dictionaries({
    "lr": st.floats(1e-3, 0.5), "beta": st.floats(0.5, 0.95), "damp": st.floats(0.0, 0.5), "wd": st.sampled_from([0.0, 1e-3, 0.05]),
})


@pytest.mark.parametrize("name", OPTIMIZERS)
@settings(max_examples=3, deadline=None)
@given(hparams=st.lists(HPARAMS, min_size=1, max_size=3), clip=st.sampled_from([None, 0.5]))
def test_stacked_update_equals_each_members_own_optimizer(name, hparams, clip):
    """K members with their own hyperparameters (and a clip): every update and the state handed
    back equal K separate torch optimizers; the state restored into fresh ones continues alike."""
    torch.manual_seed(0)
    models = [MLP((6,), 3, hidden=(5,)) for _ in hparams]
    singles = [copy.deepcopy(m) for m in models]
    optimizers = [OPTIMIZERS[name](m.parameters(), h) for m, h in zip(singles, hparams)]
    loss_fn = SparseCategoricalCrossentropy()
    x, y = torch.randn(len(models), 12, 6), torch.randint(0, 3, (len(models), 12))

    def fused_run(models, optimizers, steps):
        stacked = StackedModel(models)
        optimizer = StackedOptimizer(optimizers, stacked.flat, stacked.grad, stacked.shapes)
        step = FusedStep(stacked, loss_fn, optimizer, None if clip is None else torch.full((len(models), 1), clip))
        losses = [step(x[:, s], y[:, s], optimizer.lr)[0] for s in steps]
        return stacked, optimizer, losses

    steps = [slice(i, i + 4) for i in range(0, 12, 4)]
    stacked, fused_optimizer, fused_losses = fused_run(models, [OPTIMIZERS[name](m.parameters(), h) for m, h in zip(models, hparams)], steps)
    for k, (model, optimizer) in enumerate(zip(singles, optimizers)):
        for s, fused_loss in zip(steps, fused_losses):
            optimizer.zero_grad()
            loss = loss_fn(model(x[k, s]), y[k, s])
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            torch.testing.assert_close(fused_loss[k], loss.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stacked.flat[k], torch.nn.utils.parameters_to_vector(model.parameters()).detach(), atol=1e-5, rtol=1e-5)

    # The state as each member's own optimizer state, then loaded into fresh optimizers: the next updates agree too.
    holders = [copy.deepcopy(m) for m in models]
    for k, holder in enumerate(holders):
        stacked.write_into(k, holder)
    handed = [OPTIMIZERS[name](h.parameters(), hp) for h, hp in zip(holders, hparams)]
    fused_optimizer.store(handed)
    for single, mine in zip(optimizers, handed):
        theirs = single.state_dict()["state"]
        for index, state in mine.state_dict()["state"].items():
            for key, value in state.items():
                # State is compared looser than weights: a centred RMSprop's buffer divides by
                # sqrt(E[g²] - E[g]²), which magnifies float rounding that the update then damps.
                torch.testing.assert_close(torch.as_tensor(value).float(), torch.as_tensor(theirs[index][key]).float(), atol=1e-4, rtol=1e-4)
    resumed, _, _ = fused_run(holders, handed, steps[:1])
    for k, (model, optimizer) in enumerate(zip(singles, optimizers)):
        optimizer.zero_grad()
        loss_fn(model(x[k, steps[0]]), y[k, steps[0]]).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        torch.testing.assert_close(resumed.flat[k], torch.nn.utils.parameters_to_vector(model.parameters()).detach(), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ what can be fused
@pytest.mark.parametrize(
    "overrides, reason",
    [
        (("micro_batch_size=4",), "micro_batch_size"),
        (("optimizer=lars",), "LARS has no stacked implementation"),
        (("budget=seconds", "budget_amount=5"), "budget=seconds"),
        (("noise.every=5",), "an instrument is on"),
        (("trajectory.record=true",), "an instrument is on"),
        (("early_stopping_restore_best=true",), "early_stopping_restore_best"),
    ],
)
def test_a_job_that_cannot_be_stacked_says_why(make_cfg, overrides, reason):
    assert reason in fusion_key(build_run(make_cfg("dataset=iris", *overrides)))


def test_jobs_differing_in_seed_lr_and_schedule_share_a_key_and_other_shapes_do_not(make_cfg):
    key = fusion_key(build_run(make_cfg("dataset=iris", "optimizer=momentum")))
    assert isinstance(key, tuple)
    same = [("seed=3",), ("optimizer.lr=0.3", "optimizer.momentum=0.5"), ("scheduler=step",), ("grad_clip=1.0",)]
    for overrides in same:
        assert fusion_key(build_run(make_cfg("dataset=iris", "optimizer=momentum", *overrides))) == key, overrides
    other = [("batch_size=8",), ("epochs=2",), ("model.hidden=[8]",), ("optimizer=nesterov",), ("optimizer=adam",), ("dataset=wine",)]
    for overrides in other:
        assert fusion_key(build_run(make_cfg("dataset=iris", "optimizer=momentum", *overrides))) != key, overrides


# ------------------------------------------------------------------ a group in-process
def test_members_that_stop_early_leave_the_group_at_their_own_epoch(make_cfg, tmp_path):
    """Early stopping (patience 1) ends each member where its own single run ends — here at
    epochs 8, 6 and 4 — with the single run's weights; the others train on."""
    lrs = ("0.05", "2.0", "0.5")

    def cfg(lr: str, name: str):
        return make_cfg("dataset=iris", "batch_size=8", "epochs=8", "early_stopping_patience=1", f"optimizer.lr={lr}", output_dir=tmp_path / name)

    singles = []
    for lr in lrs:
        run = build_run(cfg(lr, "single"))
        singles.append((fit(run, MemoryLogger()), run))
    members = []
    for k, lr in enumerate(lrs):
        run = build_run(cfg(lr, f"m{k}"))
        members.append(Member(run=run, out=tmp_path / f"m{k}", logger=TensorBoardLogger(tmp_path / f"m{k}"), state=TrainState(), hparams={}, active=nullcontext))
    train_group(members)
    assert [m.summary["epochs"] for m in members] == [s["epochs"] for s, _ in singles] == [8, 6, 4]
    for (summary, run), member in zip(singles, members):
        assert member.summary["stopped_early"] == summary["stopped_early"]
        assert member.summary["best_epoch"] == summary["best_epoch"]
        assert member.summary["iterations"] == summary["iterations"]
        for mine, theirs in zip(member.run.model.parameters(), run.model.parameters()):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
        assert torch.load(member.out / "model.pt", weights_only=True).keys() == run.model.state_dict().keys()
        assert_train_seconds_logged(member.out)  # each member's own seconds, to its own last epoch


# ------------------------------------------------------------------ whole sweeps, both launchers
# Two seeds x two learning rates fuse into one group of four; lr=1e6 diverges within its first
# 5 updates while the others train on (15 updates per epoch, a checkpoint every 5).
SWEEP = (
    "dataset=iris", "batch_size=8", "epochs=2", "optimizer=momentum", "scheduler=step", "scheduler.interval=iteration",
    "scheduler.step_size=5", "seed=0,1", "optimizer.lr=0.05,1e6", "checkpoint_every=5",
)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("fused")
    basic, fused = root / "basic", root / "fused"
    multirun(basic, *SWEEP, launcher="basic")
    result = multirun(fused, *SWEEP)
    return basic, fused, result.stdout + result.stderr


def test_a_fused_sweep_writes_the_basic_launchers_tree_and_results(sweeps):
    basic, fused, _ = sweeps
    assert tree(fused) == tree(basic)
    assert_same_results(fused, basic)
    statuses = {name: json.loads((fused / name / "summary.json").read_text())["status"] for name in run_dirs(fused)}
    assert sorted(statuses.values()) == ["diverged"] * 2 + ["done"] * 2


def test_the_report_is_the_basic_launchers_but_for_timings(sweeps):
    basic, fused, _ = sweeps

    def content(root: Path) -> list[str]:
        lines = (root / "report.md").read_text().replace(str(root), "<root>").splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("| run |"))
        column = [c.strip() for c in lines[header].strip("|").split("|")].index("seconds/epoch")
        rows = []
        for line in lines:
            if line.startswith(("Generated", "# Report:")):  # the time and the folder's name
                continue
            # The findings at equal training time, and how that time was chosen, are timings too.
            if line.startswith(("- **At equal training time**", "How each point was chosen", "- **Equal time**")):
                continue
            if line.startswith("| `") or line.startswith("| **"):
                cells = line.strip("|").split("|")
                line = "|".join(cells[:column] + cells[column + 1 :])
            rows.append(line)
        return rows

    assert content(fused) == content(basic)


def test_the_log_says_which_jobs_were_fused(sweeps):
    _, _, log = sweeps
    assert "Fusing 4 jobs into one stacked model (iris, mlp, SGD, batch size 8, 2 epochs): #0, #1, #2, #3" in log


@pytest.mark.slow
def test_jobs_that_cannot_be_stacked_run_as_the_basic_launcher_runs_them_and_the_log_says_why(tmp_path):
    overrides = ("dataset=iris", "batch_size=8", "seed=0,1", "micro_batch_size=null,4")
    multirun(tmp_path / "basic", *overrides, launcher="basic")
    result = multirun(tmp_path / "fused", *overrides)
    assert result.stdout.count("runs alone: micro_batch_size is set") == 2
    assert "Fusing 2 jobs" in result.stdout
    assert tree(tmp_path / "fused") == tree(tmp_path / "basic")
    assert_same_results(tmp_path / "fused", tmp_path / "basic")


@pytest.mark.slow
# Each batch size and each schedule at least once, batch size 1 (where Adam amplifies rounding) with
# both: the two other pairs added about two minutes to CI and no case the four do not cover.
@pytest.mark.parametrize("scheduler,batch_size", [("none", "1"), ("cosine", "1"), ("cosine", "32"), ("none", "full")])
def test_six_optimizers_fused_equal_one_by_one(tmp_path, batch_size, scheduler):
    """One epoch (120 updates at batch size 1). bmm and mm round differently in the last bit,
    and at batch size 1 Adam/AdamW amplify that (a weight whose gradient is ~0 moves by ~lr either
    way): up to ~4e-5 relative was seen there, so batch size 1 is held to 5e-5, the rest to 1e-5."""
    overrides = (
        "dataset=iris", f"batch_size={batch_size}", "epochs=1", f"scheduler={scheduler}", "scheduler.interval=iteration" if scheduler != "none" else "scheduler.interval=epoch",
        "optimizer=sgd,momentum,nesterov,adam,adamw,rmsprop", "seed=0,1", "optimizer.lr=0.01,0.02",
    )
    multirun(tmp_path / "basic", *overrides, launcher="basic")
    log = multirun(tmp_path / "fused", *overrides).stdout
    assert log.count("Fusing 4 jobs") == 6
    assert_same_results(tmp_path / "fused", tmp_path / "basic", tol=5e-5 if batch_size == "1" else 1e-5)


# ------------------------------------------------------------------ interrupted and resumed
@pytest.mark.slow  # a real sweep in processes: CI runs it under -m slow
def test_a_fused_group_killed_mid_run_resumes_every_member_exactly(sweeps, tmp_path):
    """kill -9 in the middle of the 7th checkpoint write: 4 at the start, then the two members
    still training (the lr=1e6 ones diverged and were written out) wrote theirs at update 5, and
    the first one's at update 10 is cut. The same command again keeps the diverged results and
    resumes both others, as one group, from update 5 — to the basic launcher's results."""
    basic, _, _ = sweeps
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "runner", "-m", "progress=false", "hydra/launcher=fused", f"hydra.sweep.dir={sweep}", *SWEEP]
    killed = subprocess.run(command, cwd=tmp_path, env={**env, CHECKPOINT_FAULT: "7"}, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(json.loads(p.read_text())["status"] for p in sweep.rglob("summary.json")) == ["diverged"] * 2
    resumed = multirun(sweep, *SWEEP)
    assert "Fusing 2 jobs" in resumed.stdout and resumed.stdout.count("Resuming from") == 2
    assert resumed.stdout.count("runs alone: its run directory already holds a finished run") == 2
    assert_same_results(sweep, basic)
    for name in run_dirs(sweep):
        steps = [s for s, _ in read_scalars(sweep / name)["loss/train_iter"]]
        assert steps == list(range(len(steps))) and len(steps) in (30, 1, 2, 3, 4, 5)  # each update once


# A run that learns: fused and basic agree to float rounding (~1e-7) per update, which a diverging
# run (lr=0.01 here reaches losses of 1e5) amplifies past any tolerance, hiding what is compared.
RESUMABLE = ("dataset=digits", "batch_size=1", "epochs=2", "optimizer=momentum", "optimizer.lr=0.001", "seed=0,1", "checkpoint_every=300")


def interrupted(sweep: Path) -> None:
    """Start a fused sweep, SIGTERM it once both members passed a checkpoint boundary."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "runner", "-m", "progress=false", "hydra/launcher=fused", f"hydra.sweep.dir={sweep}", *RESUMABLE]
    proc = subprocess.Popen(command, cwd=sweep.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    boundaries = [sweep / f"seed={seed}" / "checkpoints" / "prev.ckpt" for seed in (0, 1)]
    deadline = time.time() + 300
    while not all(p.exists() for p in boundaries) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]


@pytest.fixture(scope="module")
def interrupted_group(tmp_path_factory) -> tuple[Path, Path]:
    """One fused group interrupted mid-epoch and the uninterrupted basic-launcher reference, made
    once: each rerun below resumes its own copy (a copied sweep resumes where it now is)."""
    root = tmp_path_factory.mktemp("interrupted")
    sweep, reference = root / "sweep", root / "reference"
    interrupted(sweep)
    multirun(reference, *RESUMABLE, launcher="basic", process=True)
    return sweep, reference


@pytest.mark.slow
@pytest.mark.parametrize("rerun_with", ["fused", "basic"])
def test_an_interrupted_fused_group_resumes_every_member_exactly(tmp_path, interrupted_group, rerun_with):
    """SIGTERM mid-epoch: every member stops at the same boundary with status interrupted; the
    same command again continues each from its checkpoint (a member's checkpoint is the
    single-run format, so the basic launcher resumes it too)."""
    original, reference = interrupted_group
    sweep = tmp_path / "sweep"
    shutil.copytree(original, sweep, symlinks=True)
    summaries = [json.loads((sweep / f"seed={s}" / "summary.json").read_text()) for s in (0, 1)]
    assert [s["status"] for s in summaries] == ["interrupted"] * 2
    assert 300 <= summaries[0]["iterations"] == summaries[1]["iterations"] < 2 * 1438
    multirun(sweep, *RESUMABLE, launcher=rerun_with, process=True)
    for seed in (0, 1):
        assert json.loads((reference / f"seed={seed}" / "summary.json").read_text())["val_loss"] < 0.5  # it learns
    assert_same_results(sweep, reference)
    for seed in (0, 1):
        steps = [s for s, _ in read_scalars(sweep / f"seed={seed}")["loss/train_iter"]]
        assert steps == list(range(2 * 1438))  # every update logged exactly once


@pytest.mark.install
def test_hydra_finds_the_fused_launcher_in_a_plain_install(tmp_path):
    """Plugin discovery from the installed package (hydra_plugins/ shipped next to runner/),
    run from a directory without the source tree."""
    from test_install import copy_of_checkout, fresh_venv, pip_install, run

    checkout = copy_of_checkout(tmp_path / "checkout")
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, str(checkout))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plugin = run([bin_dir / "python", "-c", "import hydra_plugins.hpr_fused_launcher as p; print(p.__file__)"], elsewhere).stdout
    assert Path(plugin.strip()).is_relative_to(tmp_path / "venv")
    result = run([bin_dir / "hpr", "-m", "dataset=iris", "epochs=1", "progress=false", "seed=0,1", "hydra/launcher=fused", "hydra.sweep.dir=sweep"], elsewhere)
    assert "Fusing 2 jobs into one stacked model" in result.stdout
    assert [json.loads((elsewhere / "sweep" / f"seed={s}" / "summary.json").read_text())["status"] for s in (0, 1)] == ["done", "done"]
