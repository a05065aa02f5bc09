"""Sweeps on a Ray cluster (``hydra/launcher=ray_cluster``), as a user runs them: a local Ray
head bound to 127.0.0.1 is started the way the README says (with token authentication, as Ray
2.59+ does by default), the sweep joins it by address.

The sweep runs with ``pytest -m ray`` (needs the ``[ray]`` extra); the preset check in the default run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR

try:
    import hydra_plugins.hydra_ray_launcher  # noqa: F401
except ImportError:
    pytestmark = pytest.mark.skip(reason="hydra-ray-launcher is not installed: pip install -e '.[ray]'")

EPOCHS = 2
N_TRAIN = 142  # the wine training split
EXPECTED_IPE = {"full": 1, "1": 142, "8": 18, "32": 5, "128": 2}


def test_the_ray_preset_joins_a_cluster_by_address_and_passes_the_checks():
    from runner import preflight

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["hydra/launcher=ray_cluster"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hpr_cluster_launchers.cluster_launchers.RayLauncher"
    # Joins a running cluster; Ray refuses object_store_memory when joining one, so it is set
    # (to null) here, or the plugin would set it.
    assert launcher.ray.init == {"address": "auto", "object_store_memory": None}
    assert launcher.ray.remote == {"num_cpus": 1}
    preflight.check_hydra(cfg, multirun=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """``ray start --head`` on 127.0.0.1 with a token of its own (its own session, stopped with
    it); yields the address and the environment a process needs to join it.

    The token travels in ``RAY_AUTH_TOKEN``, so the user's ``~/.ray/auth_token`` is untouched.
    """
    ray = Path(sys.executable).with_name("ray")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    # Ray's socket paths must stay short: a temp dir of its own under /tmp.
    temp = Path(f"/tmp/hpr-ray-{os.getpid()}")
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            status = subprocess.run([str(ray), "status", f"--address={address}"], env=env, capture_output=True, text=True)
            if status.returncode == 0:
                break
            if head.poll() is not None or time.time() > deadline:
                raise AssertionError(f"Ray did not start: {head.stdout.read() if head.poll() is not None else status.stderr}")
            time.sleep(1)
        yield address, env
    finally:
        # Only what this fixture started: the head's process group.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.ray
def test_gd_compare_sweep_on_a_ray_cluster_writes_every_job_and_reports_once(ray_head, tmp_path):
    # Launched from another directory than the sweep's parent: the jobs run in Ray's workers,
    # whose working directory is not the launcher's, and must still write into the sweep.
    address, env = ray_head
    sweep = tmp_path / "sweep"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", "experiment=gd_compare", "dataset=wine", f"epochs={EPOCHS}", "progress=false",
         "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}", "hydra.sweep.dir=../sweep"],
        cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    runs = {
        str(p.parent.relative_to(sweep)): json.loads(p.read_text())
        for p in sweep.rglob("summary.json")
    }
    assert sorted(runs) == sorted(f"batch_size={b}" for b in EXPECTED_IPE)
    for name, summary in runs.items():
        ipe = EXPECTED_IPE[name.split("=")[1]]
        assert summary["status"] == "done", summary
        assert (summary["iterations"], summary["samples_seen"]) == (EPOCHS * ipe, EPOCHS * N_TRAIN)
    assert list(elsewhere.iterdir()) == []
    # Each job ran in a Ray worker, not in the launching process: the pid in each event file's
    # name (events.out.tfevents.<time>.<host>.<pid>.<n>) is another one.
    pids = {int(next((sweep / name).glob("events.out.tfevents.*")).name.split(".")[-2]) for name in runs}
    assert proc.pid not in pids
    # The end-of-sweep work ran once, in the launching process, after every job.
    assert out.count("Report: ") == 1 and "Sweep finished: 5 jobs: 5 done" in out
    report = (sweep / "report.md").read_text()
    assert "from 5 runs" in report
    rows = [line for line in report.splitlines() if line.startswith("| `batch_size=")]
    assert sorted(row.split("`")[1] for row in rows) == sorted(runs)


@pytest.mark.ray
def test_a_sweep_without_the_heads_token_is_refused_in_one_line_before_anything_is_written(ray_head, tmp_path):
    address, env = ray_head
    env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "dataset=wine", "epochs=1", "optimizer.lr=0.1,0.2",
         "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}", "hydra.sweep.dir=sweep"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert proc.stderr.splitlines() == [
        f"Error: hydra.launcher.ray.init.address='{address}' is not allowed: a Ray cluster this process can join: "
        "the cluster asks for its token: export RAY_AUTH_MODE=token in this shell as in the one that started the head "
        "(the token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
    ]
    assert list(tmp_path.iterdir()) == []
