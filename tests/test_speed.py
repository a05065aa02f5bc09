"""The fast paths change no number: the update without nn.Flatten, digits without scikit-learn,
and the choice (and refusal) of ``cuda_graph`` on a machine without a GPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from runner.cudagraph import GraphedStep, check_cuda_graph, make_capturable
from runner.errors import ConfigError
from runner.loop import FlatGradients, dense_trunk, epoch_order, train_step
from runner.build import build_run, step_function

from conftest import REPO


# ------------------------------------------------------------------ the update skips nn.Flatten
@pytest.mark.parametrize("model", ["mlp", "linear"])
def test_the_update_skips_the_flatten_and_gives_the_same_numbers(model, make_cfg):
    cfg = make_cfg("dataset=digits", f"model={model}", "batch_size=8")
    run = build_run(cfg)
    assert run.train.X.shape[1:] == (1, 8, 8)  # the split keeps the images; only batches are flat
    reference = build_run(cfg)  # same seed: same initial weights
    flatten_calls = []
    run.model[0].register_forward_hook(lambda *args: flatten_calls.append(1))

    order = epoch_order(run.order_generator, len(run.train), True, run.device)
    source = run.train.source(order, run.bounded_memory)
    ref_grads = FlatGradients(list(reference.model.parameters()))
    ref_source = type(source)(reference.train.X, reference.train.Y, order)  # 4-D batches, whole model
    for positions in run.slices[:20]:
        x, _ = source.take(positions)
        assert x.dim() == 2
        loss, norm = run.step(source, positions)
        ref_loss, ref_norm = train_step(reference.model, reference.loss_fn, reference.optimizer, ref_grads, ref_source, positions)
        assert torch.equal(loss, ref_loss) and torch.equal(norm, ref_norm)
    assert flatten_calls == []
    for p, q in zip(run.model.parameters(), reference.model.parameters()):
        assert torch.equal(p, q)
    # Evaluation still takes the images through the whole model.
    assert run.model(run.train.X[:3]).shape == (3, 10)


def test_a_cnn_and_memmap_data_keep_the_whole_model(make_cfg, tmp_path):
    assert dense_trunk(build_run(make_cfg("dataset=digits", "model=cnn")).model) is None
    folder = tmp_path / "mm"
    folder.mkdir()
    np.save(folder / "X.npy", np.random.default_rng(0).normal(size=(40, 2, 3)).astype(np.float32))
    np.save(folder / "y.npy", (np.arange(40) % 2).astype(np.int64))
    run = build_run(make_cfg("dataset=memmap", f"dataset.path={folder}", "batch_size=8"))
    assert run.step.args[0] is run.model  # batches come from disk as stored: the Flatten stays


# ------------------------------------------------------------------ digits without scikit-learn
def test_digits_are_the_arrays_scikit_learn_loads():
    from sklearn.datasets import load_digits

    from runner.data import _digits_images

    images, target = _digits_images()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and np.array_equal(images, bunch.images)
    assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)


def test_a_digits_run_imports_neither_scikit_learn_nor_matplotlib(tmp_path):
    # A fresh process, as a user's: what the run needs is imported, nothing else.
    script = textwrap.dedent(
        f"""
        import sys
        from hydra import compose, initialize_config_dir
        import runner.schema
        from runner.cli import CONF_DIR
        from runner.train import train
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=["epochs=1", "progress=false", "device=cpu", "output_dir={tmp_path / 'run'}"])
        summary = train(cfg)
        assert summary["status"] == "done" and summary["dataset"]["name"] == "digits", summary
        print(sorted(m for m in ("sklearn", "scipy", "matplotlib") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ cuda_graph without a GPU
def test_cuda_graph_on_the_cpu_is_refused_in_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "cuda_graph=true", "device=cpu", "epochs=1", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda_graph" in lines[0] and "CUDA device" in lines[0] and "cpu" in lines[0], done.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (("scheduler=cosine",), "scheduler=none"),
        (("scheduler=step",), "scheduler=none"),
        (("micro_batch_size=4",), "micro_batch_size=null"),
        (("noise.every=10",), "noise.every=0"),
        (("trajectory.record=true",), "trajectory.record=false"),
    ],
)
def test_cuda_graph_takes_only_what_a_captured_update_keeps_exact(overrides, words, make_cfg):
    cfg = make_cfg("cuda_graph=true", *overrides)
    with pytest.raises(ConfigError, match=words) as err:
        check_cuda_graph(cfg, torch.device("cuda", 0))
    assert err.value.key == "cuda_graph"
    check_cuda_graph(make_cfg("cuda_graph=true"), torch.device("cuda", 0))  # the default run can be captured
    check_cuda_graph(make_cfg(*overrides), torch.device("cpu"))  # off: nothing to check


def test_optimizers_are_made_capturable_or_refused():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = torch.optim.Adam(params, lr=0.1)
    make_capturable(adam)
    assert all(group["capturable"] for group in adam.param_groups)
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    make_capturable(sgd)  # keeps no state on the host: accepted as it is
    with pytest.raises(ConfigError, match="Adagrad keeps its state on the host"):
        make_capturable(torch.optim.Adagrad(params, lr=0.1))


def test_cuda_graph_chooses_the_graphed_step_around_the_plain_update(make_cfg):
    run = build_run(make_cfg())
    assert not isinstance(run.step, GraphedStep) and run.step.func is train_step
    grads = run.step.args[3]
    # The choice itself needs no GPU (capture happens at the first update, on the device).
    graphed = step_function(make_cfg("cuda_graph=true"), run.model, run.loss_fn, run.optimizer, grads, run.batch_size)
    assert isinstance(graphed, GraphedStep) and graphed.eager.func is train_step and graphed.batch_size == run.batch_size
