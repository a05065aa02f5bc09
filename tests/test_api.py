"""``runner.api``: run, sweep and load from Python, through the command line's own code path."""

from __future__ import annotations

import doctest
import re
import sys

import pytest

from runner import api
from runner.events.read import read_scalar_series

from conftest import REPO
from test_custom_model import write_package


def readme_example() -> str:
    """The notebook-style example of README's "From Python" section."""
    section = README.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


README = (REPO / "README.md").read_text()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A user's working directory with their own package in it (python -m runner's sys.path)."""
    write_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        del sys.modules[name]


@pytest.mark.slow  # three runs and a sweep of four, about 20 s
def test_the_readme_example_prints_what_it_says(in_tmp):
    """Every ``>>>`` line of the example, run as doctest runs a notebook's cells in order."""
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    test = parser.get_doctest(readme_example(), {}, "README From Python", "README.md", 0)
    assert len(test.examples) >= 6
    runner.run(test)
    assert runner.failures == 0, "README's From Python example printed something else (see above)"


def test_run_returns_the_summary_and_writes_where_the_cli_would(in_tmp):
    summary = api.run(["dataset=iris", "epochs=2", "progress=false", "model=custom", "model._target_=mynets.nets.ResidualMLP"])
    assert summary["status"] == "done" and summary["iterations"] == 2 * 4  # ceil(120/32) = 4 per epoch
    run_dir = in_tmp / summary["dir"]
    assert run_dir.parent == in_tmp / "outputs" / "runs" and (run_dir / "summary.json").is_file()
    frame = api.load(run_dir)
    iters = frame[frame.tag == "loss/train_iter"]
    assert list(iters.step) == list(range(8)) and set(iters.axis) == {"iteration"} and set(iters.run) == {"."}
    epochs = frame[frame.tag == "loss/val"]
    assert list(epochs.step) == [0, 1, 2] and set(epochs.axis) == {"epoch"}
    # The same epoch-end loss on the other axes: each step counts what its axis says.
    axes = {tag: set(frame[frame.tag == tag].axis) for tag in ("vs_iteration/loss/val", "vs_samples/loss/val", "vs_time_ms/loss/val")}
    assert axes == {"vs_iteration/loss/val": {"iteration"}, "vs_samples/loss/val": {"samples"}, "vs_time_ms/loss/val": {"time_ms"}}
    assert list(frame[frame.tag == "vs_iteration/loss/val"].step) == [0, 4, 8]
    assert list(frame[frame.tag == "vs_samples/loss/val"].step) == [0, 120, 240]
    assert set(frame.axis) <= {"iteration", "samples", "time_ms", "epoch"}
    assert set(frame["model._target_"]) == {"mynets.nets.ResidualMLP"} and set(frame["dataset.name"]) == {"iris"}
    series = read_scalar_series(run_dir)
    assert list(iters.value) == list(series["loss/train_iter"].values)  # the event file's values, as stored
    assert len(frame) == sum(len(s) for s in series.values())  # one row per point


def test_a_refused_configuration_raises_with_the_cli_s_line_and_writes_nothing(in_tmp, capsys):
    with pytest.raises(api.RunFailed, match=r"^model._target_='os.system' is not allowed: ") as err:
        api.run(["model=custom", "model._target_=os.system"])
    assert err.value.code == 2
    assert capsys.readouterr().err.startswith("Error: model._target_='os.system'")
    assert not (in_tmp / "outputs").exists()


@pytest.mark.slow
def test_a_fused_sweep_of_a_custom_model_equals_one_by_one(in_tmp, capsys):
    """The residual MLP through vmap(functional_call): fused members equal basic-launcher runs."""
    from test_fused import assert_same_results

    common = ["dataset=iris", "epochs=3", "progress=false", "batch_size=8", "model=custom", "model._target_=mynets.nets.ResidualMLP",
              "+model.width=12", "optimizer=adam", "optimizer.lr=0.01,0.03", "seed=0,1"]
    fused = api.sweep([*common, "hydra.sweep.dir=fused"], launcher="fused")
    assert "Fusing 4 jobs into one stacked model (iris, residualmlp, Adam, batch size 8, 3 epochs): #0, #1, #2, #3" in capsys.readouterr().out
    basic = api.sweep([*common, "hydra.sweep.dir=basic"])
    assert_same_results(fused, basic)
    frame = api.load(fused)
    assert sorted(frame.run.unique()) == ["optimizer.lr=0.01/seed=0", "optimizer.lr=0.01/seed=1", "optimizer.lr=0.03/seed=0", "optimizer.lr=0.03/seed=1"]
    assert sorted(frame["optimizer.lr"].unique()) == [0.01, 0.03]


@pytest.mark.slow
def test_a_fused_sweep_across_optimizers_says_the_optimizer_keeps_them_apart(in_tmp, capsys):
    """Members of one stacked model share the optimizer's class: each job runs alone, and says so."""
    api.sweep(["dataset=iris", "epochs=1", "progress=false", "batch_size=full", "model=custom", "model._target_=mynets.nets.ResidualMLP",
               "optimizer=sgd,adam"], launcher="fused")
    out = capsys.readouterr().out
    for idx in (0, 1):
        assert f"#{idx} runs alone: no other job of the sweep has its data set, model, loss, optimizer, batch size and length" in out


def test_load_without_pandas_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError, match=r"^runner.api.load needs pandas: pip install 'hparam-runner\[notebook\]'$"):
        api.load(tmp_path)
