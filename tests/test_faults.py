"""Faults that used to end in a traceback or exit 0 (issue 19): each is one line, exit 2, nothing written."""

from __future__ import annotations

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
