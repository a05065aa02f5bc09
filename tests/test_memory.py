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
