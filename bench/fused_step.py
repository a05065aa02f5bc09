"""One fused update, in isolation: autograd's backward against the closed-form one, and K single-run updates.

Setting: the default MLP 64-128-10 (ReLU), sparse categorical cross-entropy, SGD lr 0.01,
batch size 1, K members; random data. Three variants, timed interleaved in one process
(``--rounds`` rounds of ``--updates`` updates each, medians and minimum):

* ``autograd``: :class:`runner.launchers.stacked.FusedStep` (autograd on the stacked model);
* ``closed form``: :class:`runner.launchers.stacked_grad.ClosedFormStep` (what a fused group uses
  for such a model);
* ``K single``: K times one single run's update (``zero_grad``, loss, ``backward``, ``step``),
  the basic launcher's work for the same K updates.

Usage::

    .venv/bin/python bench/fused_step.py [--ks 8 32] [--threads N] [--rounds 7] [--updates 300]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from torch import nn

from runner.launchers.stacked import FusedStep, StackedModel
from runner.launchers.stacked_grad import ClosedFormStep
from runner.launchers.stacked_optim import StackedOptimizer
from runner.losses import SparseCategoricalCrossentropy
from machine import code_version, cpu_model, version  # bench/machine.py


def variants(k: int):
    models = [nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)) for _ in range(k)]
    loss_fn = SparseCategoricalCrossentropy()

    def stacked(cls):
        copies = [copy.deepcopy(m) for m in models]
        model = StackedModel(copies)
        optimizer = StackedOptimizer([torch.optim.SGD(m.parameters(), lr=0.01) for m in copies], model.flat, model.grad, model.shapes)
        return cls(model, loss_fn, optimizer, None)

    x, y = torch.randn(k, 1, 64), torch.randint(0, 10, (k, 1))
    lr = torch.full((k, 1), 0.01, dtype=torch.float64)
    single = models[0]
    single_optimizer = torch.optim.SGD(single.parameters(), lr=0.01)

    def one_single() -> None:
        single_optimizer.zero_grad()
        loss_fn(single(x[0]), y[0]).backward()
        single_optimizer.step()

    autograd, closed = stacked(FusedStep), stacked(ClosedFormStep)
    return {
        "autograd": (lambda: autograd(x, y, lr), 1),
        "closed form": (lambda: closed(x, y, lr), 1),
        "K single": (one_single, k),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=300)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads; torch {version('torch')}; {code_version()}.")
    print(f"Command: `bench/fused_step.py {' '.join(sys.argv[1:])}`; {args.rounds} interleaved rounds of {args.updates} updates.\n")
    print("| K | autograd: µs per group update | closed form: µs | K single updates: µs | closed form vs autograd | K single vs closed form |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in args.ks:
        table = variants(k)
        times: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, (fn, repeat) in table.items():
                for _ in range(20):
                    fn()
                started = time.perf_counter()
                for _ in range(args.updates):
                    fn()
                times[name].append((time.perf_counter() - started) / args.updates * repeat * 1e6)
        med = {name: statistics.median(values[1:]) for name, values in times.items()}
        print(f"| {k} | {med['autograd']:.0f} | {med['closed form']:.0f} | {med['K single']:.0f} | "
              f"{med['autograd'] / med['closed form']:.2f}x | {med['K single'] / med['closed form']:.2f}x |")


if __name__ == "__main__":
    main()
