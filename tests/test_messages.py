"""What the program prints: counts, its own name in --help, the run's header and
standardisation lines, and log lines around the progress bar on a real terminal."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.text import duration, plural, program_name
from runner.train import train

from conftest import compose_cfg

PYTHON = sys.executable
# The console script installed next to this interpreter (pip install -e .[test]).
HPR = str(Path(sys.executable).with_name("hpr"))


# ------------------------------------------------------------------------- plural
@pytest.mark.parametrize(
    ("count", "noun", "expected"),
    [
        (1, "epoch", "1 epoch"),
        (2, "epoch", "2 epochs"),
        (0, "iteration", "0 iterations"),
        (1, "job", "1 job"),
        (45, "iteration", "45 iterations"),
        (1.0, "second", "1 second"),
        (1.5, "second", "1.5 seconds"),
        (300.0, "sample", "300 samples"),
    ],
)
def test_plural(count, noun, expected):
    assert plural(count, noun) == expected


def test_plural_irregular_form():
    assert plural(1, "batch", "batches") == "1 batch"
    assert plural(3, "batch", "batches") == "3 batches"



@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.00123, "1.2 ms"), (0.0004, "0.4 ms"), (0.0099, "9.9 ms"), (0.01, "10 ms"), (0.3456, "346 ms"), (0.9994, "999 ms"), (0.9996, "1.00 s"), (1.0, "1.00 s"), (12.345, "12.35 s")],
)
def test_durations_read_in_milliseconds_below_a_second(seconds, expected):
    assert duration(seconds) == expected


def test_the_epoch_line_gives_the_evaluation_time_in_a_readable_unit(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="runner.epochs")
    train(compose_cfg(["dataset=iris", "epochs=2"], tmp_path / "run"))
    epoch_lines = [r.getMessage() for r in caplog.records if r.name == "runner.epochs" and r.getMessage().startswith("epoch 1 ")]
    assert len(epoch_lines) == 1
    assert re.search(r"  \(eval \d+(\.\d+)? (ms|s)\)$", epoch_lines[0]), epoch_lines[0]

def test_counts_of_one_are_singular_in_messages(tmp_path, caplog):
    """The helper is used where the program prints counts: a few that can be 1."""
    import torch

    from runner.data.files import load_npz
    from runner.errors import ConfigError, DataError
    from runner.schedulers import warmup_cosine
    from runner import outcomes
    from runner.sweep import sweep_outcome

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ConfigError, match=r"\(the run has 1 scheduler step\)"):
        warmup_cosine(optimizer, total_steps=1, warmup_steps=1, eta_min=0.0)
    np.savez(tmp_path / "d.npz", X=np.ones((1, 2)), y=np.ones(2))
    with pytest.raises(DataError, match="X has 1 sample but y has 2"):
        load_npz(tmp_path / "d.npz")
    (tmp_path / "sweep" / "a").mkdir(parents=True)
    (tmp_path / "sweep" / "a" / "summary.json").write_text('{"status": "done"}')
    outcomes.start(tmp_path / "sweep", expected=1)
    outcomes.record(tmp_path / "sweep", 0, tmp_path / "sweep" / "a", "done")
    assert sweep_outcome(tmp_path / "sweep") == ("1 job: 1 done", 0)
    # lr 0: the loss cannot improve after the first epoch, so patience 1 stops at epoch 2.
    caplog.set_level(logging.INFO, logger="runner.epochs")
    train(compose_cfg(["dataset=iris", "optimizer.lr=0", "early_stopping_patience=1", "epochs=5"], tmp_path / "run"))
    assert any(r.getMessage().startswith("Early stop: no improvement for 1 epoch (") for r in caplog.records)


# --------------------------------------------------------------------- program name
@pytest.mark.parametrize(
    ("argv0", "expected"),
    [
        ("/x/site-packages/runner/__main__.py", "python -m runner"),
        ("/x/.venv/bin/hpr", "hpr"),
        ("hpr", "hpr"),
        (r"C:\env\Scripts\hpr.exe".replace("\\", "/"), "hpr"),
    ],
)
def test_program_name(argv0, expected):
    assert program_name(argv0) == expected


def _help(command: list[str], cwd: Path) -> str:
    done = subprocess.run([*command, "--help"], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("command", "name"), [([PYTHON, "-m", "runner"], "python -m runner"), ([HPR], "hpr")])
def test_help_names_the_command_as_typed(command, name, tmp_path):
    text = _help(command, tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith(f"{name}: train one model"), lines[0]
    usage = [line for line in lines if "[GROUP=OPTION ...]" in line]
    assert usage == [f"Usage:  {name} [GROUP=OPTION ...] [KEY=VALUE ...]"]
    assert f"        {name} -m regime=bgd,sgd,minibatch" in text
    other = "hpr" if name == "python -m runner" else "python -m runner"
    assert not any(line.startswith(other) or f"Usage:  {other}" in line for line in lines[:5])
    assert "runner.program" not in text


# --------------------------------------------------------------- header, standardisation
def _train_logged(caplog, tmp_path: Path, *overrides: str) -> tuple[dict, list[str]]:
    caplog.set_level(logging.INFO, logger="runner.train")
    summary = train(compose_cfg(overrides, tmp_path / "run"))
    return summary, [r.getMessage() for r in caplog.records if r.name == "runner.train"]


@pytest.fixture
def torch_threads():
    """Sets torch's CPU thread count for one test; the worker's own count is restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_header_names_regime_optimizer_and_counts(caplog, tmp_path, torch_threads):
    torch_threads(3)
    _, lines = _train_logged(caplog, tmp_path, "dataset=iris", "optimizer=adam", "regime=sgd", "epochs=1")
    assert lines[0] == (
        "Training iris (120 train / 30 val samples) on cpu (3 threads): mlp, sparse_categorical_crossentropy, Adam lr 0.001, "
        "stochastic gradient descent (batch size 1, 120 iterations per epoch), 1 epoch"
    )


