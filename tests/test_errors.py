"""Bad input: a clear error naming the key (or file), the value and what is allowed; nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import OmegaConfBaseException

from runner.errors import ConfigError, DataError
from runner.train import train

from conftest import compose_cfg

RESULT_FILES = ("events.out.tfevents.*", "summary.json", "model.pt")


def _bad_files(tmp_path):
    nan = tmp_path / "nan.npz"
    np.savez(nan, X=np.array([[1.0], [np.nan], [2.0]]), y=np.array([0, 1, 0]))
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, X=np.zeros((4, 2)), y=np.zeros(3))
    text = tmp_path / "strings.csv"
    text.write_text("a,b,label\n1,2,0\n3,oops,1\n")
    no_target = tmp_path / "ok.csv"
    no_target.write_text("a,b,label\n1,2,0\n3,4,1\n")
    (tmp_path / "empty_root").mkdir()
    bad_idx = tmp_path / "bad_idx"
    bad_idx.mkdir()
    (bad_idx / "train-images-idx3-ubyte").write_bytes(b"<html>not an idx file</html>")
    (bad_idx / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02\x00\x01")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("a,b,label\n")
    return {"bad_idx": bad_idx, "header_only": header_only,"nan": nan, "mismatch": mismatch, "strings": text, "ok_csv": no_target, "empty_root": tmp_path / "empty_root"}


# (overrides, the key or file the message must name, a value it must show, error type)
BAD_CONFIGS = [
    (["batch_size=0"], "batch_size", "0", ConfigError),
    (["batch_size=-3"], "batch_size", "-3", ConfigError),
    (["batch_size=half"], "batch_size", "half", ConfigError),
    (["dataset=iris", "batch_size=121"], "batch_size", "121", ConfigError),  # 120 training samples
    (["epochs=0"], "epochs", "0", ConfigError),
    (["optimizer.lr=-0.1"], "optimizer.lr", "-0.1", ConfigError),
    (["optimizer.lr=nan"], "optimizer.lr", "nan", ConfigError),
    (["optimizer.lr=inf"], "optimizer.lr", "inf", ConfigError),
    (["optimizer.momentum=1.5"], "optimizer.momentum", "1.5", ConfigError),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas", "0.9", ConfigError),
    (["optimizer.nesterov=true"], "optimizer.nesterov", "True", ConfigError),
    (["optimizer._target_=os.system"], "optimizer._target_", "os.system", ConfigError),
    (["model._target_=shutil.rmtree"], "model._target_", "shutil.rmtree", ConfigError),
    (["val_fraction=1.0"], "val_fraction", "1.0", ConfigError),
    (["val_fraction=-0.1"], "val_fraction", "-0.1", ConfigError),
    (["device=tpu"], "device", "tpu", ConfigError),
    (["log_every=0"], "log_every", "0", ConfigError),
    (["progress=maybe"], "progress", "maybe", ConfigError),
    (["dataset=diabetes", "loss=categorical_crossentropy"], "loss", "CategoricalCrossentropy", ConfigError),
    (["dataset=diabetes", "loss=hinge"], "loss", "Hinge", ConfigError),
    (["dataset=iris", "model=cnn"], "model", "cnn", ConfigError),
    (["dataset=linreg", "model=logistic", "loss=mse"], "model", "logistic", ConfigError),
    (["dataset=iris", "loss=mape"], "loss", "MeanAbsolutePercentageError", ConfigError),
    (["scheduler=plateau", "scheduler.interval=iteration"], "scheduler.interval", "iteration", ConfigError),
    (["scheduler.interval=batch"], "scheduler.interval", "batch", ConfigError),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size", "0", ConfigError),
    (["scheduler=warmup_cosine", "scheduler.warmup_steps=5", "epochs=2"], "scheduler.warmup_steps", "5", ConfigError),
    (["model.activation=swish"], "model.activation", "swish", ConfigError),
    (["model.hidden=[64,0]"], "model.hidden", "0", ConfigError),
    (["dataset=linreg", "dataset.n=1", "loss=mse"], "dataset.n", "1", ConfigError),
    (["dataset=blobs", "dataset.centers=1"], "dataset.centers", "1", ConfigError),
    (["loss=categorical_crossentropy", "loss.label_smoothing=1.5"], "loss.label_smoothing", "1.5", ConfigError),
    (["dataset=mnist", "model=cnn", "model.channels=[8,8,8,8,8]", "dataset.root={empty_root}"], "empty_root", "train-images", DataError),
    (["dataset=file", "dataset.path={tmp}/missing.npz"], "missing.npz", "not", DataError),
    (["dataset=file", "dataset.path={tmp}/data.txt"], "dataset.path", "data.txt", ConfigError),
    (["dataset=file", "dataset.path={nan}"], "nan.npz", "finite", DataError),
    (["dataset=file", "dataset.path={mismatch}"], "mismatch.npz", "4", DataError),
    (["dataset=file", "dataset.path={strings}", "dataset.target=label"], "strings.csv", "oops", DataError),
    (["dataset=file", "dataset.path={ok_csv}"], "dataset.target", "label", ConfigError),
    (["dataset=mnist", "dataset.root={bad_idx}"], "train-images-idx3-ubyte", "magic", DataError),
    (["dataset=file", "dataset.path={header_only}", "dataset.target=label"], "header_only.csv", "no data", DataError),
    (["grad_clip=0"], "grad_clip", "0", ConfigError),
    (["early_stopping_patience=0"], "early_stopping_patience", "0", ConfigError),
    (["micro_batch_size=0"], "micro_batch_size", "0", ConfigError),
    (["checkpoint_every=-1"], "checkpoint_every", "-1", ConfigError),
    (["resume=maybe"], "resume", "maybe", ConfigError),
    (["budget=flops"], "budget", "flops", ConfigError),
    (["budget=samples"], "budget_amount", "None", ConfigError),
    (["lr_scaling=cubic"], "lr_scaling", "cubic", ConfigError),
    (["dataset=file", "dataset.path={ok_csv}", "dataset.target=nope"], "dataset.target", "nope", ConfigError),
]
if not torch.cuda.is_available():
    BAD_CONFIGS.append((["device=cuda"], "device", "cuda", ConfigError))


@pytest.mark.parametrize("overrides,key,value,error", BAD_CONFIGS, ids=[" ".join(c[0]) for c in BAD_CONFIGS])
def test_bad_config_is_refused_before_anything_is_written(overrides, key, value, error, tmp_path):
    files = _bad_files(tmp_path)
    overrides = [o.format(tmp=tmp_path, **files) for o in overrides]
    out = tmp_path / "run"
    with pytest.raises(error) as info:
        train(compose_cfg(overrides, out))
    message = str(info.value)
    assert key in message and value in message, message
    assert not any(list(out.glob(name)) for name in RESULT_FILES)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["batch_sizee=3"], "batch_sizee"),  # unknown top-level key
        (["optimizer.lrr=0.1"], "lrr"),  # unknown key inside an option
        (["epochs=abc"], "abc"),  # wrong type
        (["shuffle=maybe"], "maybe"),
        (["optimizer=adamm"], "adamm"),  # unknown option of a group
        (["dataset=imagenet"], "imagenet"),
    ],
)
def test_hydra_refuses_unknown_keys_options_and_types(overrides, fragment):
    with pytest.raises((ConfigCompositionException, HydraException, OmegaConfBaseException)) as info:
        compose_cfg(overrides)
    assert fragment in str(info.value)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["batch_size=0"], "batch_size=0 is not allowed: an integer >= 1, or 'full'"),
        (["optimizer=adamm"], "Could not find 'optimizer/adamm'"),
        (["optimizer._target_=os.system"], "optimizer._target_='os.system' is not allowed"),
        (["experiment=../regime/sgd"], "experiment='../regime/sgd' is not allowed"),
    ],
)
def test_cli_error_is_one_clear_message_with_nonzero_exit(args, expected, tmp_path):
    result = _cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not any(list((tmp_path / "run").glob(name)) for name in RESULT_FILES)
