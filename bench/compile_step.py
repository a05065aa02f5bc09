"""``torch.compile`` and ``torch.func`` against the eager update: one run's step and the fused step (issue 21, item 2).

Setting: digits (1438 training samples of 64 features, 10 classes, the default split), the default
model (MLP 64-128-10, ReLU), sparse categorical cross-entropy, SGD at the default lr 0.1, CPU, one
torch thread (``OMP_NUM_THREADS=1``: the machine is shared). Only full batches are fed (the epoch's
last, shorter batch would be a second shape to compile, see below).

One run's update, at each batch size (``--batches``):

* ``eager``: the runner's own step, ``run.step`` from ``build_run`` (``runner.loop.train_step``:
  zero the flat gradient buffer, forward, loss, backward, gradient norm, ``optimizer.step``);
* ``compile forward [mode]``: the same step with the model's forward ``torch.compile``\\ d (inductor);
* ``compile step [mode]``: the whole update (all of the above, optimizer step included) as one
  compiled function of ``(x, y)``; ``backward`` splits it into graphs (dynamo's graph break);
* ``compile optimizer.step``: eager forward/backward, compiled ``optimizer.step``. Both call the
  optimizer class's own ``step``: the runner's scheduler wraps ``optimizer.step`` in a call counter
  that dynamo never traces (see :func:`unwrapped_step`);
* ``torch.func``: ``grad_and_value`` of a ``functional_call`` loss, the gradient norm, and SGD by
  hand (``p.add_(g, alpha=-lr)``, torch's own SGD formula), eager and compiled;
* ``torch.func grad compiled + the runner's optimizer.step``: the same gradients, compiled, copied
  into the runner's flat gradient buffer, then the runner's own (eager) optimizer step, which works
  for every optimizer; and the same with the optimizer's step inside the compiled function.

The fused update of K members (``--ks``) at each batch size:

* ``closed form``: :class:`runner.launchers.stacked_grad.ClosedFormStep`, what a fused group runs
  for these models, eager and compiled (the stacked optimizer's step left eager: it counts steps
  in a Python int, so traced it recompiles at every update until dynamo's recompile limit);
* ``autograd``: :class:`runner.launchers.stacked.FusedStep`, eager and compiled (likewise);
* ``torch.func vmap``: ``vmap(grad_and_value(functional_call loss))`` over the stacked parameters
  and SGD by hand, eager and compiled.

Each variant is built fresh from the same initial weights and fed the same batches. Its first
call is timed (``compile s``: tracing, inductor's C++ code generation and gcc, in a fresh inductor
cache, so what a user's first run pays), then ``--check-updates`` updates are compared with a
reference: the parameters' max absolute difference, that difference relative to the largest
weight, and whether they agree within the tolerance the project holds the fused launcher to
(per-iteration losses and final weights within 1e-5 of the basic launcher, 5e-5 at batch size 1:
README "Fast sweeps", ``tests/test_fused.py``). A single-run variant's reference is the eager
runner step; a fused variant's is K single runs' eager steps (the basic launcher). Then every
variant of a setting is timed interleaved, ``--rounds`` rounds (the order rotates every round;
one untimed warm-up round first) of ``--updates`` updates each: median µs per update and the
rounds' spread (min-max).

Compilation uses ``dynamic=False`` (one shape per compiled function); ``torch._dynamo`` is reset
between settings so that no cached graph is reused for another shape, and each variant compiles
into an empty inductor cache (``fresh_cache``). The compiler's one-time start-up in a process
(imports, compile workers) is measured once, on a one-op function, and reported apart.

Usage::

    .venv/bin/python bench/compile_step.py [--quick] [--batches 1 32] [--ks 8 32] [--rounds 5] [--updates 200] [--check-updates 100] [--out FILE]
    .venv/bin/python bench/compile_step.py --quick --cache-dir /tmp/warm   # twice: the second run's compile times are a warm cache's
    .venv/bin/python bench/compile_step.py --drift 32   # where a 1-ulp difference becomes a large one (seconds)

The whole default run takes about 8 minutes on a 2-core machine; ``--quick`` about a minute.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

# One thread, before torch is imported: the machine is shared, and a one-thread run is what the
# fused launcher's figures use (several threads split tiny kernels and wait for each other).
os.environ["OMP_NUM_THREADS"] = "1"
# A fresh inductor cache: the compile times are a first run's (a later run finds its kernels on
# disk) -- unless --cache-dir names one to keep, to time a second run against a warm cache.
KEPT_CACHE = sys.argv[sys.argv.index("--cache-dir") + 1] if "--cache-dir" in sys.argv[:-1] else None
INDUCTOR_CACHE = KEPT_CACHE or tempfile.mkdtemp(prefix="compile_step_inductor_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = INDUCTOR_CACHE

import argparse  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch._inductor.utils import fresh_cache  # noqa: E402
from torch.func import functional_call, grad_and_value, vmap  # noqa: E402

import runner.schema  # noqa: E402,F401  (registers the config schemas)
from runner.cli import CONF_DIR  # noqa: E402
from runner.launchers.stacked import FusedStep, StackedModel  # noqa: E402
from runner.launchers.stacked_grad import ClosedFormStep  # noqa: E402
from runner.launchers.stacked_optim import StackedOptimizer  # noqa: E402
from runner.loop import FlatGradients, dense_trunk, epoch_order, train_step  # noqa: E402
from runner.train import build_run  # noqa: E402
from machine import code_version, cpu_model, python_for_display, version  # noqa: E402  (bench/machine.py)

torch.set_num_threads(1)
torch._dynamo.config.cache_size_limit = 64
warnings.filterwarnings("ignore", message=".*[Pp]rofiler.*")

WARMUP_CALLS = 20  # untimed calls before each timed block


def tolerance(batch: int) -> float:
    """The fused launcher's tolerance against the basic one (README "Fast sweeps", tests/test_fused.py)."""
    return 5e-5 if batch == 1 else 1e-5


