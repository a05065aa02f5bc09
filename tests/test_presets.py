"""Every preset in conf/experiment/ and every runner command in the README's code blocks runs,
as a user types it, and shows what it is there to show.

The commands are read from README.md itself (a changed README is what is tested) and run as
real processes from a scratch directory, with a few overrides appended to make them small
(:data:`SHRINK`). The full-size runs are behind the ``slow`` marker.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from runner.aggregate import find_runs
from runner.train import build_run

from conftest import CONF_DIR, REPO, read_scalars

README = REPO / "README.md"
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
BIN = Path(sys.executable).parent
# Appended to a README command to make it small. epochs=1 for most; gd_compare (SGD, three
# seeds) also trains on 20% of digits; the schedulers need more scheduler steps than
# warmup_cosine's 2 warm-up epochs; sample budgets shrink to 2000 samples.
SHRINK = {
    "gd_compare": ("epochs=1", "val_fraction=0.8"),
    "schedulers": ("epochs=3",),
    "lr_batch_scaling": ("budget_amount=2000",),
    # The study's lr grid brackets the best lr, so some of its runs diverge by design: two
    # batch sizes at two lrs that learn, one seed, on iris (tests/test_scaling.py runs the grid).
    "batch_scaling": ("scaling=quick", "batch_size=4,full", "optimizer.lr=0.3,1.0", "seed=0", "budget_amount=100"),
    None: ("epochs=1",),
}
SHRINK_BUDGET = "budget_amount=2000"
QUIET = ("progress=false",)


# --------------------------------------------------------------------------- the README
def readme_blocks(text: str) -> list[list[str]]:
    """The lines of every fenced code block."""
    return [block.splitlines() for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)]


def runner_argv(line: str) -> list[str] | None:
    """The arguments after the program when ``line`` invokes the runner (``.venv/bin/python -m
    runner``, ``hpr``), else None (``make``, ``tensorboard``, ``hpr board``, prose)."""
    try:
        argv = shlex.split(line, comments=True)
    except ValueError:
        return None
    if len(argv) >= 3 and argv[0].endswith("bin/python") and argv[1:3] == ["-m", "runner"]:
        return argv[3:]
    if argv and argv[0] in ("hpr", ".venv/bin/hpr") and argv[1:2] != ["board"]:
        return argv[1:]
    return None


def readme_commands() -> list[list[str]]:
    """Every runner command in a code block, except the ``$``-prompted examples with their output."""
    commands = []
    for block in readme_blocks(README.read_text()):
        for line in block:
            argv = runner_argv(line)
            if argv is not None:
                commands.append(argv)
    return commands


def readme_mynets() -> str:
    """The README's own ``mynets.py`` (the Python block headed by that name)."""
    blocks = re.findall(r"```python\n(# mynets\.py.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "README shows mynets.py once"
    return blocks[0]


def readme_transcripts() -> list[tuple[list[str], str]]:
    """``$ <command>`` lines with the output the README shows below them."""
    transcripts = []
    for block in readme_blocks(README.read_text()):
        for i, line in enumerate(block):
            if line.startswith("$ ") and runner_argv(line[2:]) is not None:
                output = []
                for after in block[i + 1 :]:
                    if after.startswith("$ "):
                        break
                    output.append(after)
                transcripts.append((runner_argv(line[2:]), "\n".join(output).strip()))
    return transcripts


def experiment_of(argv: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("experiment=")), None)


def shrunk(argv: list[str]) -> list[str]:
    extra = list(SHRINK.get(experiment_of(argv), SHRINK[None]))
    if any(a.startswith("budget_amount=") for a in argv):
        extra.append(SHRINK_BUDGET)
    return [*argv, *extra, *QUIET]


