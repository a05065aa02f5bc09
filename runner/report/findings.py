"""The report's findings: each configuration's loss at equal samples, updates and training time, which is best, and how sure.

The compared value is the loss on the whole training set (:data:`METRIC`), the fair curve
across regimes. On each axis the *equal point* is chosen among logged points, never
extrapolated (:func:`equal_point`):

1. **the budget**: when every run had the same ``budget=samples|updates|seconds`` with the
   same amount, that amount, and each run's last evaluation (the one where the budget ran out;
   a samples budget stops at the first update that reaches it, so within one batch above);
2. **a shared point** (samples, updates): the largest value above 0 that every run logged on
   the axis's series (``vs_samples/loss/train_full``, ``vs_iteration/loss/train_full``);
3. otherwise, for **updates**: the largest update every run logged on ``loss/train_iter``: the
   loss of the batch that update was computed from, at the weights after that many updates
   (full-batch runs evaluate once per update, SGD once per 1438: their whole-set evaluations
   share no point after the start);
4. otherwise, for **samples and seconds**: the smallest final value of any run (when the
   quickest run had finished), each run taking its last evaluation at or before it.

Each configuration's value there is the mean over its finished seeds with a 95% interval
(Student's t, :func:`runner.seedstats.spread`); whether the best one is separated from each
other configuration is Welch's test (:func:`runner.seedstats.compare`). Runs that did not
finish (``done``) or whose log could not be read whole are left out and named.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runner import tags
from runner.events.read import Series
from runner.report.records import Labels, RunRecord
from runner.safefs import open_inside
from runner.seedstats import ALPHA, TOO_FEW, Comparison, Spread, compare, spread

METRIC = tags.LOSS_FULL
FINDINGS_FILE = "findings.json"
BATCH_LOSS_TAG = tags.LOSS_ITER


@dataclass(frozen=True)
class Axis:
    """One way of making runs equal: the key in ``findings.json``, the series, the budget that fixes it."""

    name: str
    tag: str
    budget: str  # the `budget=` unit that makes every run stop at the same value of this axis
    unit: str  # what one step counts, as the text says it
    title: str
    scale: float = 1.0  # step → unit (milliseconds → seconds)
    shared: bool = True  # look for a point every run logged (times never coincide)
    fallback: str | None = None  # the per-update series when whole-set evaluations share no point


AXES: tuple[Axis, ...] = (
    Axis("samples", tags.BY_SAMPLES + METRIC, "samples", "samples", "At equal samples"),
    Axis("updates", tags.BY_ITERATION + METRIC, "updates", "updates", "At equal updates", fallback=BATCH_LOSS_TAG),
    Axis("seconds", tags.BY_TIME_MS + METRIC, "seconds", "s", "At equal training time", scale=1e-3, shared=False),
)


@dataclass(frozen=True)
class Point:
    """A run's logged value at an axis's equal point, and where on the axis it was logged."""

    x: float
    value: float


@dataclass(frozen=True)
class EqualPoint:
    """Where the runs are compared on one axis, how that was chosen, and each run's value there."""

    at: float
    how: str
    tag: str
    points: dict[RunRecord, Point]


@dataclass(frozen=True)
class AxisFinding:
    """One axis: each configuration's spread at the equal point, the best one and the tests against it."""

    axis: Axis
    point: EqualPoint | None
    why_none: str  # when there is no point
    values: dict[str, Spread]  # configuration → its runs' values, best first
    tests: dict[str, Comparison]  # other configuration → Welch's test against the best

    @property
    def best(self) -> str | None:
        return next(iter(self.values), None)

    @property
    def separated(self) -> bool | None:
        """True when the seeds separate the best from every other configuration, False when
        from some not, None when there are too few seeds (or no spread) to say."""
        if not self.tests:
            return None
        verdicts = [separation(c) for c in self.tests.values()]
        if False in verdicts:
            return False
        return None if None in verdicts else True


