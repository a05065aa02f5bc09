"""Faults that used to end in a traceback or exit 0 (issue 19): each is one line, exit 2, nothing written."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

SEARCH_SPACES = [
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is not allowed: a whole number >= 1"),
    (
        ["optimizer.lr=tag(log,interval(1.0,0.0001))"],
        "optimizer.lr='tag(log, interval(1.0, 0.0001))' is not allowed: an interval whose start is below its end, e.g. interval(0.0001, 1.0)",
    ),
    (
        ["optimizer.lr=tag(log,interval(0,1))"],
        "optimizer.lr='tag(log, interval(0.0, 1.0))' is not allowed: a log interval of positive numbers (its logarithm is sampled), "
        "e.g. tag(log, interval(1e-4, 1.0))",
    ),
]


@pytest.mark.parametrize("argv,line", SEARCH_SPACES, ids=[a[0][0] for a in SEARCH_SPACES])
def test_an_optuna_search_space_it_cannot_sample_is_refused_before_the_sweep(argv, line, tmp_path, monkeypatch, capsys):
    from runner.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    assert run_cli(["-m", "experiment=lr_search", *argv, f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"Error: {line}"]
    assert list(tmp_path.iterdir()) == []


def _refused(argv, tmp_path, monkeypatch, capsys) -> list[str]:
    """Run ``argv`` in this process from ``tmp_path``; assert exit 2 and that nothing was
    written there; return what stderr said, line by line."""
    from runner.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    assert run_cli(argv) == 2
    assert list(tmp_path.iterdir()) == []
    return capsys.readouterr().err.splitlines()


# ------------------------------------------------------------------ launcher keys
JOBLIB_KEYS = "n_jobs, backend, prefer, require, verbose, timeout, pre_dispatch, batch_size, temp_folder, max_nbytes, mmap_mode"
LAUNCHER_KEYS = [
    (["hydra/launcher=joblib", "+hydra.launcher.n_job=2"], f"hydra.launcher.n_job=2 is not allowed: did you mean n_jobs? a key of hydra/launcher=joblib: {JOBLIB_KEYS}"),
    # Without "+": Hydra's own refusal, reworded the same way.
    (["hydra/launcher=joblib", "hydra.launcher.n_job=2"], f"hydra.launcher.n_job='2' is not allowed: did you mean n_jobs? a key of hydra/launcher=joblib: {JOBLIB_KEYS}"),
    (["+hydra.launcher.workers=2"], "hydra.launcher.workers=2 is not allowed: no key: hydra/launcher=basic takes no settings"),
    (["hydra/launcher=ray_cluster", "+hydra.launcher.ray.cpus=1"], "hydra.launcher.ray.cpus=1 is not allowed: a key of hydra/launcher=ray_cluster: init, remote"),
]


@pytest.mark.parametrize("argv,line", LAUNCHER_KEYS, ids=[a[0][-1] for a in LAUNCHER_KEYS])
def test_a_key_the_chosen_launcher_does_not_have_is_refused_naming_its_keys(argv, line, tmp_path, monkeypatch, capsys):
    if "ray_cluster" in argv[0]:
        pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    sweep = tmp_path / "sweep"
    assert _refused(["-m", "dataset=iris", "optimizer.lr=0.1,0.2", *argv, f"hydra.sweep.dir={sweep}"], tmp_path, monkeypatch, capsys) == [f"Error: {line}"]


def test_the_launchers_own_keys_and_free_form_ones_pass_the_check():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONF_DIR
    from runner import preflight

    cases = [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["experiment=batch_scaling"]]
    try:
        import hydra_plugins.hydra_ray_launcher  # noqa: F401

        # Ray's init arguments are free-form (a dict, not a schema): the launcher reads them.
        cases.append(["hydra/launcher=ray_cluster", "+hydra.launcher.ray.init.num_cpus=1"])
    except ImportError:
        pass
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        composed = [compose("config", overrides=case, return_hydra_config=True) for case in cases]
    GlobalHydra.instance().clear()
    for cfg in composed:
        preflight.check_launcher_keys(cfg.hydra)


# ------------------------------------------------------------------ Slurm without a cluster
SLURM_SWEEP = ["-m", "dataset=iris", "optimizer.lr=0.1,0.2", "hydra/launcher=slurm"]
NO_CLUSTER = "start the cluster's controller, or use hydra/launcher=slurm_local to run the jobs as processes here"
needs_submitit = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("hydra_plugins.hydra_submitit_launcher"), reason="hydra-submitit-launcher is not installed"
)


def _fake_sbatch(folder: Path, script: str) -> None:
    """An ``sbatch`` on PATH that runs ``script`` (sh) and nothing else."""
    folder.mkdir()
    sbatch = folder / "sbatch"
    sbatch.write_text(f"#!/bin/sh\n{script}\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IXUSR)


@needs_submitit
def test_a_slurm_sweep_without_sbatch_on_path_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    empty = tmp_path.parent / f"{tmp_path.name}-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    lines = _refused([*SLURM_SWEEP, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, monkeypatch, capsys)
    assert lines == [f"Error: hydra/launcher='slurm' is not allowed: a launcher this machine can use: sbatch (Slurm's client) is not on PATH; install Slurm and {NO_CLUSTER}"]


@needs_submitit
@pytest.mark.slow  # runs a fake sbatch (a process)
@pytest.mark.parametrize(
    "script,said",
    [
        (
            "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)' >&2; exit 1",
            "a Slurm cluster that takes jobs: `sbatch --test-only --partition=gpu` says "
            "'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)'",
        ),
        ("exit 1", "a Slurm cluster that takes jobs: `sbatch --test-only --partition=gpu` says 'exit status 1, no message'"),
        ("exec sleep 60", "a Slurm cluster that answers: `sbatch --test-only` had no answer from the controller within 1 s"),
    ],
    ids=["controller-unreachable", "silent-failure", "no-answer"],
)
def test_a_slurm_sweep_whose_controller_does_not_take_jobs_is_one_line_and_writes_nothing(script, said, tmp_path, monkeypatch, capsys):
    from runner import cluster

    bin_dir = tmp_path.parent / f"{tmp_path.name}-bin"
    _fake_sbatch(bin_dir, script)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cluster, "SBATCH_PROBE_TIMEOUT_S", 1.0)
    lines = _refused([*SLURM_SWEEP, "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, monkeypatch, capsys)
    assert lines == [f"Error: hydra/launcher='slurm' is not allowed: {said}; {NO_CLUSTER}"]


@needs_submitit
@pytest.mark.slow  # runs a fake sbatch (a process)
def test_a_controller_that_would_take_the_job_passes_with_the_sweeps_partition_account_and_qos(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from runner import cluster

    bin_dir = tmp_path / "bin"
    log = tmp_path / "args"
    _fake_sbatch(bin_dir, f'echo "$@" > {log}; echo "sbatch: Job 7 to start at 2026-01-01T00:00:00 using 1 processors on nodes n1 in partition gpu" >&2')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    launcher = OmegaConf.create({"_target_": cluster.SLURM_TARGETS[0], "partition": "gpu", "account": "lab", "qos": None})
    cluster.check_slurm_reachable(launcher, "slurm")
    assert log.read_text().split() == ["--test-only", "--wrap=true", "--partition=gpu", "--account=lab"]


needs_ray_plugin = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("hydra_plugins.hydra_ray_launcher"), reason="hydra-ray-launcher is not installed"
)


@needs_ray_plugin
def test_a_ray_address_where_no_head_listens_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    # Ray itself retries such an address for minutes; the sweep is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["-m", "dataset=iris", "optimizer.lr=0.1,0.2", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address=127.0.0.1:{port}"]
    lines = _refused(argv, tmp_path, monkeypatch, capsys)
    assert lines == [
        f"Error: hydra.launcher.ray.init.address='127.0.0.1:{port}' is not allowed: the address of a running Ray head: "
        f"Connection refused at 127.0.0.1:{port}; start one with `ray start --head`"
    ]


# ------------------------------------------------------------------ paths past the OS limits
LONG_NAME = "n" * 300
NAME_LIMIT = "a path whose every name is at most 255 bytes (NAME_MAX of the file system at {at}); the name '{name40}...{name30}' has 300"


def _abbreviated(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:40]}...{text[-30:]}"


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir", "output_dir"])
def test_a_directory_name_longer_than_name_max_is_refused_naming_the_key_and_the_limit(key, tmp_path, monkeypatch, capsys):
    value = str(tmp_path / "runs" / LONG_NAME / "r")
    argv = ["-m", "dataset=iris", "seed=1,2"] if key == "hydra.sweep.dir" else ["dataset=iris"]
    if key == "output_dir":
        argv.append(f"hydra.run.dir={tmp_path / 'hydra'}")
    lines = _refused([*argv, f"{key}={value}"], tmp_path, monkeypatch, capsys)
    allowed = NAME_LIMIT.format(at=tmp_path, name40="n" * 40, name30="n" * 30)
    assert lines == [f"Error: {key}={_abbreviated(value)!r} is not allowed: {allowed}"]


def test_a_run_directory_whose_files_would_pass_path_max_is_refused(tmp_path, monkeypatch, capsys):
    # Twenty names of 200 bytes: each within NAME_MAX, the whole past PATH_MAX (4096) once the
    # run's own files are added below it.
    value = str(Path(tmp_path, *["d" * 200] * 20))
    lines = _refused(["dataset=iris", f"hydra.run.dir={value}"], tmp_path, monkeypatch, capsys)
    longest = os.pathconf(tmp_path, "PC_PATH_MAX") - 1 - 160 - 1
    assert lines == [
        f"Error: hydra.run.dir={_abbreviated(value)!r} is not allowed: a path of at most {longest:,} bytes as an absolute path "
        f"(PATH_MAX is 4,096, and a run writes files up to 160 bytes deep below its directory); this one has {len(value):,}"
    ]
    # As many names as still leave room for the run's files: the check lets it through.
    from runner.preflight import check_path_limits

    fitting = Path(tmp_path, *["d" * 200] * ((longest - len(str(tmp_path))) // 201))
    assert longest - 201 < len(str(fitting)) <= longest
    check_path_limits("hydra.run.dir", fitting)


def test_a_sweep_job_whose_directory_name_passes_name_max_is_refused_before_any_job(tmp_path, monkeypatch, capsys):
    hidden = "[" + ",".join(["2"] * 140) + "]"  # the job's directory is named by it: model.hidden=[2,2,...]
    sweep = tmp_path / "sweep"
    lines = _refused(["-m", "dataset=iris", "epochs=1", f"model.hidden={hidden},[2]", f"hydra.sweep.dir={sweep}"], tmp_path, monkeypatch, capsys)
    name = f"model.hidden={hidden}"
    job = str(sweep / name)
    assert lines == [
        "Error: 1 of 2 job directories cannot be used; nothing was started:",
        f"  #0 dataset=iris epochs=1 model.hidden={hidden}: hydra.sweep.subdir={_abbreviated(job)!r} is not allowed: "
        + NAME_LIMIT.format(at=tmp_path, name40=name[:40], name30=name[-30:]).replace("has 300", f"has {len(name)}"),
    ]


@pytest.mark.slow  # a real two-job sweep with its report, in this process
def test_the_room_kept_below_a_directory_covers_every_file_a_sweep_writes(tmp_path, monkeypatch):
    """Every path in a real sweep's tree, with the host name in event files' names as long as a
    host name can be (64), is within DEEPEST_INSIDE of the sweep directory; a job's own files
    within it of the job directory."""
    import socket

    from runner.cli import run_cli
    from runner.preflight import DEEPEST_INSIDE

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    assert run_cli(["-m", "dataset=iris", "epochs=2", "seed=1,2", "optimizer.lr=0.1,0.2", "checkpoint_every=1", f"hydra.sweep.dir={sweep}"]) == 0
    host = socket.gethostname()
    longest = max(len(str(p.relative_to(sweep)).replace(host, "h" * 64)) for p in sweep.rglob("*"))
    assert 100 < longest <= DEEPEST_INSIDE  # the deepest: <config>/seed_aggregate/events.out.tfevents...
