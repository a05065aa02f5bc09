"""Peak memory of batch gradient descent (BGD) with and without micro-batches, by row count.

Claim under test (from the issue): peak memory of BGD on synthetic data from 10^5 to 10^7
rows with a fixed micro-batch stays flat.

Data: ``d = 10`` standard-normal features, ``y = X w + 0.1 noise``, float32, generated
as torch tensors in chunks (so that generating it leaves no temporary behind). Model: the
runner's ``Linear`` (linear regression), loss ``MeanSquaredError``, ``torch.optim.SGD``.

Every measurement runs in a fresh subprocess, so no peak carries over from another one:

1. import torch and the runner, run one small warm-up update of the same kind (so that
   code pages and allocator arenas touched by the first update are not counted);
2. generate the data and note the RSS (``data RSS``);
3. reset the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``);
4. run 2 full-batch updates the way ``runner.train.fit`` does: per update (= per epoch) an
   ``epoch_order`` permutation (``N`` int64), an epoch source, and one step:

   * ``micro``: ``FlatGradients`` + ``accumulating_train_step`` with ``micro_batch_size =
     65536`` on a ``PermutedGather`` source (what ``micro_batch_size=65536`` selects);
   * ``one-shot``: ``train_step`` on a ``PermutedCopy`` source (the default without micro-batches);

5. report ``VmHWM - data RSS`` from ``/proc/self/status``: the working memory above the data.

The ``N int64`` sample order alone is 8 bytes per row (80 MB at 10^7 rows); it is listed in
its own column because it grows with ``N`` whatever the micro-batch.

A third kind of child checks that the micro-batched update equals the one-shot update: same
initial weights, one step each, max |difference| of the weights (float64 up to 10^6 rows,
float32 above).

``--device cuda`` measures the runner itself on a GPU instead: a run built by ``build_run``
(``dataset=linreg dataset.d=10 model=linear loss=mse batch_size=full``, with
``micro_batch_size=65536`` and without), two epochs through ``train_one_epoch`` as ``fit``
runs them; the peak is ``torch.cuda.max_memory_allocated()`` (reset once the data and the model
are on the device) minus what was allocated then, set against the runner's own estimate
(``Run.memory_estimate``, from ``runner/memory.py``). ``--device cpu`` runs the same code with
the estimate only (torch keeps no peak for host memory), to check the script.

Usage::

    .venv/bin/python bench/bgd_memory.py [--max-rows 1000000] [--device cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from machine import code_version, cpu_model, mem_total_gib, python_for_display, version  # bench/machine.py (the script's own folder)

REPO = Path(__file__).resolve().parents[1]
FEATURES = 10
MICRO_BATCH = 65536
UPDATES = 2
LR = 0.1
MB = 2**20


# --------------------------------------------------------------------------- child side
def proc_status_mb() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> bool:
    """Sets VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    status = proc_status_mb()
    return status["VmHWM"] <= status["VmRSS"] + 1