def test_header_of_a_full_batch_run(caplog, tmp_path, torch_threads):
    torch_threads(1)
    _, lines = _train_logged(
        caplog, tmp_path, "dataset=iris", "regime=bgd", "epochs=2", "val_fraction=0", "optimizer=momentum", "scheduler=cosine"
    )
    assert lines[0] == (
        "Training iris (150 train / no validation) on cpu (1 thread): mlp, sparse_categorical_crossentropy, "
        "SGD momentum 0.9 lr 0.1 (cosine schedule, stepped per epoch), "
        "batch gradient descent (batch size 150, 1 iteration per epoch), 2 epochs"
    )


def test_standardisation_is_logged_and_recorded(caplog, tmp_path):
    summary, lines = _train_logged(caplog, tmp_path, "dataset=diabetes", "loss=mse")
    assert lines[1].startswith(
        "Standardised with statistics of the 354 training samples only: 10 features, each with its own mean and std; the target (mean "
    )
    mean, std = summary["dataset"]["target_mean"][0], summary["dataset"]["target_std"][0]
    assert f"(mean {mean:.4g}, std {std:.4g})." in lines[1]
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["standardized"] == {"features": True, "target": True}


def test_users_file_standardisation_is_stated(caplog, tmp_path):
    """A user's own file: features standardised by default (said so), target left alone."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.csv"
    X = rng.normal(size=(50, 3))
    rows = [f"{a:.5f},{b:.5f},{c:.5f},{a + 2 * b + 0.5:.5f}" for a, b, c in X]
    path.write_text("a,b,c,y\n" + "\n".join(rows) + "\n")
    summary, lines = _train_logged(
        caplog, tmp_path, "dataset=file", f"dataset.path={path}", "dataset.target=y", "loss=mse", "model=linear"
    )
    assert lines[1] == (
        "Standardised with statistics of the 40 training samples only: 3 features, each with its own mean and std. "
        "Not standardised: the target (dataset.standardize_target=false)."
    )
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["standardized"] == {"features": True, "target": False}


def test_nothing_standardised_is_stated(caplog, tmp_path):
    _, lines = _train_logged(caplog, tmp_path, "dataset=iris", "dataset.standardize=false")
    assert lines[1] == "Not standardised: the 4 features (dataset.standardize=false)."
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    # Class labels are never scaled, whatever dataset.standardize_target says.
    assert written["standardized"] == {"features": False, "target": False}


# --------------------------------------------------------------- progress bar and logs
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def render(stream: str) -> list[str]:
    """The lines a terminal shows for ``stream``: ``\\r`` returns to column 0 and later
    characters overwrite earlier ones, as they do on screen."""
    lines: list[list[str]] = [[]]
    col = 0
    for ch in ANSI.sub("", stream):
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    return ["".join(line).rstrip() for line in lines]


def run_in_terminal(command: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on a 200-column pseudo-terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(command, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_log_lines_do_not_land_on_the_progress_bar(tmp_path):
    rc, stream = run_in_terminal(
        [PYTHON, "-m", "runner", "dataset=iris", "epochs=3", "progress=true", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert rc == 0, stream
    screen = render(stream)
    epoch_lines = [line for line in screen if "[runner.epochs][INFO] - epoch " in line]
    # Each epoch's line (epoch 0: the initial weights) is logged while the bar is on screen.
    assert len(epoch_lines) == 4, screen
    for line in epoch_lines:
        assert line.startswith("[") and "%|" not in line and "it/s" not in line, line
    bars = [line for line in screen if "%|" in line]
    assert bars and bars[-1].startswith("epoch 3/3: 100%|"), screen
    # Only the console handler is rerouted: Hydra's log file still gets every line.
    (log_file,) = (tmp_path / "run").glob("*.log")
    assert log_file.read_text().count("[runner.epochs][INFO] - epoch ") == 4


# ------------------------------------------------------------------ refusals that help (issue 19)
# (argv, the whole Error line): the key, the value, what is allowed, the nearest spellings.
HELPFUL_REFUSALS = [
    (
        ["optimizer=adma"],
        "optimizer='adma' is not allowed: one of adagrad, adam, adamw, lars, momentum, nesterov, rmsprop, sgd "
        "(conf/optimizer/*.yaml); did you mean optimizer=adam or optimizer=adamw?",
    ),
    (
        ["dataset=diabetes"],
        "loss='sparse_categorical_crossentropy' is not allowed: dataset 'diabetes' has a regression target, so choose "
        "a regression loss: loss=<one of mse, mae, mape, msle, cosine_similarity, poisson, huber, log_cosh>",
    ),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed: a number, e.g. 0.01 or 1e-3"),
    (["epochs=many"], "epochs='many' is not allowed: a whole number"),
    (["optimizer.learning_rate=1"], "optimizer.learning_rate='1' is not allowed: a key of the schema: did you mean lr? (python -m runner --help lists every key)"),
    # A key of another option of the group: that option named, with the override to type.
    (
        ["optimizer.betas=[0.9,0.99]"],
        "optimizer.betas='[0.9,0.99]' is not allowed: a key of the optimizer chosen (dampening, lr, momentum, nesterov, "
        "weight_decay); betas is a key of optimizer=adam or adamw: choose one, e.g. optimizer=adam optimizer.betas=[0.9,0.99]",
    ),
    (
        ["+optimizer.betas=[0.9,0.99]"],  # + adds the key: refused after composing, the same way
        "optimizer.betas=[0.9, 0.99] is not allowed: a key of the optimizer chosen (dampening, lr, momentum, nesterov, "
        "weight_decay); betas is a key of optimizer=adam or adamw: choose one, e.g. optimizer=adam optimizer.betas=[0.9,0.99]",
    ),
    (
        ["optimizer=adam", "optimizer.momentum=0.9"],
        "optimizer.momentum='0.9' is not allowed: a key of the optimizer chosen (amsgrad, betas, eps, lr, weight_decay); "
        "momentum is a key of optimizer=lars, momentum, nesterov, rmsprop or sgd: choose one, e.g. optimizer=momentum optimizer.momentum=0.9",
    ),
    (
        ["scheduler=cosine", "scheduler.gamma=0.5"],
        "scheduler.gamma='0.5' is not allowed: a key of the scheduler chosen (eta_min, interval); gamma is a key of "
        "scheduler=exponential or step: choose one, e.g. scheduler=exponential scheduler.gamma=0.5",
    ),
    (["optimizer.lr=a;b"], "the override 'optimizer.lr=a;b' cannot be parsed: quote it like this: 'optimizer.lr=\"a;b\"'"),
    (["dataset=file", "dataset.path=x&y(1).csv"], "the override 'dataset.path=x&y(1).csv' cannot be parsed: quote it like this: 'dataset.path=\"x&y(1).csv\"'"),
    (["optimizer.lr=a\udcffb"], "the override 'optimizer.lr=a\\udcffb' cannot be parsed: it is not UTF-8 text; values and keys must be UTF-8"),
]


@pytest.mark.parametrize("argv,line", HELPFUL_REFUSALS, ids=[a[0][0].encode("ascii", "backslashreplace").decode() for a in HELPFUL_REFUSALS])
def test_a_refusal_names_key_value_what_is_allowed_and_the_nearest(argv, line, tmp_path, monkeypatch, capsys):
    from runner.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    assert run_cli([*argv, "progress=false", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"Error: {line}"]
    assert list(tmp_path.iterdir()) == []


def test_a_missing_data_file_names_dataset_path(tmp_path, monkeypatch, capsys):
    from runner.cli import run_cli

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run_cli(["dataset=file", "dataset.path=nope.csv", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("Error: dataset.path='nope.csv' is not allowed: an existing .npz or .csv file (there is no such file;")
    assert str(tmp_path) in line


def test_a_number_too_long_to_read_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    from runner.cli import run_cli

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run_cli(["seed=" + "9" * 50_000, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "Error: seed='999999999999... (50000 digits)' is not allowed: a number of at most 4300 digits "
        "(every key that takes a number has a far smaller range)"
    ]
    assert list(tmp_path.iterdir()) == []
