"""A sweep composes each job once and loads each data set once (runner.sweepcache, runner.data.loaded_once)."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner import data as datasets
from runner.sweepcache import ComposeMemo, drop_validated, keep_validated, take_validated


def _master(hydra_overrides: list[str]):
    return OmegaConf.create({"hydra": {"job": {"config_name": "config"}, "overrides": {"hydra": hydra_overrides}}})


def test_each_job_is_composed_once_and_every_caller_gets_its_own_copy():
    calls = []

    def load(master, overrides):
        calls.append(list(overrides))
        return OmegaConf.create({"batch_size": overrides[0].split("=")[1], "hydra": {"job": {"num": 0}}})

    memo = ComposeMemo(load)
    master = _master(["hydra/launcher=fused"])
    first = memo(master, ["batch_size=8"])
    first.hydra.job.num = 5  # as the launcher sets it on its copy
    second = memo(master, ["batch_size=8"])
    assert calls == [["batch_size=8"]]
    assert second.hydra.job.num == 0 and second.batch_size == "8"
    assert second is not first

    memo(master, ["batch_size=16"])
    memo(_master(["hydra/launcher=fused", "hydra.job.config.override_dirname.exclude_keys=[seed]"]), ["batch_size=8"])
    assert calls == [["batch_size=8"], ["batch_size=16"], ["batch_size=8"]]  # other overrides: composed anew


def test_a_composition_that_fails_fails_again_for_the_next_caller():
    calls = []

    def load(master, overrides):
        calls.append(overrides)
        raise ValueError("cannot compose")

    memo = ComposeMemo(load)
    for _ in range(2):
        with pytest.raises(ValueError, match="cannot compose"):
            memo(_master([]), ["optimizer.lr=x"])
    assert len(calls) == 2


def test_a_data_set_is_loaded_once_inside_loaded_once_and_each_caller_gets_its_own_arrays(monkeypatch):
    calls = []
    real = datasets.LOADERS["iris"]

    def counting(cfg):
        calls.append(cfg.name)
        return real(cfg)

    monkeypatch.setitem(datasets.LOADERS, "iris", counting)
    cfg = OmegaConf.create({"name": "iris", "standardize": True})
    outside = datasets.load_dataset(cfg)
    with datasets.loaded_once():
        first = datasets.load_dataset(cfg)
        first.X[0, 0] = 1e6  # a caller that changes its copy
        first.info["classes"].append(99)
        second = datasets.load_dataset(cfg)
    datasets.load_dataset(cfg)
    assert calls == ["iris", "iris", "iris"]  # outside, inside once, outside again
    np.testing.assert_array_equal(second.X, outside.X)
    np.testing.assert_array_equal(second.y, outside.y)
    assert second.info == outside.info and second.n_classes == outside.n_classes == 3


def test_validated_runs_are_handed_out_once_and_carry_the_launchers_config(make_cfg, tmp_path):
    from runner.train import build_run

    cfg = make_cfg("dataset=iris", "epochs=1")
    run = build_run(cfg)
    drop_validated()
    keep_validated(cfg, run)
    launched = cfg.copy()
    launched.output_dir = str(tmp_path / "elsewhere")  # the output directory is not part of the fingerprint
    taken = take_validated(launched)
    assert taken is not None and taken.model is run.model and taken.cfg is launched
    assert take_validated(launched) is None  # once
    other = cfg.copy()
    other.seed = cfg.seed + 1
    keep_validated(cfg, run)
    assert take_validated(other) is None  # another config never gets it
    drop_validated()