def child(n: int, mode: str, dtype_name: str) -> dict:
    import torch

    from runner.batches import PermutedCopy, PermutedGather
    from runner.losses import MeanSquaredError
    from runner.loop import FlatGradients, accumulating_train_step, epoch_order, train_step
    from runner.models import Linear

    dtype = getattr(torch, dtype_name)
    loss_fn = MeanSquaredError()

    def make_data(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(FEATURES, 1, generator=g, dtype=dtype)
        X = torch.empty(rows, FEATURES, dtype=dtype)
        Y = torch.empty(rows, 1, dtype=dtype)
        for start in range(0, rows, MICRO_BATCH):  # chunks: no N-sized temporaries
            x = X[start : start + MICRO_BATCH]
            x.copy_(torch.randn(x.shape, generator=g, dtype=dtype))
            torch.addmm(0.1 * torch.randn(len(x), 1, generator=g, dtype=dtype), x, w, out=Y[start : start + MICRO_BATCH])
        return X, Y

    def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer, FlatGradients]:
        torch.manual_seed(0)
        model = Linear(in_shape=(FEATURES,), out_features=1).to(dtype)
        grads = FlatGradients(list(model.parameters()))
        return model, torch.optim.SGD(model.parameters(), lr=LR), grads

    def update(step_kind: str, model, optimizer, grads, X, Y, order_gen: torch.Generator, micro: int) -> None:
        """One BGD epoch as fit() runs it: the order, the source, one update over all rows."""
        rows = len(X)
        order = epoch_order(order_gen, rows, True, torch.device("cpu"))
        if step_kind == "micro":
            source = PermutedGather(X, Y, order)
            accumulating_train_step(model, loss_fn, optimizer, grads, source, slice(0, rows), micro)
        else:
            source = PermutedCopy(X, Y, order)
            train_step(model, loss_fn, optimizer, grads, source, slice(0, rows))

    if mode == "equal":
        X, Y = make_data(n, seed=1)

        def one_step(kind: str, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
            model, optimizer, grads = make_model()
            if X.dtype != dtype:
                model.to(X.dtype)
                grads = FlatGradients(list(model.parameters()))
                optimizer = torch.optim.SGD(model.parameters(), lr=LR)
            update(kind, model, optimizer, grads, X, Y, torch.Generator().manual_seed(0), MICRO_BATCH)
            return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

        micro, oneshot = one_step("micro", X, Y), one_step("one-shot", X, Y)
        initial = torch.cat([p.detach().reshape(-1) for p in make_model()[0].parameters()]).double()
        result = {
            "n": n,
            "mode": mode,
            "dtype": dtype_name,
            "max_abs_diff": (micro - oneshot).abs().max().item(),
            "max_abs_step": (oneshot - initial).abs().max().item(),
        }
        if dtype != torch.float64:
            # How far each float32 update is from the same update computed in float64.
            reference = one_step("one-shot", X.double(), Y.double())
            result["micro_vs_f64"] = (micro - reference).abs().max().item()
            result["oneshot_vs_f64"] = (oneshot - reference).abs().max().item()
        return result

    # Warm-up: the same kind of update on a small set (several micro-batches of 1024 rows).
    model, optimizer, grads = make_model()
    Xw, Yw = make_data(4096, seed=2)
    update(mode, model, optimizer, grads, Xw, Yw, torch.Generator().manual_seed(0), 1024)
    del Xw, Yw

    base = proc_status_mb()["VmRSS"]
    X, Y = make_data(n, seed=1)
    data_rss = proc_status_mb()["VmRSS"]
    peak_reset = reset_peak()
    model, optimizer, grads = make_model()
    order_gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(UPDATES):
        update(mode, model, optimizer, grads, X, Y, order_gen, MICRO_BATCH)
    seconds = (time.perf_counter() - t0) / UPDATES
    peak = proc_status_mb()["VmHWM"]
    return {
        "n": n,
        "mode": mode,
        "dtype": dtype_name,
        "data_mb": (X.nbytes + Y.nbytes) / MB,
        "data_rss_mb": data_rss - base,
        "order_mb": n * 8 / MB,
        "working_mb": peak - data_rss,
        "peak_mb": peak,
        "peak_reset": peak_reset,
        "seconds_per_update": seconds,
        "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
    }


# --------------------------------------------------------------------------- the runner on a device
def device_measurement(n: int, micro: int | None, device: str) -> dict:
    """Peak device memory of two BGD epochs of the runner's own run, against its estimate."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import runner.schema  # noqa: F401  (registers the schemas)
    from runner.cli import CONF_DIR
    from runner.loop import epoch_order, train_one_epoch
    from runner.memory import release_device_memory
    from runner.progress import NoProgress
    from runner.train import build_run

    overrides = [
        "dataset=linreg", f"dataset.n={n}", f"dataset.d={FEATURES}", "model=linear", "loss=mse", "batch_size=full",
        f"epochs={UPDATES}", f"optimizer.lr={LR}", f"micro_batch_size={micro if micro else 'null'}", f"device={device}",
        "progress=false", "output_dir=unused",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        run = build_run(compose("config", overrides=overrides))
    cuda = run.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    losses = []
    for _ in range(UPDATES):  # one update per epoch, as fit runs it
        order = epoch_order(run.order_generator, len(run.train), run.cfg.shuffle, run.device)
        source = run.train.source(order, run.bounded_memory)
        losses.append(train_one_epoch(run.step, run.optimizer, run.iteration_scheduler, source, run.slices, NoProgress()).losses)
        del source, order
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / UPDATES
    peak = torch.cuda.max_memory_allocated() - before if cuda else None
    result = {
        "rows": len(run.train),
        "micro": micro,
        "data_mb": (run.train.X.nbytes + run.train.Y.nbytes) / MB,
        "estimate_mb": run.memory_estimate / MB,
        "peak_mb": None if peak is None else peak / MB,
        "seconds_per_update": seconds,
        "finite": bool(torch.isfinite(torch.cat(losses)).all()),
    }
    del run
    release_device_memory()
    return result


def device_table(max_rows: float, device: str, command: str) -> str:
    import torch

    started = time.perf_counter()
    results = [device_measurement(n, micro, device) for n in (10**5, 10**6, 10**7) if n <= max_rows for micro in (None, MICRO_BATCH)]
    gpu = f"{torch.cuda.get_device_name()}, torch CUDA {torch.version.cuda}" if device == "cuda" else "none (CPU: no peak is measured)"
    out = [
        f"## BGD peak memory on {device}: measured against the runner's estimate",
        "",
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; GPU: {gpu}",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}; runner code: {code_version()}",
        f"- Command: `{command}` (total {time.perf_counter() - started:.0f} s)",
        f"- Each row: `build_run` of `dataset=linreg dataset.d={FEATURES} model=linear loss=mse batch_size=full` "
        f"(20 % of the rows held out), {UPDATES} epochs of one update through `train_one_epoch`; peak = "
        "`torch.cuda.max_memory_allocated()` minus the memory allocated once the data and the model were on the "
        "device; estimate = `Run.memory_estimate` (runner/memory.py: activations × 3, parameters × 4, the epoch's "
        "permuted copy of the data unless micro-batched).",
        "",
        "| training rows | micro_batch_size | data MB | runner estimate MB | measured peak MB | peak / estimate | s/update | losses finite |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        peak = "—" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        ratio = "—" if r["peak_mb"] is None else f"{r['peak_mb'] / r['estimate_mb']:.2f}"
        out.append(
            f"| {r['rows']} | {r['micro'] or 'null'} | {r['data_mb']:.1f} | {r['estimate_mb']:.1f} | {peak} | {ratio} | "
            f"{r['seconds_per_update']:.4f} | {r['finite']} |"
        )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- parent side
def run_child(n: int, mode: str, dtype: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), mode, dtype]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-rows", type=float, default=1e7, help="largest row count (default 1e7)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="measure the runner's own run on this device against its estimate")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    parser.add_argument("--child", nargs=3, metavar=("N", "MODE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, mode, dtype = args.child
        print(json.dumps(child(int(n), mode, dtype)))
        return

    import numpy as np
    import torch

    command = " ".join(shlex.quote(a) for a in [python_for_display(), "bench/bgd_memory.py", *sys.argv[1:]])
    if args.device:
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: torch.cuda.is_available() is False here")
        markdown = device_table(args.max_rows, args.device, command)
        print(markdown)
        if args.out:
            args.out.write_text(markdown)
        return
    sizes = [n for n in (10**5, 10**6, 10**7) if n <= args.max_rows]
    started = time.perf_counter()
    rows = []
    for n in sizes:
        print(f"N = {n:.0e} ...", file=sys.stderr, flush=True)
        micro = run_child(n, "micro", "float32")
        oneshot = run_child(n, "one-shot", "float32")
        equal = run_child(n, "equal", "float64" if n <= 10**6 else "float32")
        rows.append((n, micro, oneshot, equal))
    total = time.perf_counter() - started

    resets = all(r[1]["peak_reset"] and r[2]["peak_reset"] for r in rows)
    out = [
        "## BGD peak memory by row count: micro-batches against one-shot full batches",
        "",
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; "
        f"{mem_total_gib():.1f} GiB RAM; torch threads {torch.get_num_threads()} (default)",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"tensorboard {version('tensorboard')}",
        f"- Command: `{command}` (total {total:.0f} s); runner code: {code_version()}",
        f"- Data: {FEATURES} float32 features + 1 float32 target per row (44 bytes), linear regression "
        f"(runner `Linear`, `MeanSquaredError`, SGD lr {LR}), {UPDATES} full-batch updates per measurement, one "
        f"fresh process per measurement. micro = `FlatGradients` + `accumulating_train_step`, micro_batch_size "
        f"{MICRO_BATCH}, `PermutedGather`; one-shot = `train_step` on a `PermutedCopy`. Each update draws its "
        "`epoch_order` (N int64) as `fit` does.",
        "- working memory = peak RSS (VmHWM, reset after the data was created"
        + ("" if resets else " — RESET NOT AVAILABLE, peak includes data generation")
        + ") minus the RSS right after the data was created.",
        "",
        "| rows | data MB | sample order MB (N int64) | micro: working MB above data | micro: working − order MB "
        "| one-shot: working MB above data | micro s/update | one-shot s/update "
        "| micro vs one-shot: max abs weight diff after 1 step | float32 update vs float64 update: micro / one-shot |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for n, micro, oneshot, equal in rows:
        f64 = (
            f"{equal['micro_vs_f64']:.1e} / {equal['oneshot_vs_f64']:.1e}" if "micro_vs_f64" in equal else "(compared in float64)"
        )
        out.append(
            f"| {n:.0e} | {micro['data_mb']:.1f} | {micro['order_mb']:.1f} | {micro['working_mb']:.1f} | "
            f"{micro['working_mb'] - micro['order_mb']:.1f} | {oneshot['working_mb']:.1f} | "
            f"{micro['seconds_per_update']:.3f} | {oneshot['seconds_per_update']:.3f} | "
            f"{equal['max_abs_diff']:.1e} ({equal['dtype']}) | {f64} |"
        )
    out += [
        "",
        f"The weights move by about {rows[0][3]['max_abs_step']:.2f} in that step. s/update is wall time "
        "(informative only; it is not the point of this benchmark).",
    ]
    markdown = "\n".join(out) + "\n"
    print(markdown)
    if args.out:
        args.out.write_text(markdown)


if __name__ == "__main__":
    main()
