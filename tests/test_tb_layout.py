"""What TensorBoard lists for a sweep or a run: runs only, named by what differs, with HParams
that tell them apart.

Sweeps run through the real CLI (``python -m runner -m ...``) in a subprocess; the TensorBoard
run list, HParams experiment and custom-scalars layout are asked of a real TensorBoard server
(loopback only, every request with a timeout, the server stopped in a ``finally``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from runner.epochs import TRAIN_SECONDS_TAG
from runner.events.hparams import tb_value
from runner.aggregate import DEFAULT_LAYOUT
from runner.schema import sweep_subdir
from runner.sweep import split_sweep_keys
from runner.build import build_run
from runner.describe import hparams_of
from runner.train import train

from conftest import CONF_DIR, assert_train_seconds_logged, compose_cfg, read_scalars, run_in_process

EVENTS = "events.out.tfevents.*"
HOST = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def multirun(cwd: Path, *overrides: str) -> Path:
    """``python -m runner -m <overrides>`` as a user types it (through the CLI's entry, in this
    process); returns the sweep directory."""
    sweep = cwd / "sweep"
    result = run_in_process(["-m", "progress=false", f"hydra.sweep.dir={sweep}", *overrides], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


def event_dirs(root: Path) -> set[str]:
    """TensorBoard's run names under ``root``: every directory holding an event file."""
    return {p.parent.relative_to(root).as_posix() for p in root.rglob(EVENTS)}


def session_hparams(run: Path) -> dict[str, Any]:
    """The hparams a run's event file records for TensorBoard's HParams tab."""
    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_START_INFO_TAG]
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


