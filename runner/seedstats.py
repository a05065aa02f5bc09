"""Statistics over seeds: how much a final metric varies from seed to seed, and whether
two configurations differ by more than that.

For each configuration (a seed group, :func:`runner.aggregate.seed_groups`) and each final
metric in its members' ``summary.json``, :func:`spread` gives the mean, the sample standard
deviation, min, max and a 95% confidence interval of the mean (Student's t with n − 1
degrees of freedom). :func:`compare` puts two configurations side by side with Welch's
t-test, which does not assume equal variances: a batch size of 1 spreads far more from
seed to seed than full-batch descent does. :func:`markdown_section` and
:func:`draw_spread` are what the sweep report shows; :func:`final_statistics` is what
``aggregate.json`` records.

scipy is imported inside the functions that need it: the training process never does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runner.schema import split_items
from runner.safefs import save_figure

# summary.json key → what the report calls it. Every final value a run records about how
# well it fitted; counts (epochs, iterations) are equal across seeds and left out.
FINAL_METRICS: dict[str, str] = {
    "val_loss": "validation loss",
    "val_acc": "validation accuracy",
    "train_loss": "whole-training-set loss",
    "train_acc": "training accuracy",
    "gap_loss": "overfit_gap/loss (validation − training loss)",
    "gap_acc": "overfit_gap/acc (training − validation accuracy)",
    "best_loss": "best monitored loss",
}
CONFIDENCE = 0.95
ALPHA = 0.05
# Fewer seeds than this on either side and a comparison is not judged. With 2 seeds the
# standard deviation rests on a single degree of freedom: Welch's df can fall to 1, where
# the two-sided 5% critical t is 12.7, so only enormous differences could register, and a
# spread estimated from two values is itself too unreliable to call anything "within" it.
MIN_SEEDS = 3


@dataclass(frozen=True)
class Spread:
    """One metric over the seeds of one configuration.

    ``std`` is the sample standard deviation (ddof = 1, the estimate of the seed-to-seed
    spread a new seed would show); ``ci`` the 95% confidence interval of the mean,
    ``mean ± t(0.975, n − 1) · std / sqrt(n)``. Both are None for a single seed.
    """

    n: int
    mean: float
    std: float | None
    min: float
    max: float
    ci: tuple[float, float] | None


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample std, min, max and the 95% confidence interval of ``values`` (n >= 1)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("spread needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Spread(1, mean, None, float(x[0]), float(x[0]), None)
    from scipy import stats

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Spread(int(x.size), mean, std, float(x.min()), float(x.max()), (mean - half, mean + half))


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variances t-test of mean(b) − mean(a)."""

    t: float
    df: float
    p: float  # two-sided


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t statistic, its Welch–Satterthwaite degrees of freedom and two-sided p-value.

    ``t = (mean(b) − mean(a)) / sqrt(s_a²/n_a + s_b²/n_b)``; both sides need 2 values or more.
    When neither side varies at all, t and p are NaN (there is no spread to compare with).
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        raise ValueError("Welch's t-test needs at least 2 values on each side")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    if va + vb == 0:
        return Welch(math.nan, math.nan, math.nan)
    t = float((y.mean() - x.mean()) / math.sqrt(va + vb))
    df = float((va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1)))
    return Welch(t, df, float(2 * stats.t.sf(abs(t), df)))


@dataclass(frozen=True)
class Comparison:
    """Two configurations' values of one metric, and what Welch's test says about them."""

    a: str
    b: str
    metric: str
    a_spread: Spread
    b_spread: Spread
    test: Welch | None
    verdict: str


TOO_FEW = "too few seeds to say"


def compare(a: str, b: str, metric: str, a_values: Sequence[float], b_values: Sequence[float]) -> Comparison:
    """Whether ``b``'s mean differs from ``a``'s by more than the seed-to-seed spread
    (Welch's t-test at α = 0.05). The p-value is given from 2 seeds a side, judged from
    :data:`MIN_SEEDS`."""
    test = welch(a_values, b_values) if min(len(a_values), len(b_values)) >= 2 else None
    if min(len(a_values), len(b_values)) < MIN_SEEDS:
        verdict = TOO_FEW
    elif test is None or math.isnan(test.p):
        verdict = "no seed-to-seed spread to compare with"
    elif test.p < ALPHA:
        verdict = "differs: beyond the seed-to-seed spread"
    else:
        verdict = "within the seed-to-seed spread"
    return Comparison(a, b, metric, spread(a_values), spread(b_values), test, verdict)