# --------------------------------------------------------------------------- the runner's objects
def compose_cfg(overrides: list[str]) -> object:
    """The config ``python -m runner <overrides>`` would run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["progress=false", "device=cpu", *overrides, f"output_dir={tempfile.gettempdir()}/compile_step_unused"])
    GlobalHydra.instance().clear()
    return cfg


@dataclass
class Data:
    """The default training split as flat rows, one epoch's order, and the full batches of size ``batch``."""

    X: Tensor  # (N, 64)
    Y: Tensor  # (N,) class indices
    source: object  # the runner's epoch source (runner.batches.PermutedCopy)
    slices: list[slice]
    cfg: object
    lr: float


def load_data(batch: int) -> Data:
    cfg = compose_cfg([f"batch_size={batch}"])
    run = build_run(cfg)
    X, Y = run.train.X.flatten(1), run.train.Y
    order = epoch_order(torch.Generator().manual_seed(int(cfg.seed)), len(X), True, torch.device("cpu"))
    n = len(X)
    slices = [slice(s, s + batch) for s in range(0, n - batch + 1, batch)]
    return Data(X, Y, run.train.source(order, False), slices, cfg, run.lr)


@dataclass
class Variant:
    """One way to do the update: ``build()`` makes fresh state and returns (one update at batch i, the weights now)."""

    name: str
    build: Callable[[], tuple[Callable[[int], object], Callable[[], Tensor]]]
    compiled: bool
    update: Callable[[int], object] | None = None
    weights: Callable[[], Tensor] | None = None
    first_call_s: float = float("nan")
    graphs: int = 0
    graph_breaks: int = 0
    max_abs_1: float = float("nan")  # after the first update
    max_abs: float = float("nan")  # after --check-updates
    max_rel: float = float("nan")
    within: bool | None = None
    times: list[float] = field(default_factory=list)
    timed: bool = True
    error: str | None = None