def separation(test: Comparison) -> bool | None:
    """Welch's verdict as True (separated), False (within the spread) or None (cannot say)."""
    if test.verdict == TOO_FEW or test.test is None or math.isnan(test.test.p):
        return None
    return test.test.p < ALPHA


# --------------------------------------------------------------------------- the equal point
def _by_step(series: Series, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps (in the axis's unit) and values, one point per step (the last logged), in step order."""
    steps, values = series.steps[::-1], series.values[::-1]
    unique, first = np.unique(steps, return_index=True)
    return unique.astype(np.float64) * scale, values[first].astype(np.float64)


def _common_budget(runs: Sequence[RunRecord]) -> tuple[str, float] | None:
    budgets = {(b.get("unit"), b.get("amount")) for r in runs if isinstance(b := r.summary.get("budget"), dict)}
    if len(budgets) != 1 or any(not isinstance(r.summary.get("budget"), dict) for r in runs):
        return None
    unit, amount = budgets.pop()
    return (str(unit), float(amount)) if isinstance(amount, (int, float)) else None


def quantity(value: float, unit: str) -> str:
    """``4,314 samples``, ``0.013 s``."""
    if unit == "s":
        return f"{value:.3g} s"
    number = f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
    if unit and value == 1 and unit.endswith("s"):
        unit = unit[:-1]  # 1 update, 1 epoch
    return f"{number} {unit}" if unit else number


def span(xs: Sequence[float], unit: str) -> str:
    """``4,314 samples`` or ``4,314 samples to 4,352 samples``."""
    low, high = min(xs), max(xs)
    return quantity(low, unit) if low == high else f"{quantity(low, unit)} to {quantity(high, unit)}"


def equal_point(axis: Axis, runs: Sequence[RunRecord]) -> EqualPoint | None:
    """Where ``runs`` are compared on ``axis`` (the rules in this module's docstring), or None
    when no run has the axis's series."""
    curves = {r: _by_step(r.scalars[axis.tag], axis.scale) for r in runs if len(r.scalars.get(axis.tag, ()))}
    if not curves:
        return None
    budget = _common_budget(runs)
    if budget is not None and budget[0] == axis.budget and len(curves) == len(runs):
        points = {r: Point(float(x[-1]), float(v[-1])) for r, (x, v) in curves.items()}
        how = (
            f"the budget: every run trained for {quantity(budget[1], axis.unit)} (`budget={axis.budget}`); "
            f"each run's last evaluation on `{axis.tag}`, where its budget ran out "
            f"(at {span([p.x for p in points.values()], axis.unit)})"
        )
        return EqualPoint(budget[1], how, axis.tag, points)
    if axis.shared:
        common = _shared_steps(x for x, _ in curves.values())
        if len(common):
            at = float(common[-1])
            points = {r: Point(at, float(v[np.searchsorted(x, at)])) for r, (x, v) in curves.items()}
            how = f"the most {axis.unit} every run has logged on `{axis.tag}`: a point all of them share"
            return EqualPoint(at, how, axis.tag, points)
    if axis.fallback is not None:
        found = _per_update_point(axis, runs)
        if found is not None:
            return found
    at = min(float(x[-1]) for x, _ in curves.values())
    points = {}
    for run, (x, v) in curves.items():
        last = int(np.searchsorted(x, at, side="right")) - 1  # the last evaluation at or before `at`
        if last >= 0:
            points[run] = Point(float(x[last]), float(v[last]))
    how = (
        f"{quantity(at, axis.unit)}, the least any run reached on `{axis.tag}` (where the quickest run ended); "
        "each run's last evaluation at or before it"
    )
    return EqualPoint(at, how, axis.tag, points)


def _shared_steps(step_arrays: Any) -> np.ndarray:
    """The steps above 0 that every array holds, ascending."""
    common: np.ndarray | None = None
    for steps in step_arrays:
        common = steps if common is None else np.intersect1d(common, steps)
    return np.zeros(0) if common is None else common[common > 0]


def _per_update_point(axis: Axis, runs: Sequence[RunRecord]) -> EqualPoint | None:
    """The largest update every run logged on the per-update batch loss."""
    tag = axis.fallback
    if not all(len(r.scalars.get(tag, ())) for r in runs):
        return None
    curves = {r: _by_step(r.scalars[tag], 1.0) for r in runs}
    common = _shared_steps(x for x, _ in curves.values())
    if not len(common):
        return None
    at = float(common[-1])
    points = {r: Point(at, float(v[np.searchsorted(x, at)])) for r, (x, v) in curves.items()}
    how = (
        f"the whole-training-set evaluations (`{axis.tag}`) share no point after the start, so `{tag}` at "
        f"{quantity(at, axis.unit)}, the most every run logged: the loss of the batch that update was computed "
        "from, at the weights after that many updates (one batch: noisy for small batches)"
    )
    return EqualPoint(at, how, tag, points)


# --------------------------------------------------------------------------- values and tests
def comparable_runs(configs: dict[str, list[RunRecord]]) -> dict[str, list[RunRecord]]:
    """Each configuration's runs that count: finished (``done``) with a log read whole."""
    runs = {config: [r for r in members if r.status == "done" and r.unread is None] for config, members in configs.items()}
    return {config: members for config, members in runs.items() if members}


def axis_finding(axis: Axis, runs: dict[str, list[RunRecord]]) -> AxisFinding:
    """Each configuration's values at the axis's equal point, best first, with Welch's test of the best against each other."""
    every = [r for members in runs.values() for r in members]
    point = equal_point(axis, every) if every else None
    if point is None:
        why = f"no finished run has `{axis.tag}`" if every else "no run finished with a readable log"
        return AxisFinding(axis, None, why, {}, {})
    per_config = {c: [point.points[r].value for r in members if r in point.points] for c, members in runs.items()}
    per_config = {c: v for c, v in per_config.items() if v}
    values = dict(sorted(((c, spread(v)) for c, v in per_config.items()), key=lambda kv: kv[1].mean))
    best = next(iter(values))
    tests = {c: compare(c, best, point.tag, per_config[c], per_config[best]) for c in values if c != best}
    return AxisFinding(axis, point, "", values, tests)


@dataclass(frozen=True)
class Findings:
    """The findings of a sweep of several configurations."""

    axes: tuple[AxisFinding, ...]
    names: dict[str, str]  # configuration → its name in the text and in findings.json
    runs: dict[str, list[RunRecord]]  # the runs that count, per configuration

    def as_json(self) -> dict[str, Any]:
        """What ``findings.json`` holds."""
        axes = {}
        for finding in self.axes:
            point = finding.point
            axes[finding.axis.name] = {
                "at": None if point is None else _json_number(point.at),
                "how": finding.why_none if point is None else point.how,
                "values": {
                    self.names[c]: {
                        "mean": s.mean,
                        "low": s.ci[0] if s.ci else None,
                        "high": s.ci[1] if s.ci else None,
                        "n": s.n,
                    }
                    for c, s in finding.values.items()
                },
                "best": self.names[finding.best] if finding.best is not None else None,
                "separated": finding.separated,
            }
        return {"metric": METRIC, "axes": axes}


def _json_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def unique_names(configs: Sequence[str], labels: Labels) -> dict[str, str]:
    """Each configuration's label, or its directory where two labels coincide."""
    names = {c: labels.config(c) for c in configs}
    if len(set(names.values())) < len(names):
        return {c: c for c in configs}
    return names


def find(configs: dict[str, list[RunRecord]], labels: Labels) -> Findings:
    """The findings on every axis of :data:`AXES`."""
    runs = comparable_runs(configs)
    return Findings(tuple(axis_finding(axis, runs) for axis in AXES), unique_names(list(configs), labels), runs)


def write_json(root: Path, findings: Findings | None) -> Path | None:
    """``<root>/findings.json``; an old one is removed when there is nothing to compare."""
    path = Path(root) / FINDINGS_FILE
    if findings is None:
        path.unlink(missing_ok=True)
        return None
    with open_inside(root, path, "w") as handle:
        handle.write(json.dumps(findings.as_json(), indent=2) + "\n")
    return path
