"""Fixtures composed from the real ``conf/``, shrunk to run in seconds on a CPU."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import pickle
import struct
import subprocess
from pathlib import Path
from typing import Sequence

# pytest-xdist's workers share the machine's cores. With torch's default of one OpenMP thread
# per core in each worker (and in every process a test starts), their threads spin against each
# other at every parallel region: on 2 cores, the README's first sweep took 220 s in CI against
# 11 s alone. Each worker gets its share of the cores instead (what torchrun does for its ranks);
# an OMP_NUM_THREADS already set is kept. Set before the imports below: torch reads it as it loads.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _XDIST_WORKERS))

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import runner.schema  # noqa: F401  (registers the schemas)
from runner.cli import CONF_DIR  # noqa: F401  (the configs the runner reads; tests import it from here)

REPO = Path(__file__).resolve().parents[1]
# How many examples each `-m fuzz` Hypothesis run draws: 150 in CI; HPR_FUZZ_EXAMPLES=1000 for a deeper run.
FUZZ_EXAMPLES = int(os.environ.get("HPR_FUZZ_EXAMPLES", "150"))

# Small and quiet: one epoch, no progress bar. Tests override what they exercise.
FAST = ("epochs=1", "progress=false", "device=cpu")


def compose_cfg(overrides: Sequence[str] = (), output_dir: Path | str | None = None) -> DictConfig:
    """The config ``python -m runner <overrides>`` would run, with ``output_dir`` set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=unused"]
        return compose("config", overrides=[*FAST, *overrides, *extra])


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides)`` → a composed config writing into this test's tmp dir."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_cfg(overrides, output_dir or tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard log dir, as (step, value) lists in file order."""
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_train_seconds_logged(run_dir: Path) -> None:
    """``time/train_s`` in a finished run's event file: one point per epoch end (epoch 0, before
    any update, at 0 s), increasing, the last the training seconds its ``summary.json`` holds."""
    from runner.epochs import TRAIN_SECONDS_TAG

    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    steps, values = zip(*read_scalars(run_dir)[TRAIN_SECONDS_TAG])
    assert list(steps) == list(range(summary["epochs"] + 1)), (run_dir, steps)
    assert values[0] == 0.0 and all(a < b for a, b in zip(values, values[1:])), (run_dir, values)
    assert summary["spent"]["seconds"] == summary["train_seconds"]
    assert values[-1] == pytest.approx(summary["train_seconds"], rel=1e-6), run_dir  # stored as float32


# ------------------------------------------------------------------ tiny files in real formats
def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """An IDX file (the MNIST format) holding a uint8 array."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


def write_mnist_like(root: Path, n: int = 40, size: int = 8, classes: int = 4, seed: int = 0) -> None:
    """train-images/labels IDX files in ``root`` (the plain layout)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, size=(n, size, size)))
    write_idx(root / "train-labels-idx1-ubyte", np.arange(n) % classes)


def write_cifar_like(root: Path, per_batch: int = 10, seed: int = 0) -> None:
    """data_batch_1..5 pickles in ``root/cifar-10-batches-py`` with the real keys and shapes."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        batch = {
            b"data": rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8),
            b"labels": [int(v) for v in np.arange(per_batch) % 10],
        }
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f)


@pytest.fixture(autouse=True)
def _no_log_handler_outlives_its_test():
    """A run in this process (the CLI's entry, Hydra's job logging) leaves its handlers on the
    root logger: a later test's log line would go to a file in a deleted temporary directory
    (a closed FileHandler reopens its file, and fails). pytest's own handlers stay."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()


def run_in_process(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m runner <argv>`` run in ``cwd`` through the CLI's own entry (``run_cli``), in
    this process: the same composition, checks, launchers, callbacks and exit status as a fresh
    process, without paying its five seconds of imports. Tests about the process itself (the
    console script, signals, a pipe closed early, what the shell sees) start a real one.

    Returns what a subprocess would: the exit status and everything printed to each stream.
    ``HYDRA_FULL_ERROR`` is unset as in the subprocess helpers; ``env`` is added for the call.
    """
    from runner.cli import run_cli

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env or {})
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run_cli(list(argv))
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        # Hydra configured logging for the job (its console into our buffers, a file in the
        # run): closed and taken away, so later tests log where they did before.
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    return subprocess.CompletedProcess(list(argv), code, stdout.getvalue(), stderr.getvalue())