# --------------------------------------------------------------------------- one run's update
NUDGED = "*eager, every initial weight moved by 1 ulp (not a variant: how far rounding alone drifts)*"


def nudge_(tensors) -> None:
    """Move every element one float step up: a difference of rounding size, to see how it grows."""
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.nextafter(t, torch.full_like(t, float("inf"))))


def unwrapped_step(optimizer: torch.optim.Optimizer) -> Callable[[], object]:
    """``optimizer.step`` without the wrapper an LR scheduler puts around it (it only counts calls,
    for a warning): dynamo never traces that wrapper (its file is on dynamo's skip list), so the
    compiled variants call the optimizer class's own ``step``."""
    return types.MethodType(type(optimizer).step, optimizer)


def single_variants(data: Data, modes: list[str], quick: bool) -> list[Variant]:
    def fresh():
        run = build_run(data.cfg)
        trunk, loss_fn, optimizer, grads = run.step.args
        weights = lambda: torch.nn.utils.parameters_to_vector(trunk.parameters()).detach().clone()  # noqa: E731
        return run, trunk, loss_fn, optimizer, grads, weights

    def at(step):
        return lambda i: step(data.source, data.slices[i % len(data.slices)])

    def eager():
        run, *_, weights = fresh()
        return at(run.step), weights

    def compile_forward(mode: str):
        def build():
            run, trunk, loss_fn, optimizer, grads, weights = fresh()
            compiled = torch.compile(trunk, mode=mode, dynamic=False)
            return at(partial(train_step, compiled, loss_fn, optimizer, grads, grad_clip=None)), weights

        return build

    def compile_step(mode: str):
        def build():
            run, trunk, loss_fn, optimizer, grads, weights = fresh()

            optimizer_step = unwrapped_step(optimizer)

            def update(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
                # runner.loop.train_step without the batch fetch (a slice object is a constant
                # to dynamo: every batch position would be a new graph).
                grads.zero()
                loss = loss_fn(trunk(x), y)
                loss.backward()
                norm = grads.norm()
                optimizer_step()
                return loss.detach(), norm

            compiled = torch.compile(update, mode=mode, dynamic=False)
            return at(lambda source, positions: compiled(*source.take(positions))), weights

        return build

    def compile_optimizer():
        run, trunk, loss_fn, optimizer, grads, weights = fresh()
        compiled_step = torch.compile(unwrapped_step(optimizer), dynamic=False)

        def update(source, positions):
            grads.zero()
            x, y = source.take(positions)
            loss = loss_fn(trunk(x), y)
            loss.backward()
            norm = grads.norm()
            compiled_step()
            return loss.detach(), norm

        return at(update), weights

    def func(compiled: bool):
        def build():
            run, trunk, loss_fn, optimizer, grads, _ = fresh()
            lr = optimizer.param_groups[0]["lr"]
            params = {name: p.detach().clone() for name, p in trunk.named_parameters()}
            loss_and_grad = grad_and_value(lambda ps, x, y: loss_fn(functional_call(trunk, ps, (x,)), y))

            def update(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
                g, loss = loss_and_grad(params, x, y)
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g.values()]))
                for name, p in params.items():
                    p.add_(g[name], alpha=-lr)  # torch.optim.SGD's update without momentum
                return loss, norm

            fn = torch.compile(update, dynamic=False) if compiled else update
            weights = lambda: torch.cat([p.reshape(-1) for p in params.values()]).clone()  # noqa: E731
            return at(lambda source, positions: fn(*source.take(positions))), weights

        return build

    def func_grads(compiled: bool):
        def build():
            run, trunk, loss_fn, optimizer, grads, weights = fresh()
            # Detached aliases of the parameters: the optimizer's in-place update moves them too.
            params = {name: p.detach() for name, p in trunk.named_parameters()}
            loss_and_grad = grad_and_value(lambda ps, x, y: loss_fn(functional_call(trunk, ps, (x,)), y))

            def gradients(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
                g, loss = loss_and_grad(params, x, y)
                grads.flat.copy_(torch.cat([t.reshape(-1) for t in g.values()]))
                return loss, grads.norm()

            fn = torch.compile(gradients, dynamic=False) if compiled else gradients

            def update(source, positions):
                loss, norm = fn(*source.take(positions))
                optimizer.step()
                return loss, norm

            return at(update), weights

        return build

    def nudged():
        run, trunk, *_, weights = fresh()
        nudge_(trunk.parameters())
        return at(run.step), weights

    def func_and_optimizer():
        run, trunk, loss_fn, optimizer, grads, weights = fresh()
        params = dict(trunk.named_parameters())
        loss_and_grad = grad_and_value(lambda ps, x, y: loss_fn(functional_call(trunk, ps, (x,)), y))
        optimizer_step = unwrapped_step(optimizer)

        def update(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            g, loss = loss_and_grad(params, x, y)
            grads.flat.copy_(torch.cat([t.reshape(-1) for t in g.values()]))
            norm = grads.norm()
            optimizer_step()
            return loss, norm

        compiled = torch.compile(update, dynamic=False)
        return at(lambda source, positions: compiled(*source.take(positions))), weights

    variants = [Variant("eager (the runner's step)", eager, False), Variant(NUDGED, nudged, False, timed=False)]
    for mode in modes:
        variants.append(Variant(f"compile forward [{mode}]", compile_forward(mode), True))
    if not quick:  # --quick keeps one variant of each kind that compiles
        for mode in modes:
            variants.append(Variant(f"compile step [{mode}]", compile_step(mode), True))
        variants.append(Variant("compile optimizer.step", compile_optimizer, True))
        variants.append(Variant("torch.func grad + SGD, eager", func(False), False))
    variants.append(Variant("torch.func grad + SGD, compiled", func(True), True))
    variants.append(Variant("torch.func grad compiled + the runner's optimizer.step", func_grads(True), True))
    if not quick:
        variants.append(Variant("torch.func grad + the runner's optimizer.step, compiled together", func_and_optimizer, True))
    return variants


def single_reference(data: Data, updates: int) -> tuple[Tensor, Tensor]:
    """The eager runner step's weights after one update and after ``updates``."""
    run = build_run(data.cfg)
    after = []
    for i in range(updates):
        run.step(data.source, data.slices[i % len(data.slices)])
        if i in (0, updates - 1):
            after.append(torch.nn.utils.parameters_to_vector(run.step.args[0].parameters()).detach().clone())
    return after[0], after[-1]


# --------------------------------------------------------------------------- the fused update
@dataclass
class Members:
    """K members as a fused group holds them: own initial weights, own sample order."""

    models: list[nn.Module]
    X: Tensor  # (K, N, 64), member k's rows in its own order
    Y: Tensor  # (K, N)
    slices: list[slice]
    lr: float
    loss_fn: nn.Module


def make_members(data: Data, k: int) -> Members:
    run = build_run(data.cfg)
    models, xs, ys = [], [], []
    for member in range(k):
        torch.manual_seed(member)
        model = copy.deepcopy(run.model)
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        models.append(model)
        order = torch.randperm(len(data.X), generator=torch.Generator().manual_seed(member))
        xs.append(data.X[order])
        ys.append(data.Y[order])
    return Members(models, torch.stack(xs), torch.stack(ys), data.slices, run.lr, run.loss_fn)


def fused_variants(m: Members, quick: bool) -> list[Variant]:
    K = len(m.models)
    lr = torch.full((K, 1), m.lr, dtype=torch.float64)

    def stacked():
        copies = [copy.deepcopy(model) for model in m.models]
        model = StackedModel(copies)
        optimizer = StackedOptimizer([torch.optim.SGD(c.parameters(), lr=m.lr) for c in copies], model.flat, model.grad, model.shapes)
        return model, optimizer

    def at(step):
        return lambda i: step(m.X[:, m.slices[i % len(m.slices)]], m.Y[:, m.slices[i % len(m.slices)]], lr)

    def runner_step(cls, compiled: bool):
        def build():
            model, optimizer = stacked()
            step = cls(model, m.loss_fn, optimizer, None)
            if compiled:
                # The stacked optimizer counts its steps in a Python int that dynamo guards on:
                # traced, it recompiles at every update until the recompile limit. Left eager.
                optimizer.step = torch._dynamo.disable(optimizer.step)
            fn = torch.compile(step, dynamic=False) if compiled else step
            return at(fn), lambda: model.flat.detach().clone()

        return build

    def nudged():
        model, optimizer = stacked()
        nudge_([model.flat])
        return at(ClosedFormStep(model, m.loss_fn, optimizer, None)), lambda: model.flat.detach().clone()

    def func(compiled: bool):
        def build():
            template = copy.deepcopy(m.models[0])
            names = [name for name, _ in template.named_parameters()]
            params = {name: torch.stack([dict(c.named_parameters())[name].detach() for c in m.models]) for name in names}
            loss_and_grad = vmap(grad_and_value(lambda ps, x, y: m.loss_fn(functional_call(template, ps, (x,)), y)))
            neg_lr = (-lr).float()

            def update(x: Tensor, y: Tensor, _: Tensor) -> tuple[Tensor, Tensor]:
                g, losses = loss_and_grad(params, x, y)
                norms = torch.linalg.vector_norm(torch.cat([g[n].reshape(K, -1) for n in names], dim=1), dim=1)
                for name, p in params.items():
                    p.addcmul_(g[name], neg_lr.view(K, *[1] * (p.dim() - 1)))
                return losses, norms

            fn = torch.compile(update, dynamic=False) if compiled else update
            return at(fn), lambda: torch.cat([params[n].reshape(K, -1) for n in names], dim=1).clone()

        return build

    variants = [
        Variant("closed form, eager (the fused launcher's step)", runner_step(ClosedFormStep, False), False),
        Variant(NUDGED, nudged, False, timed=False),
        Variant("closed form, compiled", runner_step(ClosedFormStep, True), True),
    ]
    if not quick:
        variants += [
            Variant("autograd FusedStep, eager", runner_step(FusedStep, False), False),
            Variant("autograd FusedStep, compiled", runner_step(FusedStep, True), True),
        ]
        variants.append(Variant("torch.func vmap(grad) + SGD, eager", func(False), False))
    variants.append(Variant("torch.func vmap(grad) + SGD, compiled", func(True), True))
    return variants


def fused_reference(m: Members, updates: int) -> tuple[Tensor, Tensor]:
    """Each member's weights after one and after ``updates`` of its own single-run eager step (the basic launcher)."""
    first, rows = [], []
    for k, model in enumerate(m.models):
        model = copy.deepcopy(model)
        trunk = dense_trunk(model)
        grads = FlatGradients(list(model.parameters()))
        optimizer = torch.optim.SGD(model.parameters(), lr=m.lr)
        for i in range(updates):
            positions = m.slices[i % len(m.slices)]
            grads.zero()
            m.loss_fn(trunk(m.X[k, positions]), m.Y[k, positions]).backward()
            grads.norm()
            optimizer.step()
            if i == 0:
                first.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone())
        rows.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach())
    return torch.stack(first), torch.stack(rows)


