"""``scaling.json``: steps to target per batch size at its best learning rate, the fit of B_crit, B_simple.

McCandlish et al. (2018) model the updates S and samples E = B·S needed to reach a target as

    S = S_min (1 + B_crit / B),     E = E_min (1 + B / B_crit),     B_crit = E_min / S_min.

Per batch size the learning rate with the fewest median updates over seeds is kept (a run
that never reached the target counts as infinitely many); S_min and B_crit are fitted by
least squares on log S; their interval comes from resampling the seeds (bootstrap).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import OmegaConf

from runner.events.read import read_scalar_series
from runner.scaling.grid import B_SIMPLE_TAG, TAG

SCALING_JSON = "scaling.json"
EXTENSION_DIR = "lr_extension"  # runs of lrs added beyond a batch size's grid (runner.scaling.extend)
BOOTSTRAP = 500  # resamples of the seeds for the interval
BOOTSTRAP_SEED = 0  # the interval is the same every time the same runs are analysed
LEVEL = 0.95


@dataclass
class StudyRun:
    """One run of the study: its directory (relative to the root), batch size, lr, seed and S."""

    rel: str
    batch_size: int
    lr: float
    seed: int
    steps: int | None  # first logged update with the target metric <= the target; None: never
    samples: int | None
    b_simple: float | None  # at the weights after update ``steps``
    series: dict[str, Any]


def steps_to_target(steps: np.ndarray, values: np.ndarray, target: float) -> int | None:
    """The first logged step whose value is <= ``target`` (values as the event file holds them)."""
    hits = np.flatnonzero(values.astype(np.float64) <= target)
    return int(steps[hits[0]]) if len(hits) else None


def samples_at(update: int, batch_size: int, n_train: int, per_epoch: int) -> int:
    """Samples processed by the end of update ``update`` (an epoch's last batch may be short)."""
    epochs, rest = divmod(update, per_epoch)
    return epochs * min(n_train, per_epoch * batch_size) + rest * batch_size


def study_target(root: Path) -> float | None:
    """``scaling.target`` of the sweep's runs (None: ``root`` is not a scaling study)."""
    # The runs of one sweep share it: the first run's config decides (one file read, not one per run).
    for path in sorted(root.rglob(".hydra/config.yaml")):
        target = OmegaConf.select(OmegaConf.load(path), "scaling.target")
        return None if target is None else float(target)
    return None


def load_runs(root: Path, target: float) -> list[StudyRun]:
    """Every run under ``root`` that logged the target metric."""
    runs = []
    for summary_path in sorted(root.rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
        run_dir = summary_path.parent
        series = read_scalar_series(run_dir)
        if TAG not in series or summary.get("batch_size") is None:
            continue
        tagged = series[TAG]
        steps = steps_to_target(tagged.steps, tagged.values, target)
        b, n = int(summary["batch_size"]), int(summary["n_train"])
        samples = None if steps is None else samples_at(steps, b, n, int(summary["iterations_per_epoch"]))
        b_simple = None
        if steps is not None and B_SIMPLE_TAG in series:
            at = np.flatnonzero(series[B_SIMPLE_TAG].steps == steps)
            b_simple = float(series[B_SIMPLE_TAG].values[at[-1]]) if len(at) else None
        runs.append(StudyRun(str(run_dir.relative_to(root)), b, float(summary["lr"]), int(summary["seed"]), steps, samples, b_simple, series))
    return runs


def is_extension(run: StudyRun) -> bool:
    return Path(run.rel).parts[0] == EXTENSION_DIR


def extensions_of(runs: Sequence[StudyRun]) -> dict[int, list[float]]:
    """Per batch size, the lrs added beyond its grid, the nearest to the grid first."""
    grid: dict[int, set[float]] = {}
    added: dict[int, set[float]] = {}
    for run in runs:
        (added if is_extension(run) else grid).setdefault(run.batch_size, set()).add(run.lr)

    def distance(b: int, lr: float) -> float:
        return min((abs(math.log(lr / g)) for g in grid.get(b, ())), default=0.0)
    return {b: sorted(lrs, key=lambda lr: distance(b, lr)) for b, lrs in added.items()}


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def best_points(runs: Sequence[StudyRun]) -> list[dict[str, Any]]:
    """Per batch size, the lr with the fewest median updates (a run that missed the target: ∞);
    batch sizes where no lr reached it in most seeds have no point."""
    points = []
    added = extensions_of(runs)
    for b in sorted({r.batch_size for r in runs}):
        at_b = [r for r in runs if r.batch_size == b]
        lrs = sorted({r.lr for r in at_b})
        medians = {lr: _median([math.inf if r.steps is None else r.steps for r in at_b if r.lr == lr]) for lr in lrs}
        best = min(lrs, key=lambda lr: (medians[lr], lr))
        if not math.isfinite(medians[best]):
            continue
        chosen = [r for r in at_b if r.lr == best]
        reached = [r for r in chosen if r.steps is not None]
        points.append({
            "batch_size": b,
            "lr": best,
            "steps": medians[best],
            "samples": _median([math.inf if r.samples is None else r.samples for r in chosen]),
            "steps_range": [min(r.steps for r in reached), None if len(reached) < len(chosen) else max(r.steps for r in reached)],
            "lr_at_edge": len(lrs) > 1 and best in (lrs[0], lrs[-1]),
            "lrs": lrs,
            "lr_extensions": added.get(b, []),
            "runs": [r.rel for r in sorted(chosen, key=lambda r: r.seed)],
        })
    return points


def fit(batch_sizes: Sequence[float], steps: Sequence[float]) -> tuple[float, float]:
    """(S_min, B_crit) minimising Σ (log S_i − log S_min − log(1 + B_crit/B_i))².

    For a given B_crit the best log S_min is the mean residual, so only log B_crit is searched
    (bounded Brent over 10^±6 times the batch sizes' range, after a coarse grid).
    """
    b = np.asarray(batch_sizes, dtype=np.float64)
    log_s = np.log(np.asarray(steps, dtype=np.float64))

    def residual(log_bc: float) -> tuple[float, float]:
        shape = np.log1p(math.exp(log_bc) / b)
        log_smin = float(np.mean(log_s - shape))
        return float(np.sum((log_s - log_smin - shape) ** 2)), log_smin

    lo, hi = math.log(b.min()) - 6 * math.log(10), math.log(b.max()) + 6 * math.log(10)
    grid = np.linspace(lo, hi, 241)
    k = int(np.argmin([residual(x)[0] for x in grid]))
    bracket = (grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)])
    from scipy.optimize import minimize_scalar  # here, not at the top: every report imports this module, few fit

    best = minimize_scalar(lambda x: residual(x)[0], bounds=bracket, method="bounded", options={"xatol": 1e-10})
    log_bc = float(best.x)
    return math.exp(residual(log_bc)[1]), math.exp(log_bc)