def run_cli(argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m runner ...`` from ``cwd`` with this test's interpreter (the project's venv)."""
    env = {**{k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "RUNNER_FAULT_FAIL_JOB")}, **(env or {})}
    return subprocess.run(
        [str(BIN / "python"), "-m", "runner", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def outputs_of(cwd: Path) -> Path:
    """The one run or sweep directory a command wrote under ``cwd/outputs``."""
    found = [p for kind in ("runs", "sweeps") for p in (cwd / "outputs" / kind).glob("*")]
    assert len(found) == 1, found
    return found[0]


def sweep_line(done: subprocess.CompletedProcess) -> str:
    """The sweep's final status line (Hydra logs to stdout), from "Sweep finished:" on."""
    (line,) = [line for line in (done.stdout + done.stderr).splitlines() if "Sweep finished: " in line]
    return line[line.index("Sweep finished: ") :]


def summaries(root: Path) -> dict[str, dict]:
    return {str(run.relative_to(root)): json.loads((run / "summary.json").read_text()) for run in find_runs(root)}


def assert_all_healthy(root: Path) -> dict[str, dict]:
    """Every run is done, with no loss that grew by orders of magnitude."""
    runs = summaries(root)
    assert runs
    for name, summary in runs.items():
        assert summary["status"] == "done", (name, summary.get("divergence") or summary.get("error"))
        # A sample budget that whole batches overshoot is stated, not a sign of bad health.
        health = [w for w in summary["warnings"] if not w.startswith("budget=samples")]
        assert summary["loss_grew"] is False and health == [], (name, summary["warnings"])
        assert summary["train_loss"] < summary["initial_train_loss"], name
    return runs


# --------------------------------------------------------------------------- what each preset shows
def check_gd_compare(root: Path, runs: dict[str, dict]) -> None:
    """Five batch sizes, none blowing up at the preset's lr, all from the same initial loss."""
    assert {s["batch_size"] for s in runs.values()} == {next(iter(runs.values()))["n_train"], 1, 8, 32, 128}
    assert len({s["initial_train_loss"] for s in runs.values() if s["seed"] == 0}) == 1