# --------------------------------------------------------------------------- measuring
def own_cache() -> contextlib.AbstractContextManager:
    """An empty inductor cache for one variant (no variant finds another's kernels: the same graph
    under another mode would be a cache hit), or the kept ``--cache-dir`` as it is."""
    return contextlib.nullcontext() if KEPT_CACHE else fresh_cache(dir=INDUCTOR_CACHE, delete=False)


def check(variant: Variant, references: tuple[Tensor, Tensor], updates: int, tol: float) -> None:
    """Build the variant, time its first call (compilation), run ``updates`` and compare with ``reference``."""
    frames0 = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    breaks0 = sum(torch._dynamo.utils.counters["graph_break"].values())
    try:
        with own_cache():
            variant.update, variant.weights = variant.build()
            started = time.perf_counter()
            variant.update(0)
            variant.first_call_s = time.perf_counter() - started
            variant.max_abs_1 = (variant.weights() - references[0]).abs().max().item()
            for i in range(1, updates):
                variant.update(i)
    except Exception as error:  # a variant torch cannot compile is a result, not a crash
        variant.error = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        traceback.print_exc(file=sys.stderr)
        return
    variant.graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames0
    variant.graph_breaks = sum(torch._dynamo.utils.counters["graph_break"].values()) - breaks0
    got, reference = variant.weights(), references[1]
    diff = (got - reference).abs()
    variant.max_abs = diff.max().item()
    variant.max_rel = variant.max_abs / reference.abs().max().item()
    variant.within = torch.allclose(got, reference, rtol=tol, atol=tol)