def bootstrap_b_crit(runs: Sequence[StudyRun], n: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> list[float]:
    """B_crit refitted on ``n`` resamples of the seeds (drawn with replacement per batch size and lr)."""
    rng = np.random.default_rng(seed)
    cells: dict[tuple[int, float], np.ndarray] = {}
    for r in runs:
        cells.setdefault((r.batch_size, r.lr), [])  # type: ignore[arg-type]
        cells[(r.batch_size, r.lr)].append(math.inf if r.steps is None else r.steps)  # type: ignore[union-attr]
    table = {key: np.asarray(v, dtype=np.float64) for key, v in cells.items()}
    fits = []
    for _ in range(n):
        best: dict[int, float] = {}
        for (b, _lr), values in table.items():
            median = float(np.median(rng.choice(values, size=len(values))))
            best[b] = min(best.get(b, math.inf), median)
        finite = [(b, s) for b, s in sorted(best.items()) if math.isfinite(s)]
        if len(finite) >= 2:
            fits.append(fit([b for b, _ in finite], [s for _, s in finite])[1])
    return fits


def analyse(root: Path) -> dict[str, Any] | None:
    """The contents of ``scaling.json`` for the sweep ``root``, or None when it is not a scaling study."""
    target = study_target(root)
    if target is None:
        return None
    runs = load_runs(root, target)
    if not runs:
        return None
    points = best_points(runs)
    result: dict[str, Any] = {"target": {"tag": TAG, "value": target}, "points": points, "fit": None, "noise": None}
    if len(points) >= 2:
        s_min, b_crit = fit([p["batch_size"] for p in points], [p["steps"] for p in points])
        boot = bootstrap_b_crit(runs)
        tail = (1 - LEVEL) / 2 * 100
        interval = [float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))] if boot else None
        result["fit"] = {"S_min": s_min, "E_min": s_min * b_crit, "B_crit": b_crit, "B_crit_interval": interval}
    chosen = {rel for p in points for rel in p["runs"]}
    at_target = [r.b_simple for r in runs if r.rel in chosen and r.b_simple is not None]
    if at_target:
        result["noise"] = {"B_simple": _median(at_target), "B_simple_range": [min(at_target), max(at_target)], "runs": len(at_target)}
    return result