def check_schedulers(root: Path, runs: dict[str, dict]) -> None:
    """Per-epoch stepping: the lr is constant within an epoch, and changes between epochs for the
    schedules that change it every epoch (step changes only after 10; warmup_cosine is at its
    peak both at the end of the warm-up and at the start of the cosine)."""
    for name, summary in runs.items():
        lrs = [v for _, v in read_scalars(root / name)["lr"]]
        per_epoch = [lrs[i : i + summary["iterations_per_epoch"]] for i in range(0, len(lrs), summary["iterations_per_epoch"])]
        assert all(len(set(epoch)) == 1 for epoch in per_epoch), name
        starts = [epoch[0] for epoch in per_epoch]
        scheduler = re.search(r"scheduler=(\w+)", name).group(1)
        if scheduler == "none":
            assert len(set(starts)) == 1, (name, starts)
        elif scheduler == "step":  # x0.1 after every 10 epochs
            assert starts == pytest.approx([starts[0] * 0.1 ** (epoch // 10) for epoch in range(len(starts))]), starts
        else:
            repeats = sum(a == b for a, b in zip(starts, starts[1:]))
            assert repeats == (1 if scheduler == "warmup_cosine" else 0), (name, starts)
        if scheduler in ("step", "exponential"):
            assert starts[-1] >= 1e-3 * starts[0], (name, starts)  # still learning at the end


def check_lr_search(root: Path, runs: dict[str, dict]) -> None:
    """The report's table lists the trials by increasing lr, whatever their digits."""
    lrs = [float(m) for m in re.findall(r"^\| `optimizer\.lr=([^`,]+)", (root / "report.md").read_text(), flags=re.M)]
    assert len(lrs) == len(runs) > 2
    assert lrs == sorted(lrs)


CHECKS = {"gd_compare": check_gd_compare, "schedulers": check_schedulers, "lr_search": check_lr_search}


# --------------------------------------------------------------------------- tests
def test_every_preset_is_run_by_a_readme_command():
    assert {experiment_of(argv) for argv in readme_commands()} >= set(PRESETS)


def test_readme_parsing_finds_runner_commands_and_skips_others():
    assert runner_argv(".venv/bin/python -m runner -m regime=bgd,sgd  # a sweep") == ["-m", "regime=bgd,sgd"]
    assert runner_argv(".venv/bin/hpr optimizer=adam") == ["optimizer=adam"]
    for other in ("make run", ".venv/bin/tensorboard --logdir outputs", ".venv/bin/hpr board outputs", "then browse"):
        assert runner_argv(other) is None
    assert len(readme_commands()) >= len(PRESETS) + 4


def readme_marks(argv: list[str]) -> Any:
    """The README's commands are whole processes (a quarter of a minute each, its sweeps
    minutes): they run with the slow tests (CI runs those too); its Slurm sweep with the Slurm
    tests (CI starts a one-node cluster for them). Two cluster examples need what only a real
    cluster has, and their own tests cover them."""
    if "-m" not in argv:
        return pytest.mark.slow
    if any(a.startswith("hydra.launcher.partition=") for a in argv):
        return pytest.mark.skip(reason="names a real cluster's partition; tests/test_slurm.py runs the slurm preset on the one-node cluster")
    launcher = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")), None)
    if launcher == "ray_cluster":
        return pytest.mark.skip(reason="joins the Ray head the README starts first; tests/test_ray.py starts one and runs this sweep against it")
    return pytest.mark.slurm if launcher == "slurm" else pytest.mark.slow


@pytest.mark.parametrize("argv", [pytest.param(a, marks=readme_marks(a), id=" ".join(a)) for a in readme_commands()])
def test_readme_command_runs_and_shows_what_it_is_for(argv, tmp_path):
    if any("mynets." in a for a in argv):
        (tmp_path / "mynets.py").write_text(readme_mynets())  # the file the README shows, beside the command
    done = run_cli(shrunk(argv), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    root = outputs_of(tmp_path)
    runs = assert_all_healthy(root)
    if "-m" in argv:
        assert "exit" not in sweep_line(done)
    check = CHECKS.get(experiment_of(argv))
    if check is not None:
        check(root, runs)


@pytest.mark.parametrize("argv,output", readme_transcripts(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_readme_transcript_prints_what_the_readme_shows(argv, output, tmp_path):
    done = run_cli(argv, tmp_path)
    assert done.stderr.strip() == output
    assert done.returncode == (2 if output.startswith("Error:") else 0)


def scheduled_lrs(scheduler: str, *overrides: str) -> list[float]:
    """The lr of every update of ``experiment=schedulers`` at its full length, stepped exactly as
    the runner steps it (iteration and epoch schedulers from :func:`build_run`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["experiment=schedulers", f"scheduler={scheduler}", *overrides, "output_dir=unused"])
    GlobalHydra.instance().clear()
    run = build_run(cfg)
    lrs = []
    for _ in range(cfg.epochs):
        for _ in range(run.iterations_per_epoch):
            lrs.append(run.optimizer.param_groups[0]["lr"])
            run.optimizer.step()  # no gradients: changes nothing, but keeps the order torch expects
            run.iteration_scheduler.step()
        run.epoch_scheduler.step({"loss/train_full": 1.0, "loss/val": 1.0})
    return lrs


@pytest.mark.parametrize("scheduler", ["none", "step", "exponential", "cosine", "warmup_cosine"])
def test_schedulers_preset_keeps_the_lr_in_a_sensible_range_over_its_run(scheduler):
    lrs = scheduled_lrs(scheduler)
    initial = 0.05
    assert len(lrs) == 15 * 45
    assert max(lrs) <= initial * (1 + 1e-12)
    if scheduler in ("step", "exponential"):
        assert lrs[-1] >= 1e-3 * initial  # still learning at the end
        assert lrs[-1] < lrs[0]
    if scheduler == "none":
        assert set(lrs) == {initial}
    else:
        assert len(set(lrs)) > 1
    if scheduler == "warmup_cosine":
        assert lrs[0] < lrs[2 * 45] == pytest.approx(initial)  # warmed up after 2 epochs
    if scheduler == "cosine":
        assert lrs[0] == initial and lrs[-1] < 0.05 * initial  # annealed over the whole run


def test_per_iteration_stepping_at_epoch_parameters_is_what_the_preset_avoids():
    """Why the preset steps per epoch: stepped per iteration, the same step and exponential
    parameters leave the lr below 1e-3 of its start within the run (the issue's 5e-6 at
    iteration 44 and 0 by iteration 674)."""
    for scheduler in ("step", "exponential"):
        lrs = scheduled_lrs(scheduler, "scheduler.interval=iteration")
        assert lrs[-1] < 1e-3 * lrs[0]


# --------------------------------------------------------------------------- full size
def readme_first_sweep() -> list[str]:
    return next(argv for argv in readme_commands() if "-m" in argv and experiment_of(argv) is None and any("regime=" in a for a in argv))


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["-m", "experiment=gd_compare"], ["-m", "experiment=schedulers"], readme_first_sweep()],
    ids=" ".join,
)
def test_full_size_sweep_does_not_blow_up(argv, tmp_path):
    done = run_cli([*argv, *QUIET], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    root = outputs_of(tmp_path)
    runs = assert_all_healthy(root)
    check = CHECKS.get(experiment_of(argv))
    if check is not None:
        check(root, runs)


# --------------------------------------------------------------------------- exit codes
@pytest.mark.slow  # a whole sweep process; CI runs it
def test_sweep_exits_1_when_a_job_fails_and_its_last_line_says_so(tmp_path):
    done = run_cli(["-m", "dataset=iris", "epochs=1", "batch_size=1", "optimizer.lr=0.1,1e6,0.05", *QUIET], tmp_path, {"RUNNER_FAULT_FAIL_JOB": "2"})
    assert done.returncode == 1, done.stderr[-3000:]
    assert sweep_line(done) == "Sweep finished: 3 jobs: 1 done, 1 diverged, 1 failed — exit 1"


@pytest.mark.slow  # a whole sweep process; CI runs it
def test_sweep_exits_0_when_every_job_is_done_or_diverged(tmp_path):
    done = run_cli(["-m", "dataset=iris", "epochs=1", "batch_size=1", "optimizer.lr=0.1,1e6", *QUIET], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sweep_line(done) == "Sweep finished: 2 jobs: 1 done, 1 diverged"


@pytest.mark.slow  # a whole sweep process; CI runs it
def test_a_loss_that_grows_by_orders_of_magnitude_is_flagged_not_silently_done(tmp_path):
    """SGD at lr 0.1 on digits: finite, but thousands of times its initial loss after one epoch."""
    done = run_cli(["-m", "regime=sgd,minibatch", "epochs=1", *QUIET], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    root = outputs_of(tmp_path)
    runs = {s["regime"]: s for s in summaries(root).values()}
    sgd, minibatch = runs["sgd"], runs["minibatch"]
    assert sgd["status"] == "done" and sgd["loss_grew"] is True
    assert sgd["train_loss"] >= 10 * sgd["initial_train_loss"]
    assert sgd["warnings"] and sgd["warnings"][0].startswith("loss grew ")
    assert minibatch["loss_grew"] is False and minibatch["warnings"] == []
    assert math.isclose(sgd["initial_train_loss"], minibatch["initial_train_loss"])  # same initial weights
    assert sweep_line(done) == "Sweep finished: 2 jobs: 2 done (1 of them with a loss that grew by >= 10x; see report.md)"
    report = (root / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| `regime=sgd"))
    assert "| done (loss grew) |" in row and "loss grew " in row
    assert "(1 of them with a loss that grew by orders of magnitude)" in report