def time_interleaved(variants: list[Variant], rounds: int, updates: int, start: int) -> None:
    live = [v for v in variants if v.error is None and v.timed]
    cursor = start
    for r in range(rounds + 1):  # round 0 warms up, untimed
        shift = r % len(live)
        for v in live[shift:] + live[:shift]:
            for _ in range(WARMUP_CALLS):
                v.update(cursor)
                cursor += 1
            began = time.perf_counter()
            for _ in range(updates):
                v.update(cursor)
                cursor += 1
            if r:
                v.times.append((time.perf_counter() - began) / updates * 1e6)


def median(v: Variant) -> float:
    return statistics.median(v.times) if v.times else float("nan")


def rows(setting: str, variants: list[Variant]) -> list[str]:
    base = median(variants[0])
    out = []
    for v in variants:
        if v.error:
            out.append(f"| {setting} | {v.name} | failed: {v.error} | | | | | | |")
            continue
        compile_s = f"{v.first_call_s:.1f}" if v.compiled else f"({v.first_call_s * 1e3:.1f} ms)"
        graphs = f"{v.graphs} / {v.graph_breaks}" if v.compiled else ""
        speed = f"{median(v):.0f} ({min(v.times):.0f}–{max(v.times):.0f}) | {base / median(v):.2f}×" if v.times else "– | –"
        verdict = "yes" if v.within else "**no**"
        out.append(
            f"| {setting} | {v.name} | {compile_s if v.timed else '–'} | {graphs} | {speed} | "
            f"{v.max_abs_1:.1e} | {v.max_abs:.1e} / {v.max_rel:.1e} | {verdict} |"
        )
    return out


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def gcc_version() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError):
        return "gcc not found"


