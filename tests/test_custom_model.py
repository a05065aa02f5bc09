"""Bring your own model: ``model=custom model._target_=pkg.module.Class`` trains any nn.Module subclass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from runner.checkpoint import LAST
from runner.cli import run_cli
from runner.train import build_run, train

from conftest import read_scalars
from test_ddp import assert_same_run, env as torchrun_env, single, torchrun_cmd

# The user's own package, as a user would write it: constructor keywords in_shape and out_features.
NETS = '''
import math

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Two dense layers around a residual block."""

    def __init__(self, in_shape, out_features, width=16):
        super().__init__()
        self.inp = nn.Linear(math.prod(in_shape), width)
        self.block = nn.Linear(width, width)
        self.out = nn.Linear(width, out_features)

    def forward(self, x):
        h = torch.tanh(self.inp(x.flatten(1)))
        h = h + torch.tanh(self.block(h))
        return self.out(h)


class TinyCNN(nn.Module):
    def __init__(self, in_shape, out_features, channels=4):
        super().__init__()
        c, height, width = in_shape
        self.conv = nn.Conv2d(c, channels, 3, padding=1)
        self.head = nn.Linear(channels * (height // 2) * (width // 2), out_features)

    def forward(self, x):
        return self.head(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class Dropped(ResidualMLP):
    """Draws random numbers in forward (dropout in training mode)."""

    def __init__(self, in_shape, out_features, width=16):
        super().__init__(in_shape, out_features, width)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.drop(super().forward(x))


class NotAModule:
    def __init__(self, in_shape, out_features):
        pass


def a_function(in_shape, out_features):
    return nn.Linear(1, 1)
'''


def write_package(root: Path) -> Path:
    pkg = root / "mynets"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    (pkg / "broken.py").write_text("import a_module_that_is_not_there\n")
    return root


@pytest.fixture(scope="module")
def user_code(tmp_path_factory):
    """The package on sys.path, as ``python -m runner`` puts the working directory there."""
    root = write_package(tmp_path_factory.mktemp("usercode"))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        del sys.modules[name]


RES = ("model=custom", "model._target_=mynets.nets.ResidualMLP")


@pytest.mark.parametrize(
    "target, says",
    [
        ("os.system", "os.system is a builtin_function_or_method, not an nn.Module subclass"),
        pytest.param("builtins.eval", "builtins.eval is a builtin_function_or_method, not an nn.Module subclass", marks=pytest.mark.slow),
        ("mynets.nets.NotAModule", "mynets.nets.NotAModule is a type, not an nn.Module subclass"),
        pytest.param("mynets.nets.a_function", "mynets.nets.a_function is a function, not an nn.Module subclass", marks=pytest.mark.slow),
        ("mynets.broken.Net", "importing mynets.broken failed: ModuleNotFoundError: No module named 'a_module_that_is_not_there'"),
        pytest.param("mynets.nets.Missing", "mynets.nets has no attribute Missing", marks=pytest.mark.slow),
        pytest.param("nowhere.Net", "importing nowhere failed: ModuleNotFoundError", marks=pytest.mark.slow),
        pytest.param("Net", "a torch.nn.Module subclass as package.module.Class", marks=pytest.mark.slow),
    ],
)
def test_a_target_that_is_not_a_module_class_is_refused_in_one_line(target, says, user_code, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(["model=custom", f"model._target_={target}", "epochs=1", "progress=false", f"hydra.run.dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"Error: model._target_='{target}' is not allowed: "), err
    assert says in err
    assert not out.exists()


@pytest.mark.slow
def test_custom_without_a_target_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["model=custom", "progress=false", f"hydra.run.dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: model._target_") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_constructor_that_rejects_the_keys_is_one_line(user_code, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*RES, "+model.depth=3", "progress=false", f"hydra.run.dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: model={'depth': 3} is not allowed: valid arguments for mynets.nets.ResidualMLP"), err
    assert err.count("\n") == 1 and not out.exists()


def test_the_model_gets_the_data_shape_class_count_and_its_own_keys(user_code, make_cfg):
    run = build_run(make_cfg(*RES, "+model.width=7", "dataset=digits"))
    assert type(run.model).__name__ == "ResidualMLP"
    assert run.model.inp.in_features == 64 and run.model.inp.out_features == 7  # 1x8x8 digits, width 7
    assert run.model.out.out_features == 10  # classes
    cnn = build_run(make_cfg("model=custom", "model._target_=mynets.nets.TinyCNN", "dataset=digits"))
    assert cnn.model.conv.in_channels == 1 and cnn.model.head.in_features == 4 * 4 * 4


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lars")
SCHEDULERS = ("none", "step", "exponential", "cosine", "warmup_cosine", "plateau")


# One pair by default; the whole matrix under -m slow (each is a run of its own).
@pytest.mark.parametrize(
    "optimizer, scheduler",
    [pytest.param(o, s, marks=() if o == "adam" else pytest.mark.slow) for o, s in zip(OPTIMIZERS, SCHEDULERS + SCHEDULERS[:2])],
)
def test_it_trains_with_every_optimizer_and_scheduler(optimizer, scheduler, user_code, make_cfg, tmp_path):
    extra = ("scheduler.warmup_steps=1",) if scheduler == "warmup_cosine" else ()
    summary = train(make_cfg(*RES, "dataset=iris", f"optimizer={optimizer}", f"scheduler={scheduler}", *extra, "epochs=2", "batch_size=16"))
    assert summary["status"] == "done" and summary["iterations"] == 2 * 8  # ceil(120/16) = 8 per epoch
    scalars = read_scalars(tmp_path / "run")
    assert [s for s, _ in scalars["loss/train_iter"]] == list(range(16))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse", "huber", "categorical_crossentropy", "hinge"])
def test_it_trains_with_other_losses(loss, user_code, make_cfg):
    assert train(make_cfg(*RES, "dataset=iris", f"loss={loss}", "batch_size=full"))["status"] == "done"


def test_the_noise_instrument_measures_a_deterministic_model(user_code, make_cfg):
    summary = train(make_cfg(*RES, "dataset=iris", "batch_size=full", "noise.every=1", "epochs=2"))
    assert summary["status"] == "done"


def test_a_model_drawing_random_numbers_is_seeded_and_refused_by_the_instruments(user_code, make_cfg, tmp_path):
    drop = ("model=custom", "model._target_=mynets.nets.Dropped", "dataset=iris", "batch_size=8", "epochs=2")
    a = train(make_cfg(*drop, output_dir=tmp_path / "a"))
    b = train(make_cfg(*drop, output_dir=tmp_path / "b"))
    assert a["status"] == b["status"] == "done"
    assert read_scalars(tmp_path / "a")["loss/train_iter"] == read_scalars(tmp_path / "b")["loss/train_iter"]
    with pytest.raises(Exception, match="randomness"):
        train(make_cfg(*drop, "noise.every=1", output_dir=tmp_path / "c"))


def test_the_fused_launcher_stacks_a_pure_model_and_runs_a_random_one_alone(user_code, make_cfg):
    from runner.launchers.fused import fusion_key

    assert isinstance(fusion_key(build_run(make_cfg(*RES, "dataset=iris"))), tuple)
    reason = fusion_key(build_run(make_cfg("model=custom", "model._target_=mynets.nets.Dropped", "dataset=iris")))
    assert reason.startswith("model Dropped is not a plain chain of layers, and model Dropped cannot be stacked by vmap(functional_call) (RuntimeError: ")
    assert "randomness" in reason


def test_vmap_stacked_members_equal_their_own_modules(user_code, make_cfg):
    """One forward/backward of K stacked TinyCNNs equals each member's own, within the fused tolerance."""
    from runner.launchers.stacked_vmap import VmapStackedModel

    runs = [build_run(make_cfg("model=custom", "model._target_=mynets.nets.TinyCNN", "dataset=digits", f"seed={s}")) for s in range(3)]
    stacked = VmapStackedModel([r.model for r in runs])
    x = torch.stack([r.train.X[:5] for r in runs])
    out = stacked(x)
    out.square().sum().backward()
    for k, r in enumerate(runs):
        r.model.zero_grad()
        mine = r.model(x[k])
        mine.square().sum().backward()
        torch.testing.assert_close(out[k].detach(), mine.detach(), atol=1e-5, rtol=1e-5)
        grads = torch.cat([p.grad.reshape(-1) for p in r.model.parameters()])
        torch.testing.assert_close(stacked.grad[k], grads, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- real processes (slow)
def cli(cwd: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # From the user's working directory, as they would type it: `python -m runner` imports from there.
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


KILLED = (*RES, "dataset=iris", "batch_size=1", "epochs=3", "optimizer=adam", "optimizer.lr=0.01", "checkpoint_every=40", "progress=false")


@pytest.mark.slow
def test_a_custom_model_killed_with_sigkill_resumes_bit_identical(tmp_path):
    write_package(tmp_path)
    ref = cli(tmp_path, *KILLED, "hydra.run.dir=ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    proc = cli(tmp_path, *KILLED, "hydra.run.dir=killed")
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        ckpt = tmp_path / "killed" / "checkpoints" / LAST
        try:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["state"]["iteration"] >= 100:
                break
        except Exception:
            pass  # being replaced right now
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (tmp_path / "killed" / "summary.json").exists()
    again = cli(tmp_path, *KILLED, "hydra.run.dir=killed")
    assert again.wait(timeout=300) == 0, again.stderr.read()
    got, want = read_scalars(tmp_path / "killed"), read_scalars(tmp_path / "ref")
    assert [s for s, _ in got["loss/train_iter"]] == list(range(360))
    assert got["loss/train_iter"] == want["loss/train_iter"]
    weights, ref_weights = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("killed", "ref"))
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["status"] == "done"


# ---------------------------------------------------------------- torchrun (ddp)
# 120 iris rows in batches of 25: an uneven last batch, split 13 + 12 between the two ranks.
DDP = (*RES, "+model.width=8", "dataset=iris", "epochs=2", "seed=3", "batch_size=25", "optimizer=adam")


@pytest.mark.ddp
@pytest.mark.parametrize("where", ["pythonpath", "working-directory"])
def test_two_torchrun_processes_train_a_custom_model_as_one_process(where, user_code, tmp_path):
    """The user's package on PYTHONPATH, or in the directory torchrun starts in (``-m`` puts it on
    sys.path): each rank imports and checks it, and the run equals the same one in one process,
    every iteration's and every epoch's loss and the final weights to 1e-5."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    environ = torchrun_env()
    if where == "pythonpath":
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(user_code), environ.get("PYTHONPATH")) if p)
    else:
        write_package(cwd)
    out = tmp_path / "ddp"
    result = subprocess.run(torchrun_cmd(*DDP, f"hydra.run.dir={out}"), cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["status"] == "done"
    reference = single(tmp_path / "one", *DDP)
    assert summary["iterations"] == reference["iterations"] == 2 * 5  # ceil(120/25) per epoch
    assert_same_run(out, tmp_path / "one")
    # The user's class with its own key (+model.width=8) on 4 iris features and 3 classes.
    weights = torch.load(out / "model.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "inp.weight": (8, 4), "inp.bias": (8,), "block.weight": (8, 8), "block.bias": (8,), "out.weight": (3, 8), "out.bias": (3,)
    }


@pytest.mark.ddp
def test_a_custom_model_no_rank_can_import_is_refused_in_one_line(tmp_path):
    """Not on PYTHONPATH, not in the working directory: every rank refuses, rank 0 says so in one
    line, nothing written."""
    result = subprocess.run(torchrun_cmd(*DDP), cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("Error: ")]
    want = "Error: model._target_='mynets.nets.ResidualMLP' is not allowed: a torch.nn.Module subclass as package.module.Class"
    assert len(lines) == 1 and lines[0].startswith(want), lines
    assert all(line.endswith("(importing mynets.nets failed: ModuleNotFoundError: No module named 'mynets')") for line in lines), lines
    assert "]: Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
