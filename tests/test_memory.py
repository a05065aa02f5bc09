"""Runs that cannot fit: status oom with the estimate and the micro_batch_size hint; the batch size is never changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner import memory
from runner.memory import OutOfMemory, activation_elements_per_sample
from runner.models import MLP
from runner.train import build_run

import torch

# BGD over 1.6 million rows through two 4096-wide layers: ~300 GB of activations at once.
TOO_BIG = ("dataset=linreg", "dataset.n=2000000", "dataset.d=4", "model=mlp", "model.hidden=[4096,4096]",
           "loss=mse", "regime=bgd", "epochs=1")


def test_activation_count_is_the_sum_of_layer_outputs():
    model = MLP(in_shape=(64,), out_features=10, hidden=[32, 16])
    # flatten 64 + linear 32 + relu 32 + linear 16 + relu 16 + linear 10
    assert activation_elements_per_sample(model, (64,), torch.device("cpu")) == 64 + 32 + 32 + 16 + 16 + 10


def test_full_batch_that_does_not_fit_is_refused_with_a_hint(make_cfg, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * 2**20)  # 2 MB free
    with pytest.raises(OutOfMemory) as info:
        build_run(make_cfg("regime=bgd", "model.hidden=[512]"))
    message = str(info.value)
    assert "batch size 1438" in message and "MB" in message and "micro_batch_size=" in message
    run = build_run(make_cfg("regime=bgd", "model.hidden=[512]", "micro_batch_size=64"))
    assert run.batch_size == 1438  # the same update, computed in chunks


def test_a_single_run_that_cannot_fit_exits_with_the_estimate(tmp_path):
    result = subprocess.run([sys.executable, "-m", "runner", *TOO_BIG, f"hydra.run.dir={tmp_path / 'r'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})
    assert result.returncode == 2 and "Set micro_batch_size" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "r").glob("events.out.tfevents.*")) and not (tmp_path / "r" / "summary.json").exists()


@pytest.mark.slow  # a real sweep in processes: CI runs it under -m slow
def test_in_a_sweep_it_records_status_oom_and_the_others_run(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "runner", "-m", *TOO_BIG, "model.hidden=[4096,4096],[8]", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    # A job out of memory makes the sweep's results incomplete: exit 1, the others still run.
    assert result.returncode == 1, result.stderr[-2000:]
    # Jobs are named by the swept key only: model.hidden=[4096,4096] and model.hidden=[8].
    statuses = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(statuses) == ["model.hidden=[4096,4096]", "model.hidden=[8]"]
    big = next(s for name, s in statuses.items() if "4096" in name)
    small = next(s for name, s in statuses.items() if "4096" not in name)
    assert big["status"] == "oom" and "micro_batch_size" in big["error"]
    assert small["status"] == "done" and small["batch_size"] == 1_600_000


# ------------------------------------------------------------------ the noise instrument's chunks
def test_a_noise_chunk_is_counted_as_its_per_sample_gradients_and_activations():
    model = MLP(in_shape=(64,), out_features=10, hidden=[32, 16])
    parameters = 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10  # 2,778
    activations = 64 + 32 + 32 + 16 + 16 + 10  # 170 per sample
    expected = 100 * (parameters * memory.NOISE_GRADIENT_COPIES + activations * memory.ACTIVATION_COPIES) * 4
    assert memory.noise_bytes(model, (64,), torch.device("cpu"), 100) == expected == 6_871_200
    # Frozen parameters have no per-sample gradient.
    next(model.parameters()).requires_grad_(False)  # the first layer's 64 x 32 weight
    assert memory.noise_bytes(model, (64,), torch.device("cpu"), 100) == 100 * ((parameters - 64 * 32) * 6 + 170 * 3) * 4


def _noise_estimates(make_cfg, rows):
    """(the update's estimate, the noise measurement's at ``rows`` per chunk) for iris's MLP."""
    run = build_run(make_cfg("dataset=iris"))
    cpu = torch.device("cpu")
    data_copy = run.memory_estimate - memory.step_bytes(run.model, (4,), cpu, run.batch_size, 0)
    base = memory.step_bytes(run.model, (4,), cpu, 0, data_copy)  # parameters, optimizer state, the epoch's data
    return run.memory_estimate, base + memory.noise_bytes(run.model, (4,), cpu, rows)


def test_noise_chunks_that_would_not_fit_are_refused_before_training_and_ones_that_fit_are_not(make_cfg, monkeypatch):
    step, measuring = _noise_estimates(make_cfg, 120)  # iris: 120 training samples, all in one chunk
    assert measuring > step  # the per-sample gradients outweigh the update's activations
    monkeypatch.setattr(memory, "available_bytes", lambda device: measuring - 1)
    with pytest.raises(OutOfMemory) as info:
        build_run(make_cfg("dataset=iris", "noise.every=1", "noise.micro_batch_size=256"))
    free = measuring - 1
    assert str(info.value) == (
        f"measuring the gradient noise (noise.micro_batch_size=120 per-sample gradients at once) needs about {measuring / 2**20:,.0f} MB on cpu, "
        f"and {free / 2**20:,.0f} MB are free. Lower noise.micro_batch_size (e.g. noise.micro_batch_size={120 * free // (2 * measuring)}): "
        "the measurement is the same, in smaller chunks"
    )
    # The same free memory: smaller chunks fit, and so does the run without the instrument.
    assert build_run(make_cfg("dataset=iris", "noise.every=1", "noise.micro_batch_size=16")).memory_estimate < free
    assert build_run(make_cfg("dataset=iris")).memory_estimate == step
    monkeypatch.setattr(memory, "available_bytes", lambda device: measuring)
    assert build_run(make_cfg("dataset=iris", "noise.every=1", "noise.micro_batch_size=256")).memory_estimate == measuring


def test_a_single_run_whose_noise_chunks_do_not_fit_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    from runner.cli import run_cli

    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * 2**20)  # 4 MB free
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    argv = ["dataset=iris", "model.hidden=[512]", "noise.every=1", "noise.micro_batch_size=120", f"hydra.run.dir={tmp_path / 'r'}"]
    assert run_cli(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    # 120 samples x (4,099 parameters x 6 + 1,031 activations x 3) x 4 bytes, plus the parameter buffers: 13 MB.
    assert lines == [
        "Error: measuring the gradient noise (noise.micro_batch_size=120 per-sample gradients at once) needs about 13 MB on cpu, "
        "and 4 MB are free. Lower noise.micro_batch_size (e.g. noise.micro_batch_size=18): the measurement is the same, in smaller chunks"
    ]
    assert list(tmp_path.iterdir()) == []