def drift(batch: int, updates: int) -> list[str]:
    """Where a rounding-size difference turns into a large one: the eager step and the same step
    started 1 ulp off, side by side; every update at which a first-layer ReLU unit's pre-activation
    has opposite signs in the two runs for some sample of the batch, or the weights' difference
    grows tenfold."""
    data = load_data(batch)
    runs = [build_run(data.cfg), build_run(data.cfg)]
    nudge_(runs[1].step.args[0].parameters())
    lines, previous = [], 0.0
    for i in range(updates):
        positions = data.slices[i % len(data.slices)]
        x, _ = data.source.take(positions)
        with torch.no_grad():
            signs = [run.step.args[0][0](x) > 0 for run in runs]  # the trunk's first Linear
        for run in runs:
            run.step(data.source, positions)
        diff = max((a - b).abs().max().item() for a, b in zip(runs[0].step.args[0].parameters(), runs[1].step.args[0].parameters()))
        flips = int((signs[0] != signs[1]).sum())
        if flips or diff > 10 * max(previous, 1e-8):
            lines.append(f"- update {i}: {flips} ReLU pre-activation(s) of opposite sign; weights now {diff:.1e} apart")
        previous = diff
    return lines + [f"- after {updates} updates: {previous:.1e} apart"]


def compiler_start_up() -> float:
    """Seconds the first compilation in a process pays once (inductor's imports, its compile
    workers), measured on a one-op function so that no variant's figure carries it."""
    started = time.perf_counter()
    with own_cache():
        torch.compile(lambda t: t * 2, dynamic=False)(torch.ones(3))
    return time.perf_counter() - started