# --------------------------------------------------------------------------- from runs
def metric_values(summaries: Sequence[Mapping[str, Any]], metric: str) -> list[float] | None:
    """The metric from every summary, or None when any of them lacks a finite value."""
    values = [s.get(metric) for s in summaries]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def final_statistics(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """metric → its :class:`Spread` as a dict, for every final metric all summaries have."""
    stats = {}
    for metric in FINAL_METRICS:
        values = metric_values(summaries, metric)
        if values is not None:
            stats[metric] = {**asdict(spread(values)), "values": values}
    return stats


def _assignments(config: str) -> dict[str, str]:
    """``lr=0.1,batch_size=8`` (or nested ``a=1/b=2``) → {"lr": "0.1", "batch_size": "8"}."""
    if config == ".":
        return {}
    items = [item for part in config.split("/") for item in split_items(part) if item]
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in items)


# A key swept over more values than this is compared between neighbouring values only
# (lr=0.01 with lr=0.03, not with lr=1): every pair of 30 values would be 435 rows.
ALL_PAIRS_UP_TO = 5


def comparable_pairs(configs: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of configurations that differ in exactly one swept key: the comparisons that
    isolate one choice. Every such pair when that key takes at most :data:`ALL_PAIRS_UP_TO`
    values, else neighbours in the configurations' order."""
    parsed = {c: _assignments(c) for c in configs}
    values: dict[str, list[str]] = {}
    for assignment in parsed.values():
        for key, value in assignment.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    pairs = []
    for i, a in enumerate(configs):
        for b in configs[i + 1 :]:
            pa, pb = parsed[a], parsed[b]
            differing = [k for k in pa if pa[k] != pb.get(k)] if set(pa) == set(pb) else []
            if len(differing) != 1:
                continue
            order = values[differing[0]]
            if len(order) <= ALL_PAIRS_UP_TO or abs(order.index(pa[differing[0]]) - order.index(pb[differing[0]])) == 1:
                pairs.append((a, b))
    return pairs


def compared_metrics(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The metrics comparisons are made on: the monitored loss (validation, else the whole
    training set) and validation accuracy, where every configuration has them."""
    every = [s for members in groups.values() for s in members]
    loss = "val_loss" if metric_values(every, "val_loss") is not None else "train_loss"
    return [m for m in (loss, "val_acc") if metric_values(every, m) is not None]


def comparisons(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Comparison]:
    """Welch comparisons of every comparable pair of configurations on the compared metrics.

    Args:
        groups: configuration (its directory relative to the sweep) → its finished runs' summaries.
    """
    out = []
    for metric in compared_metrics(groups):
        for a, b in comparable_pairs(list(groups)):
            out.append(compare(a, b, metric, metric_values(groups[a], metric), metric_values(groups[b], metric)))
    return out


# --------------------------------------------------------------------------- report
def _g(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _p(value: float) -> str:
    return "—" if math.isnan(value) else (f"{value:.2g}" if value >= 1e-4 else "< 0.0001")


def _spread_table(groups: Mapping[str, Sequence[Mapping[str, Any]]], metric: str, label: Callable[[str], str]) -> list[str]:
    rows = ["| configuration | seeds | mean | std | min | max | 95% CI of the mean |", "|---|---:|---:|---:|---:|---:|---|"]
    for config, members in groups.items():
        values = metric_values(members, metric)
        if values is None:
            continue
        s = spread(values)
        ci = f"[{s.ci[0]:.4g}, {s.ci[1]:.4g}]" if s.ci else f"— ({TOO_FEW})"
        rows.append(f"| `{label(config)}` | {s.n} | {s.mean:.4g} | {_g(s.std)} | {s.min:.4g} | {s.max:.4g} | {ci} |")
    return rows


def _comparison_table(found: Sequence[Comparison], label: Callable[[str], str]) -> list[str]:
    rows = [
        "| A | B | metric | mean A (seeds) | mean B (seeds) | B − A | Welch t | df | p | at α = 0.05 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in found:
        t, df, p = (c.test.t, c.test.df, c.test.p) if c.test else (math.nan, math.nan, math.nan)
        rows.append(
            f"| `{label(c.a)}` | `{label(c.b)}` | {c.metric} | {c.a_spread.mean:.4g} ({c.a_spread.n}) | {c.b_spread.mean:.4g} ({c.b_spread.n}) "
            f"| {c.b_spread.mean - c.a_spread.mean:+.4g} | {_g(t)} | {_g(df)} | {_p(p)} | {c.verdict} |"
        )
    return rows


SECTION_INTRO = """\
Each final metric over the seeds of each configuration: mean, sample standard deviation
(n − 1), min, max and the 95% confidence interval of the mean (Student's t with n − 1 degrees
of freedom). Seeds that did not finish (`done`) are left out."""
COMPARE_INTRO = """\
Configurations that differ in one swept setting, compared with Welch's t-test (two-sided; it
does not assume equal spreads, since small batches vary more from seed to seed). *differs*:
p < 0.05, the difference between the means exceeds what the seed-to-seed spread explains.
*within*: it does not, and more seeds may still find one. Judged only with at least
{min_seeds} seeds a side: with 2, the spread rests on one degree of freedom each and the test can
only register enormous differences."""
ONE_SEED = """\
**Too few seeds to say.** Each configuration has {what}: there is no seed-to-seed spread, so no
confidence interval, and no way to tell whether configurations differ by more than chance.
Sweep the seed too (e.g. `seed=0,1,2,3,4`; at least {min_seeds} to compare)."""


def markdown_section(groups: Mapping[str, Sequence[Mapping[str, Any]]], label: Callable[[str], str], figure: str | None = None) -> str:
    """The report's "Statistics over seeds" section (without its heading).

    Args:
        groups: configuration → its finished runs' summaries (one per seed).
        label: the configuration's name as the report shows it.
        figure: the spread figure's path relative to the report, if drawn.
    """
    most = max((len(m) for m in groups.values()), default=0)
    if most < 2:
        what = "a single run" if len(groups) > 1 else "a single seed"
        return ONE_SEED.format(what=what, min_seeds=MIN_SEEDS)
    parts = [SECTION_INTRO]
    few = [label(c) for c, m in groups.items() if len(m) < MIN_SEEDS]
    if few:
        parts.append(
            f"**Warning: too few seeds** in {', '.join(f'`{f}`' for f in few)} (fewer than {MIN_SEEDS}): "
            "their intervals are wide (none from a single seed), and comparisons with them are not judged."
        )
    if figure:
        parts.append(f"![Final values over seeds]({figure})")
    for metric in FINAL_METRICS:
        rows = _spread_table(groups, metric, label)
        if len(rows) > 2:
            parts.append(f"**{FINAL_METRICS[metric]}** (`{metric}`)\n\n" + "\n".join(rows))
    found = comparisons(groups)
    if found:
        parts.append(COMPARE_INTRO.format(min_seeds=MIN_SEEDS) + "\n\n" + "\n".join(_comparison_table(found, label)))
    return "\n\n".join(parts)


def draw_spread(path: Path, groups: Mapping[str, Sequence[Mapping[str, Any]]], label: Callable[[str], str]) -> Path | None:
    """Each configuration's seeds as dots, their mean as a bar and its 95% CI as whiskers,
    for the first compared metric. Returns the path, or None (and removes an old file) when
    no configuration has two seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = compared_metrics(groups)
    if not metrics or max((len(m) for m in groups.values()), default=0) < 2:
        path.unlink(missing_ok=True)
        return None
    metric = metrics[0]
    fig = Figure(figsize=(9.0, 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = list(groups)
    rng = np.random.default_rng(0)  # horizontal jitter only, so coinciding seeds stay visible
    for x, config in enumerate(names):
        values = metric_values(groups[config], metric)
        s = spread(values)
        ax.scatter(x + rng.uniform(-0.12, 0.12, len(values)), values, s=18, color="0.45", zorder=3)
        ax.hlines(s.mean, x - 0.3, x + 0.3, color="tab:blue", linewidth=2.2, zorder=4)
        if s.ci:
            ax.errorbar(x, s.mean, yerr=[[s.mean - s.ci[0]], [s.ci[1] - s.mean]], color="tab:blue", capsize=8, linewidth=1.4, zorder=4)
    ax.set_xticks(range(len(names)), [label(c) for c in names], rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel(FINAL_METRICS[metric])
    ax.grid(True, axis="y", alpha=0.35)
    fig.suptitle(f"Final {FINAL_METRICS[metric]} over seeds: mean and its 95% confidence interval", fontsize=13, x=0.01, horizontalalignment="left")
    ax.set_title("dots: one seed each; bar: mean; whiskers: 95% CI (Student's t)", fontsize=9, color="0.35", loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path.parent.parent, path, dpi=100)
    return path
