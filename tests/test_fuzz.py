"""Property-based fuzzing of the command line: any values for any schema key, any data file.

The invariant, for every example: exit 0 with a complete run (summary.json status done or
diverged, model.pt unless the weights are not finite), or exit 2 with one line on stderr
and nothing written. The keys come from the schema dataclasses, so a new key is fuzzed
without touching this file. Runs go through :func:`runner.cli.run_cli` in this process
(a real process per example would cost seconds of imports).

The default run draws a few dozen examples; ``-m fuzz`` draws 300 (CI runs both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runner.schema as schema
from runner.sweep import SweepCallback

from conftest import CONF_DIR, FUZZ_EXAMPLES

# Tiny options so that an accepted example trains in about a second.
GROUP_OPTIONS = {
    "dataset": ("iris", "linreg", "moons", "blobs", "spirals", "file"),
    "model": ("linear", "mlp", "logistic", "cnn"),
    "loss": ("mse", "sparse_categorical_crossentropy", "hinge", "poisson"),
    "optimizer": ("sgd", "adam", "rmsprop", "lars"),
    "scheduler": ("none", "step", "cosine", "plateau"),
}
SMALL = ("epochs=1", "progress=false", "device=cpu", "dataset.n=60", "eval_batch_size=64")
# Values that are never a valid run length, but must be refused, not allocated or looped over.
HUGE_INTS = (10**15, 2**63, 2**64, -(2**63))
BAD_TEXT = ("abc", "", "1.5", "[1]", "null", "${oops}", "a b", "'x'", "true")

settings.register_profile("runner-default", max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
# -m fuzz: FUZZ_EXAMPLES command lines, each run in this process.
settings.register_profile("fuzz", max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _option_schema(group: str, option: str) -> type:
    """The dataclass an option's YAML extends (``defaults: [/schema_<name>@_here_]``)."""
    text = (CONF_DIR / group / f"{option}.yaml").read_text()
    return schema._SCHEMAS[re.search(r"/schema_(\w+)@_here_", text).group(1)]


def _values(annotation: str) -> st.SearchStrategy[str]:
    """Command-line values for a field: valid, out of range, of the wrong type."""
    base = annotation.removeprefix("Optional[").removesuffix("]")
    ints = st.one_of(st.integers(-2, 6).map(str), st.sampled_from(HUGE_INTS).map(str))
    floats = st.one_of(
        st.floats(-2, 2, allow_nan=False).map(repr), st.sampled_from(("nan", "inf", "-inf", "1e300", "1e-300", "0"))
    )
    by_type = {
        "int": ints,
        "float": floats,
        "bool": st.sampled_from(("true", "false", "maybe", "1")),
        "str": st.sampled_from(("auto", "epoch", "iteration", "none", "linear", "sqrt", "relu", "tanh", "default", "zeros", "samples", "updates", "seconds", "must", "never", "x")),
        "List[int]": st.lists(st.one_of(st.integers(-1, 8), st.sampled_from(HUGE_INTS)), max_size=3).map(lambda v: f"[{','.join(map(str, v))}]"),
        "List[float]": st.lists(st.floats(-1, 2, allow_nan=False), max_size=3).map(lambda v: f"[{','.join(map(repr, v))}]"),
        "Any": st.one_of(ints, st.just("full")),
    }
    strategy = st.one_of(by_type.get(base, st.nothing()), st.sampled_from(BAD_TEXT))
    return st.one_of(strategy, st.just("null")) if annotation.startswith("Optional") else strategy


def _key_values(prefix: str, dataclass: type, skip: tuple[str, ...]) -> list[st.SearchStrategy[str]]:
    return [
        _values(str(f.type)).map(lambda v, k=f"{prefix}{f.name}": f"{k}={v}")
        for f in dataclasses.fields(dataclass)
        if f.name not in skip and not f.name.startswith("_")
    ]


@st.composite
def command_lines(draw) -> tuple[list[str], dict]:
    """Group options, then up to four overrides of keys of the chosen options' schemas."""
    choices = {group: draw(st.sampled_from(options)) for group, options in GROUP_OPTIONS.items()}
    keys = _key_values("", schema.RunConfig, skip=(*GROUP_OPTIONS, "output_dir", "device", "progress"))
    for group, option in choices.items():
        keys += _key_values(f"{group}.", _option_schema(group, option), skip=("path", "root"))
    overrides = draw(st.lists(st.one_of(keys), max_size=4))
    plus = draw(st.sampled_from(("", "+foo=1", "output_dir=", "+model.extra=2", "~scheduler")))
    data = draw(data_files()) if choices["dataset"] == "file" else None
    argv = [f"{group}={option}" for group, option in choices.items()] + [*SMALL, *overrides]
    return [a for a in (*argv, plus) if a], data