def measure(label: str, variants: list, reference, tol: float, args: argparse.Namespace) -> list[str]:
    """Check every variant against the reference, time them interleaved; their table rows."""
    for v in variants:
        check(v, reference, args.check_updates, tol)
        print(f"  checked {label} {v.name}: first call {v.first_call_s:.2f} s, max abs {v.max_abs:.1e}", file=sys.stderr, flush=True)
    time_interleaved(variants, args.rounds, args.updates, args.check_updates)
    table = rows(label, variants)
    print("\n".join(table), file=sys.stderr, flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, K 8, default mode only, tiny counts (a smoke run)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--modes", nargs="+", default=["default", "reduce-overhead", "max-autotune-no-cudagraphs"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--check-updates", type=int, default=100, help="updates compared with the reference")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    parser.add_argument("--drift", type=int, metavar="B", help="only trace the 1-ulp drift at batch size B (no compilation)")
    parser.add_argument("--cache-dir", help="compile into this inductor cache and keep it (a second run then times a warm cache)")
    args = parser.parse_args()
    if args.drift:
        print("\n".join(drift(args.drift, args.check_updates)))
        if KEPT_CACHE is None:
            shutil.rmtree(INDUCTOR_CACHE, ignore_errors=True)
        return
    if args.quick:
        args.batches, args.ks, args.modes = [1], [8], ["default"]
        args.rounds, args.updates, args.check_updates = 2, 20, 5

    load_start, started = uptime(), time.time()
    lines = [
        "| setting | variant | compile s (first call) | graphs / breaks | µs per update: median (min–max) | speed-up vs eager | "
        "max abs diff after 1 update | after N: max abs / rel to largest weight | within tol after N |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    try:
        start_up = compiler_start_up()
        for batch in args.batches:
            data = load_data(batch)
            tol = tolerance(batch)
            torch._dynamo.reset()
            variants = single_variants(data, args.modes, args.quick)
            lines += measure(f"one run, B={batch}", variants, single_reference(data, args.check_updates), tol, args)
            for k in args.ks:
                members = make_members(data, k)
                torch._dynamo.reset()
                variants = fused_variants(members, args.quick)
                lines += measure(f"fused K={k}, B={batch}", variants, fused_reference(members, args.check_updates), tol, args)
    finally:
        if KEPT_CACHE is None:
            shutil.rmtree(INDUCTOR_CACHE, ignore_errors=True)

    header = [
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()} (OMP_NUM_THREADS=1)",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, {gcc_version()}, hydra {version('hydra-core')}",
        f"- Command: `{python_for_display()} bench/compile_step.py {' '.join(sys.argv[1:])}`; runner code: {code_version()}",
        f"- {args.rounds} interleaved rounds of {args.updates} updates per variant (after {WARMUP_CALLS} untimed calls each, "
        f"one untimed warm-up round first); exactness after {args.check_updates} updates; whole bench {time.time() - started:.0f} s",
        f"- Inductor cache: {'kept in ' + KEPT_CACHE + ' (warm if an earlier run filled it)' if KEPT_CACHE else 'empty for each variant (cold compile times)'}",
        f"- Compiler start-up, paid once per process before the first compilation (imports, compile workers; "
        f"not in any variant's figure): {start_up:.1f} s",
        f"- Load: at start `{load_start}`; at end `{uptime()}`",
    ]
    text = "\n".join(header + [""] + lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