# --------------------------------------------------------------------------- a real server
def _request(port: int, path: str, body: dict | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, headers={"Content-Type": "application/json"})
    with _OPENER.open(request, timeout=5.0) as response:
        return json.loads(response.read().decode("utf-8"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard(logdir: Path, log_path: Path, runs: set[str]) -> Iterator[int]:
    """A TensorBoard on a free loopback port that has read every event file of ``runs``.

    Ready once ``/data/runs`` lists exactly ``runs`` and each of them has its scalar tags:
    the pure-Python loader (one process) reads a run's whole file before it lists its tags.
    """
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", HOST, "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, "--load_fast=false", "--reload_interval", "1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, served = time.monotonic() + 60.0, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                served = set(_request(port, "/data/runs"))
                tags = _request(port, "/data/plugin/scalars/tags")
                if served == runs and all("loss/train_full" in tags.get(run, {}) for run in runs):
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.25)
        else:
            raise AssertionError(f"TensorBoard served {served}, expected {runs}:\n{log_path.read_text()}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------- sweeps
@pytest.fixture(scope="module")
def gd_compare(tmp_path_factory) -> Path:
    """The gd_compare preset (5 batch sizes) × 2 seeds on wine (142 training samples), 1 epoch: constants given too."""
    return multirun(tmp_path_factory.mktemp("gd"), "experiment=gd_compare", "dataset=wine", "epochs=1", "seed=0,1")


BATCHES = ("full", "1", "8", "32", "128")


def test_gd_compare_runs_are_the_job_directories_named_by_the_swept_keys(gd_compare):
    jobs = {f"batch_size={b}/seed={k}" for b in BATCHES for k in (0, 1)}
    aggregates = {f"batch_size={b}/seed_aggregate" for b in BATCHES}
    assert {p.parent.relative_to(gd_compare).as_posix() for p in gd_compare.rglob("summary.json") if ".attempts" not in p.parts} == jobs
    # Event files sit in the job directories themselves (and in the seed aggregates): nothing else.
    assert event_dirs(gd_compare) == jobs | aggregates
    assert not any((gd_compare / name).exists() for name in ("_layout", "_hparams", "_report", "tb"))
    assert not list(gd_compare.rglob("tb"))


def test_tensorboard_lists_runs_and_infers_which_hparams_differ(gd_compare, tmp_path):
    jobs = {f"batch_size={b}/seed={k}" for b in BATCHES for k in (0, 1)}
    runs = jobs | {f"batch_size={b}/seed_aggregate" for b in BATCHES}
    with tensorboard(gd_compare, tmp_path / "tb.log", runs) as port:
        served = set(_request(port, "/data/runs"))
        assert served == runs
        assert all(name.startswith("batch_size=") and not name.endswith("/tb") for name in served)

        experiment = _request(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
        infos = {info["name"]: info for info in experiment["hparamInfos"]}
        differs = {name for name, info in infos.items() if info.get("differs")}
        # What tells the runs apart, and only that, is marked as differing ...
        assert differs == {"batch_size", "regime", "seed"}
        assert {"dataset", "experiment", "optimizer", "optimizer.lr", "lr", "epochs", "scheduler"} <= set(infos) - differs
        # The experiment every run writes (no inference): the swept values as a discrete
        # domain, integers as text (the HParams tab prints numbers as 0.0000), the curated metrics.
        assert infos["seed"]["domainDiscrete"] == ["0", "1"] and infos["experiment"]["type"] == "DATA_TYPE_STRING"
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == ["loss/val", "loss/train_full", "metric/acc/val", "metric/acc/train", TRAIN_SECONDS_TAG]
        # ... and the HParams dashboard shows those columns first.
        assert {info["name"] for info in experiment["hparamInfos"][:3]} == differs
        groups = _request(port, "/data/plugin/hparams/session_groups", {"experimentName": "", "startIndex": 0, "sliceSize": 100, "allowedStatuses": ["STATUS_SUCCESS"]})
        assert {group["name"] for group in groups["sessionGroups"]} == jobs  # aggregates are no sessions

        # One merged layout: every run carries the same one, no chart repeated.
        layout = _request(port, "/data/plugin/custom_scalars/layout")
        assert [c["title"] for c in layout["category"]] == list(DEFAULT_LAYOUT)
        assert [len(c["chart"]) for c in layout["category"]] == [len(charts) for charts in DEFAULT_LAYOUT.values()]


@pytest.mark.slow  # a real sweep in processes: CI runs it under -m slow
def test_an_optimizer_sweep_records_each_choice_and_its_momentum(tmp_path):
    sweep = multirun(tmp_path, "optimizer=sgd,momentum,nesterov", "dataset=iris", "epochs=1", "scheduler=step")
    assert event_dirs(sweep) == {"optimizer=sgd", "optimizer=momentum", "optimizer=nesterov"}
    recorded = {f"optimizer={name}": session_hparams(sweep / f"optimizer={name}") for name in ("sgd", "momentum", "nesterov")}
    assert {name: (h["optimizer"], h["optimizer.momentum"], h["optimizer.nesterov"]) for name, h in recorded.items()} == {
        "optimizer=sgd": ("sgd", 0.0, False),
        "optimizer=momentum": ("momentum", 0.9, False),
        "optimizer=nesterov": ("nesterov", 0.9, True),
    }
    for hparams in recorded.values():
        assert hparams["scheduler"] == "step" and hparams["scheduler.gamma"] == pytest.approx(0.1)
        assert hparams["scheduler.step_size"] == "10" and hparams["scheduler.interval"] == "epoch"  # integers as text
        assert hparams["lr"] == hparams["optimizer.lr"] == pytest.approx(0.1) and hparams["lr_scaling"] == "none"
        assert hparams["optimizer.weight_decay"] == 0.0 and hparams["dataset"] == "iris"
        # The summary keeps the same record.
        recorded_in_summary = json.loads((sweep / f"optimizer={hparams['optimizer']}" / "summary.json").read_text())["hparams"]
        assert {k: tb_value(v) for k, v in recorded_in_summary.items() if v is not None} == hparams


def test_a_single_run_is_one_tensorboard_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run([sys.executable, "-m", "runner", "dataset=iris", "epochs=1", "progress=false"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert event_dirs(tmp_path / "outputs") == {f"runs/{run.name}"}
    assert len(list(run.glob(EVENTS))) == 1
    assert session_hparams(run)["optimizer"] == "sgd"
    assert [s for s, _ in read_scalars(run)["loss/train_full"]] == [0, 1]  # epoch 0: the initial weights


def test_training_seconds_are_logged_each_epoch_and_are_the_last_hparams_metric(tmp_path):
    out = tmp_path / "run"
    summary = train(compose_cfg(["dataset=iris", "epochs=3", "batch_size=8"], output_dir=out))
    assert summary["epochs"] == 3
    assert_train_seconds_logged(out)
    # The experiment the run writes (what the HParams tab reads): seconds last among the metrics.
    acc = EventAccumulator(str(out))
    acc.Reload()
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.EXPERIMENT_TAG]
    experiment = hparams_metadata.parse_experiment_plugin_data(content)
    assert [m.name.tag for m in experiment.metric_infos] == ["loss/val", "loss/train_full", "metric/acc/val", "metric/acc/train", TRAIN_SECONDS_TAG]


# --------------------------------------------------------------------------- pieces
def test_a_failed_attempt_is_set_aside_with_its_event_file(tmp_path):
    out = tmp_path / "run"
    first = train(compose_cfg(["dataset=iris", "epochs=1"], output_dir=out))
    (old_events,) = out.glob(EVENTS)
    (out / "summary.json").write_text(json.dumps({**first, "status": "failed"}))
    train(compose_cfg(["dataset=iris", "epochs=1"], output_dir=out))
    (attempt,) = (out / ".attempts").iterdir()
    assert attempt.name == "1-failed"
    assert [p.name for p in attempt.glob(EVENTS)] == [old_events.name]
    (new_events,) = out.glob(EVENTS)
    assert new_events != old_events
    # The new file holds the new attempt only: every update once.
    assert [s for s, _ in read_scalars(out)["loss/train_iter"]] == list(range(first["iterations"]))


@pytest.mark.parametrize(
    ("dirname", "expected"),
    [
        ("batch_size=8,seed=1", "batch_size=8/seed=1"),
        ("batch_size=8", "batch_size=8"),
        ("seed=3", "seed=3"),
        ("", "seed=0"),
        ("model.hidden=[64,64],seed=2", "model.hidden=[64,64]/seed=2"),
        ("dataset.path=a/b.csv", "dataset.path=a_b.csv"),
    ],
)
def test_sweep_subdir_nests_a_swept_seed_under_its_configuration(dirname, expected):
    assert sweep_subdir(dirname, 0) == expected


def _master(*overrides: str):
    """The config ``python -m runner -m <overrides>`` hands its callbacks before the first job."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            loader = GlobalHydra.instance().config_loader()
            return loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
    finally:
        GlobalHydra.instance().clear()


def test_swept_keys_come_from_the_preset_and_the_command_line():
    assert split_sweep_keys(_master("experiment=gd_compare", "epochs=1", "seed=0,1")) == (
        ["batch_size", "seed"], ["epochs", "experiment"])
    # A command-line value replaces the preset's sweep, as the basic sweeper does.
    assert split_sweep_keys(_master("experiment=gd_compare", "batch_size=8", "optimizer=sgd,adam")) == (
        ["optimizer"], ["batch_size", "experiment"])
    assert split_sweep_keys(_master("optimizer.lr=interval(0.001,0.1)", "lr_scaling=linear,linear")) == (
        ["optimizer.lr"], ["lr_scaling"])


def test_without_hydra_the_names_come_from_the_config(make_cfg):
    run = build_run(make_cfg("dataset=iris", "optimizer=nesterov", "lr_scaling=linear", "batch_size=64", "model.hidden=[16]"))
    hparams = hparams_of(run)
    assert hparams["optimizer"] == "SGD" and hparams["optimizer.nesterov"] is True and hparams["dataset"] == "iris"
    assert hparams["optimizer.lr"] == 0.1 and hparams["lr"] == pytest.approx(0.2)  # 0.1 × 64 / 32
    with_hydra = hparams_of(run, {"optimizer": "nesterov", "dataset": "iris"}, ["optimizer=nesterov", "model.hidden=[16]", "output_dir=x"])
    assert with_hydra["optimizer"] == "nesterov" and with_hydra["model.hidden"] == "[16]"
    assert "output_dir" not in with_hydra