@st.composite
def data_files(draw) -> dict:
    """A user's data file: an npz of any shape and dtype (NaN/inf, empty, object), a
    truncated one, a CSV, or something that is not a regular file."""
    kind = draw(st.sampled_from(("npz", "npz", "npz", "truncated", "csv", "directory", "devnull", "empty")))
    n = draw(st.integers(0, 12))
    shape = draw(st.sampled_from(((n, 3), (n,), (n, 1, 2, 2), (n, 0), ())))
    dtype = draw(st.sampled_from(("float64", "float32", "int8", "bool", "complex64", "object", "U2")))
    y_len = draw(st.sampled_from((n, n + 1)))
    y_kind = draw(st.sampled_from(("labels", "floats", "2d")))
    special = draw(st.sampled_from((None, np.nan, np.inf, 1e300)))
    cut = draw(st.floats(0.1, 0.9))
    return {"kind": kind, "shape": shape, "dtype": dtype, "y_len": y_len, "y_kind": y_kind, "special": special, "cut": cut}


def _write_data(root: Path, spec: dict) -> str:
    rng = np.random.default_rng(0)
    kind = spec["kind"]
    if kind == "directory":
        (root / "d.npz").mkdir()
        return str(root / "d.npz")
    if kind == "devnull":
        (root / "null.npz").symlink_to(os.devnull)
        return str(root / "null.npz")
    if kind == "empty":
        (root / "empty.npz").write_bytes(b"")
        return str(root / "empty.npz")
    X = rng.normal(size=spec["shape"]) if spec["shape"] else np.float64(1.0)
    if spec["special"] is not None and X.size:
        X.flat[0] = spec["special"]
    y_len = spec["y_len"]
    y = {"labels": np.arange(y_len) % 2, "floats": rng.normal(size=y_len), "2d": rng.normal(size=(y_len, 2))}[spec["y_kind"]]
    if kind == "csv":
        path = root / "data.csv"
        rows = np.atleast_2d(X.reshape(len(X), int(np.prod(X.shape[1:])))) if X.ndim >= 1 else np.zeros((0, 1))  # (0, 3) too
        lines = ["a,b,c,target"] + [",".join(map(str, row[:3])) + f",{t}" for row, t in zip(rows, np.ravel(y))]
        path.write_text("\n".join(lines) + "\n")
        return str(path)
    with np.errstate(all="ignore"):
        X = X.astype(spec["dtype"]) if spec["dtype"] != "object" else X.astype(object)
    path = root / "data.npz"
    np.savez(path, X=X, y=y)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * spec["cut"])])
    return str(path)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_invariant(argv: list[str], data: dict | None) -> None:
    """Exit 0 and a complete run, or exit 2, one line and nothing written."""
    from runner.cli import run_cli

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if data is not None:
            argv = [*argv, f"dataset.path={_write_data(root, data)}", "dataset.target=target"]
        argv = [*argv, f"hydra.run.dir={root / 'run'}"]
        before, cwd, stderr = _tree(root), os.getcwd(), io.StringIO()
        os.chdir(root)
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                status = run_cli(argv)
        finally:
            os.chdir(cwd)
        text = stderr.getvalue()
        assert status in (0, 2), f"exit {status}: {text}"
        assert "Traceback" not in text, text
        if status == 2:
            assert len(text.splitlines()) == 1 and text.startswith("Error: "), text
            assert _tree(root) == before, f"refused, but wrote {sorted(_tree(root) - before)}"
            return
        out = root / "run"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] in ("done", "diverged"), summary
        assert (out / "model.pt").is_file() or not summary["weights_saved"], summary


@pytest.fixture(autouse=True)
def _no_report(monkeypatch):
    # The report (plots, aggregates) is not what is fuzzed here, and takes seconds per run.
    monkeypatch.setattr(SweepCallback, "_finish", staticmethod(lambda root, plots=True: None))


@settings(settings.get_profile("runner-default"))
@given(command_lines())
def test_any_command_line_runs_or_is_refused_cleanly(example):
    check_invariant(*example)


@pytest.mark.fuzz
@settings(settings.get_profile("fuzz"))
@given(command_lines())
def test_any_command_line_runs_or_is_refused_cleanly_many(example):
    check_invariant(*example)
