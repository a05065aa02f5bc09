"""What a run does around its updates, counted rather than timed (the seconds are in
``bench/startup.py`` and docs/benchmarks.md section 6): how often the config is composed,
that a single run's report draws no figure unless asked (nor loads matplotlib), and that
``--help`` lists exactly what Hydra lists, from one copy of its config repository."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.config_repository import CachingConfigRepository

from runner import compose_cache
from runner.cli import run_cli

from conftest import run_in_process

RUN = ["dataset=iris", "epochs=1", "progress=false"]


@pytest.fixture
def compositions(monkeypatch) -> list[tuple]:
    """Every composition Hydra really makes (a kept one answered from memory is not one)."""
    made: list[tuple] = []
    compose = ConfigLoaderImpl._load_configuration_impl

    def counted(self, config_name, overrides, run_mode, *args, **kwargs):
        made.append((tuple(overrides), run_mode.name))
        return compose(self, config_name, overrides, run_mode, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "_load_configuration_impl", counted)
    return made


def test_a_single_run_composes_its_config_once(compositions, tmp_path):
    """The run's composition, once: the checks before Hydra runs make it, Hydra's own is answered
    from it, and Hydra's mode detection (a composition in multirun mode) is answered without one,
    since nothing in ``conf/`` sets ``hydra.mode`` (below)."""
    result = run_in_process([*RUN, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert [mode for _, mode in compositions] == ["RUN"]
    assert compositions[0][0][-1] == "hydra.mode=RUN"  # what Hydra itself adds, so the checked config is the run one
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 4  # ceil(120 / 32), 1 epoch


def test_a_sweep_composes_the_master_config_once_and_each_job_once(compositions, tmp_path):
    result = run_in_process(["-m", *RUN, "batch_size=8,16", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    masters = [c for c in compositions if "batch_size=8,16" in c[0]]
    jobs = sorted(c[0] for c in compositions if "batch_size=8,16" not in c[0])
    assert [mode for _, mode in masters] == ["MULTIRUN"] and masters[0][0][-1] == "hydra.mode=MULTIRUN"
    assert len(jobs) == 2 and any("batch_size=8" in j for j in jobs[0] + jobs[1])


@pytest.mark.parametrize("overrides", [
    ["hydra.mode=MULTIRUN", "batch_size=8,16"],  # Hydra's own way to make a run a sweep without -m
    ["hydra/launcher=basic"],  # a group of Hydra's config, whose options could set it
])
def test_where_the_command_line_can_set_the_mode_hydra_detects_it(compositions, tmp_path, overrides):
    result = run_in_process([*RUN, *overrides, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert compositions[0][1] == "MULTIRUN" and "hydra.mode=" not in compositions[0][0][-1]  # the detection
    swept = "hydra.mode=MULTIRUN" in overrides
    assert (tmp_path / "sweep" / "multirun.yaml").exists() == swept
    assert (tmp_path / "run" / "summary.json").exists() == (not swept)


def test_no_config_in_conf_sets_hydras_mode():
    """What lets a run skip Hydra's mode detection: only a ``_global_`` file could set
    ``hydra.mode`` (the others are packaged in their group), and none does."""
    from omegaconf import OmegaConf

    from runner.cli import CONF_DIR

    global_files = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        header = [line for line in path.read_text().splitlines() if line.startswith("# @package")]
        assert header in ([], ["# @package _global_"]), (path, header)
        if header:
            global_files.append(path.relative_to(CONF_DIR).as_posix())
            assert OmegaConf.select(OmegaConf.load(path), "hydra.mode") is None, path
    assert "experiment/batch_scaling.yaml" in global_files and "regime/sgd.yaml" in global_files


def test_a_kept_composition_is_a_copy_the_caller_may_change(tmp_path):
    """The checks mutate what they compose; Hydra must still get the composition as made."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.types import RunMode

    from runner.cli import CONF_DIR

    app = Hydra.create_main_hydra2("t", create_automatic_config_search_path(None, "runner.__main__", str(CONF_DIR)))
    try:
        with compose_cache.recording():
            first = app.compose_config("config", ["epochs=3"], run_mode=RunMode.RUN)
        first.epochs = 99
        with compose_cache.replaying():
            again = app.compose_config("config", ["epochs=3"], run_mode=RunMode.RUN)
            other = app.compose_config("config", ["epochs=4"], run_mode=RunMode.RUN)
        assert again.epochs == 3 and again is not first and other.epochs == 4
    finally:
        compose_cache.forget()
        GlobalHydra.instance().clear()


def test_a_single_runs_report_has_no_figures_unless_asked(tmp_path):
    plain, drawn = tmp_path / "plain", tmp_path / "drawn"
    assert run_in_process([*RUN, f"hydra.run.dir={plain}"], tmp_path).returncode == 0
    assert run_in_process([*RUN, "single_run_plots=true", f"hydra.run.dir={drawn}"], tmp_path).returncode == 0
    text = (plain / "report.md").read_text()
    assert not (plain / "report").exists() and "![" not in text
    assert f"-m runner.report {plain.resolve()}`" in text and "single_run_plots=true" in text and "board" in text
    assert {p.stem for p in (drawn / "report").glob("*.png")} == {"loss_vs_iteration", "train_vs_val_loss", "val_acc_vs_epoch"}
    assert "![" in (drawn / "report.md").read_text()


def test_a_single_run_never_loads_matplotlib(tmp_path):
    """A fresh process, so nothing else has imported it: a report without figures does not need it."""
    code = (
        "import sys\nfrom runner.cli import run_cli\n"
        f"code = run_cli({[*RUN, 'hydra.run.dir=' + str(tmp_path / 'run')]!r})\n"
        "print(code, any(m == 'matplotlib' or m.startswith('matplotlib.') for m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.stdout.split()[-2:] == ["0", "False"], result.stderr[-2000:]
    assert (tmp_path / "run" / "report.md").is_file()


def test_help_lists_exactly_what_hydra_lists_from_one_repository_copy(monkeypatch):
    def help_text() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert run_cli(["--help"]) == 0
        return out.getvalue()

    copies = []
    init = CachingConfigRepository.__init__
    monkeypatch.setattr(CachingConfigRepository, "__init__", lambda self, d: (copies.append(1), init(self, d))[1])
    listed = help_text()
    copies_listed = len(copies)
    copies.clear()
    with monkeypatch.context() as m:  # Hydra's own listing: a repository copy per group listed
        m.setattr(compose_cache, "listing", contextlib.nullcontext)
        hydra_own = help_text()
    assert listed == hydra_own and "optimizer:" in listed
    assert copies_listed <= 3 < 50 < len(copies)
