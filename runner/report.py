"""A Markdown report with plots for a run or a sweep: ``python -m runner.report DIR``.

``write_report(root)`` reads every run under ``root`` (``summary.json`` and its event file)
and writes ``<root>/report.md`` and the plots in ``<root>/report/*.png``. The plots are not
put into TensorBoard: its Scalars tab draws the same curves, and a place of their own
would be one more entry in TensorBoard's run list. Seeds of one configuration are drawn as one
line (their mean) with a shaded min–max band; labels keep only the overrides that differ
between configurations. Figures are drawn on matplotlib's Agg canvas directly, so neither
pyplot's global state nor the caller's backend is touched.

The command line also regenerates the seed aggregates (:mod:`runner.aggregate`) so that
TensorBoard and the report agree.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from runner.aggregate import (
    Series,
    align_series,
    event_files,
    find_runs,
    is_positional,
    natural_key,
    read_scalar_series,
    read_summary,
    seed_groups,
    seed_of,
    write_seed_aggregates,
)
from runner.board import board_command
from runner.errors import RunnerError, print_error
from runner.schema import split_items
from runner.safefs import check_no_links, open_inside, save_figure

__all__ = ["PLOTS", "Labels", "PlotSpec", "ReportError", "main", "write_report"]

REPORT_FILE = "report.md"
IMAGES_DIR = "report"
# Above this many points a per-iteration curve is drawn as a moving mean over a faint copy
# of the raw batch losses: raw SGD or small-batch losses are a band of noise that buries
# every other line (gd_compare's batch 8 already has 1800 points, SGD 14380).
SMOOTH_ABOVE = 1_000
# At most this many raw points are drawn under a smoothed line (every k-th): more is a
# solid block of ink at 900 pixels wide, and slow to draw.
RAW_POINTS = 20_000
# The moving mean's window as a fraction of the iteration it ends at: about 25 points per
# decade, smooth enough that SGD's noise (one sample per update) no longer hides the trend,
# fine enough for a 900-pixel-wide log axis. (At 1% the first hundred updates stayed raw.)
SMOOTH_WINDOW = 0.1
# Curves with at most this many points get markers, so one-update-per-epoch runs show their points.
MARKERS_UP_TO = 30
FIGSIZE, DPI = (9.0, 5.0), 100


LOSS_GREW = "loss grew"
# Runs whose curves climb out of the others' range: the y-limits come from the rest.
BLOWN_UP = ("diverged", LOSS_GREW)


class ReportError(RunnerError):
    """The directory holds no runs to report on."""


@dataclass(frozen=True)
class PlotSpec:
    """One figure: which tag against which x-axis, and how to draw it."""

    name: str
    tag: str
    title: str
    xlabel: str
    is_loss: bool = True
    log_x: bool = False
    x_offset: int = 0
    x_scale: float = 1.0
    integer_x: bool = False
    smooth: bool = False
    # Seed bands: the spread of an epoch-level curve across seeds is informative; the
    # min-max of per-sample batch losses is only noise (and touches 0, off a log axis).
    bands: bool = True
    # A difference of losses (gap/loss) crosses 0 and is read on a linear axis.
    log_y: bool = True
    ylabel: str = ""  # instead of the loss's name or "accuracy"
    # A second tag drawn dotted in the same colour, the space between the two shaded.
    companion: str | None = None


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("loss_vs_epoch", "loss/train_full", "Loss on the whole training set at each epoch end", "epoch", integer_x=True),
    PlotSpec(
        "loss_vs_iteration",
        "loss/train_iter",
        "Batch loss at every update",
        "iteration + 1 (parameter updates, log scale)",
        log_x=True,
        bands=False,
        x_offset=1,
        smooth=True,
    ),
    PlotSpec(
        "loss_vs_samples",
        "by_samples/loss/train_full",
        "Whole-training-set loss vs samples seen",
        "training samples seen",
        integer_x=True,
    ),
    PlotSpec(
        "loss_vs_time",
        "by_time_ms/loss/train_full",
        "Whole-training-set loss vs training time",
        "training time (s, evaluation excluded)",
        x_scale=1e-3,
    ),
    PlotSpec("val_loss_vs_epoch", "loss/val", "Validation loss at each epoch end", "epoch", integer_x=True),
    PlotSpec("val_acc_vs_epoch", "acc/val", "Validation accuracy at each epoch end", "epoch", is_loss=False, integer_x=True),
    PlotSpec(
        "train_vs_val_loss",
        "loss/val",
        "Validation loss (solid) and whole-training-set loss (dotted): the shaded space is the gap",
        "epoch",
        integer_x=True,
        bands=False,
        companion="loss/train_full",
    ),
    PlotSpec(
        "gap_loss_vs_epoch",
        "gap/loss",
        "Generalization gap: validation loss − whole-training-set loss at each epoch end",
        "epoch",
        integer_x=True,
        log_y=False,
        ylabel="gap/loss (validation − training)",
    ),
)

# "How to read this": the sentences that apply to what the report shows (a single run is
# not told about seed bands, dashed lines or comparing regimes).
READ_TERMS = """\
An **epoch** is one pass over the training set; an **iteration** is one parameter update.
Batch gradient descent (BGD) makes 1 update per epoch, SGD (batch size 1) makes N, and
mini-batch makes ceil(N / batch size)."""
READ_FULL = """\
`loss/train_full` is the loss on the *whole* training set at the weights at each epoch end{fair};
epoch 0 is the initial weights, before any update{shared}."""
READ_FAIR = ": the fair curve for comparing regimes"
READ_SHARED = ", so runs with the same seed start from the same point"
READ_TAGS = """\
`loss/train_epoch` averages the batch losses seen during the epoch, so under BGD it is the
loss *before* the epoch's single update and lags one update behind `loss/train_full`.
`loss/train_iter` is the loss of the batch each update was computed from: noisy for SGD
and small batches{smooth}. Time is training time only (evaluation excluded)."""
READ_SMOOTH = """\
; above {count} updates it is drawn as a moving mean (its window {window:.0%} of the iteration)
over the faint raw values"""
READ_BANDS = "A line with a shaded band is the mean over seeds, the band their minimum and maximum."
READ_DASHED = """\
Dashed lines are runs that did not finish well (diverged, interrupted, failed, or a loss that
grew by orders of magnitude), drawn on their own; a diverged run stops at its last finite
value and may leave the top of the frame."""
READ_PROBLEM = "The run did not finish well ({status}): its curves are dashed."
READ_TB = """\
TensorBoard draws the same curves, one run per job, and its Custom Scalars tab groups them the
same way: `{board}`."""


# --------------------------------------------------------------------------- the runs
@dataclass(eq=False)
class RunRecord:
    """One run directory with its summary; scalars are read on first use (compared by identity)."""

    path: Path
    rel: str  # relative to the report's root, "." for the root itself
    summary: dict[str, Any]
    config: str  # the seed group's directory for its members, else the run's own path
    seed: int | None  # set for members of a seed group only
    _scalars: dict[str, Series] | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        return str(self.summary.get("status"))

    @property
    def problem(self) -> str | None:
        """Why the run is not a healthy result: its status, or "loss grew" for a ``done`` run
        whose loss grew by orders of magnitude (see :func:`runner.epochs.loss_growth`)."""
        if self.status != "done":
            return self.status
        return LOSS_GREW if self.summary.get("loss_grew") else None

    @property
    def has_events(self) -> bool:
        return bool(event_files(self.path))

    @property
    def scalars(self) -> dict[str, Series]:
        if self._scalars is None:
            self._scalars = read_scalar_series(self.path) if self.has_events else {}
        return self._scalars


def _rel(path: Path, root: Path) -> str:
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


def _load_records(root: Path) -> list[RunRecord]:
    runs = find_runs(root)
    group_of = {run: label for label, members in seed_groups(runs, root).items() for run in members}
    records = []
    for run in runs:
        rel = _rel(run, root)
        grouped = run in group_of
        records.append(
            RunRecord(
                path=run,
                rel=rel,
                summary=read_summary(run),
                config=group_of[run] if grouped else rel,
                seed=seed_of(run) if grouped else None,
            )
        )
    return records


def _configurations(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Configuration → its runs (several only for seed groups), in path order."""
    configs: dict[str, list[RunRecord]] = {}
    for record in records:
        configs.setdefault(record.config, []).append(record)
    return dict(sorted(configs.items(), key=lambda kv: natural_key(kv[0])))


# --------------------------------------------------------------------------- labels
def _tokens(config: str) -> list[str]:
    if config == ".":
        return []
    return [token for part in config.split("/") for token in split_items(part) if token]


def _compact_ints(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0–2, 5"``."""
    values = sorted(values)
    spans: list[list[int]] = []
    for v in values:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in spans)


@dataclass(frozen=True)
class Labels:
    """Short names: each configuration's overrides minus those all configurations share."""

    common: tuple[str, ...]
    distinct: dict[str, str]
    fallback: str

    @classmethod
    def build(cls, configs: Sequence[str], fallback: str) -> Labels:
        token_lists = {c: _tokens(c) for c in configs}
        shared = set.intersection(*(set(t) for t in token_lists.values())) if token_lists else set()
        first = next(iter(token_lists.values()), [])
        common = tuple(t for t in first if t in shared)
        distinct = {c: ", ".join(t for t in tokens if t not in shared) for c, tokens in token_lists.items()}
        return cls(common=common, distinct=distinct, fallback=fallback)

    def config(self, config: str, suffix: str = "") -> str:
        """The configuration's label, with ``suffix`` (seeds, status) appended."""
        base = self.distinct.get(config, "")
        # "(diverged ...)" reads as a remark on what precedes it, not as one more override.
        separator = " " if suffix.startswith("(") else ", "
        text = separator.join(p for p in (base, suffix) if p)
        return text or self.fallback

    def run(self, record: RunRecord) -> str:
        """A single run's label: its configuration plus its seed."""
        return self.config(record.config, f"seed={record.seed}" if record.seed is not None else "")


# --------------------------------------------------------------------------- lines to draw
@dataclass
class Line:
    """One legend entry: a configuration's finished seeds, or one unfinished run."""

    label: str
    runs: list[RunRecord]
    color: Any
    problem: str | None = None  # "diverged", "failed", ... for a run drawn on its own


def _palette(count: int) -> list[Any]:
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, count)]


def _divergence_note(summary: dict[str, Any]) -> str:
    divergence = summary.get("divergence")
    if isinstance(divergence, dict) and divergence.get("iteration") is not None:
        return f"diverged at iteration {divergence['iteration']}"
    return "diverged"


def _growth_note(summary: dict[str, Any]) -> str:
    initial, final = summary.get("initial_train_loss"), summary.get("train_loss")
    if isinstance(initial, (int, float)) and isinstance(final, (int, float)) and initial > 0:
        return f"loss grew {final / initial:.3g}x"
    return LOSS_GREW


def _problem_suffix(record: RunRecord) -> str:
    seed = f"seed={record.seed} " if record.seed is not None else ""
    if record.problem == "diverged":
        note = _divergence_note(record.summary)
    elif record.problem == LOSS_GREW:
        note = _growth_note(record.summary)
    else:
        note = record.status
    return f"{seed}({note})"


def _lines(configs: dict[str, list[RunRecord]], labels: Labels) -> list[Line]:
    colors = dict(zip(configs, _palette(len(configs))))
    lines = []
    for config, members in configs.items():
        finished = [r for r in members if r.problem is None and r.has_events]
        if finished:
            seeds = [r.seed for r in finished if r.seed is not None]
            if len(finished) > 1:
                suffix = f"mean of seeds {_compact_ints(seeds)}"
            else:
                # Name the seed only where its siblings are missing from the line.
                suffix = f"seed={seeds[0]}" if seeds and len(members) > 1 else ""
            lines.append(Line(labels.config(config, suffix), finished, colors[config]))
        for record in members:
            if record not in finished and record.has_events:
                lines.append(Line(labels.config(config, _problem_suffix(record)), [record], colors[config], record.problem))
    return lines


# --------------------------------------------------------------------------- curves
@dataclass
class Curve:
    """What one line puts on one plot."""

    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    note: str = ""
    raw: Curve | None = None  # the unsmoothed values under a smoothed curve
    companion: Curve | None = None  # PlotSpec.companion's curve, drawn dotted


def _finite_prefix(series: Series) -> Series:
    """The points before the first non-finite value: a diverged run's drawable part."""
    bad = np.flatnonzero(~np.isfinite(series.values))
    end = int(bad[0]) if len(bad) else len(series)
    return Series(series.steps[:end], series.values[:end], series.wall_times[:end])


def _moving_mean(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean of each window ``values[start : start + size]``."""
    return np.add.reduceat(values.astype(np.float64), starts) / sizes


def _smoothed(curve: Curve) -> Curve:
    """A moving mean whose window grows with the iteration (a constant width on a log axis).

    A fixed window would either blur the first hundred updates or leave the last decade,
    which holds most of the points, as noisy as before.
    """
    count = len(curve.x)
    bins = int(math.log(count) / math.log1p(SMOOTH_WINDOW)) + 1
    edges = np.unique(np.rint(np.geomspace(1, count + 1, bins + 1)).astype(np.int64)) - 1
    starts, sizes = edges[:-1], np.diff(edges)

    def mean(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else _moving_mean(values, starts, sizes)

    return Curve(
        x=mean(curve.x),
        y=mean(curve.y),
        low=mean(curve.low),
        high=mean(curve.high),
        note="moving mean",
        raw=curve,
    )


def _curve(line: Line, spec: PlotSpec) -> Curve | None:
    series = [r.scalars[spec.tag] for r in line.runs if spec.tag in r.scalars]
    series = [s for s in (_finite_prefix(s) for s in series) if len(s)]
    if not series:
        return None
    # Also for a single run: one point per step, in step order, should a resumed run
    # have logged a step twice.
    stats = align_series(series, positional=is_positional(spec.tag))
    if not len(stats.steps):
        return None
    band = len(series) > 1
    curve = Curve(
        x=stats.steps.astype(np.float64),
        y=stats.mean,
        low=stats.min.astype(np.float64) if band else None,
        high=stats.max.astype(np.float64) if band else None,
    )
    curve.x = (curve.x + spec.x_offset) * spec.x_scale
    if spec.smooth and len(curve.x) > SMOOTH_ABOVE:
        curve = _smoothed(curve)
    return curve


# --------------------------------------------------------------------------- figures
def _curve_values(curve: Curve) -> np.ndarray:
    parts = [curve.y] + [p for p in (curve.low, curve.high) if p is not None]
    if curve.companion is not None:
        parts.append(curve.companion.y)
    values = np.concatenate(parts)
    return values[np.isfinite(values)]


def _scale_y(ax: Any, spec: PlotSpec, drawn: list[tuple[Line, Curve]]) -> None:
    """Log y for non-negative losses (zeros are masked); limits from the other runs when some diverged."""
    healthy = [c for line, c in drawn if line.problem not in BLOWN_UP]
    reference = healthy or [c for _, c in drawn]
    values = np.concatenate([_curve_values(c) for c in reference])
    if not len(values):
        return
    # A per-sample loss can be exactly 0 in float32 (a confidently right SGD sample): that
    # must not flip the whole plot to a linear axis, where SGD's spikes flatten everything.
    positive = values[values > 0]
    log = spec.is_loss and spec.log_y and bool((values >= 0).all()) and len(positive) > 0
    if log:
        values = positive
        ax.set_yscale("log", nonpositive="mask")
        # Plain numbers (0.6, 1e-05) rather than 6×10⁻¹; minor ticks are labelled only
        # when the curves span too few decades for the major ticks alone to be read.
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        narrow = math.log10(float(values.max()) / float(values.min())) < 1.3
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if narrow else NullFormatter())
    # The faint raw values under a smoothed line reach far below it (single-sample losses
    # near 0): the frame follows the drawn lines, not the noise.
    under_smoothed = any(c.raw is not None for _, c in drawn)
    if (healthy and len(healthy) < len(drawn)) or under_smoothed:
        # A diverging run climbs by tens of orders of magnitude; let it leave the frame
        # instead of flattening everyone else's curve.
        low, high = float(values.min()), float(values.max())
        if log:
            ax.set_ylim(low / 1.5, high * 3)
        else:
            pad = 0.05 * (high - low or abs(high) or 1.0)
            ax.set_ylim(low - pad, high + 4 * pad)


def _legend(fig: Figure, ax: Any, count: int) -> None:
    handles, texts = ax.get_legend_handles_labels()
    if not handles:
        return
    wrapped = [textwrap.fill(t, 48) for t in texts]
    if count <= 6 and max(len(t) for t in texts) <= 48:
        ax.legend(handles, wrapped, loc="best", fontsize=8, framealpha=0.85)
    else:
        fig.legend(handles, wrapped, loc="outside right upper", fontsize=8)


def _mark_divergence(ax: Any, spec: PlotSpec, line: Line) -> None:
    """A dotted vertical line where a run diverged, on plots whose x-axis is the iteration."""
    if line.problem != "diverged" or spec.tag != "loss/train_iter":
        return
    divergence = line.runs[0].summary.get("divergence")
    if isinstance(divergence, dict) and isinstance(divergence.get("iteration"), int):
        x = (divergence["iteration"] + spec.x_offset) * spec.x_scale
        ax.axvline(x, color=line.color, linestyle=":", linewidth=1.2, alpha=0.8)


def _mark_best_epoch(ax: Any, spec: PlotSpec, line: Line, curve: Curve) -> None:
    """A ring on a single run's validation (and gap) curve where its monitored loss was lowest:
    when it is not the last epoch, the epochs after it fitted the training set at validation's cost."""
    if spec.tag not in BEST_EPOCH_TAGS or len(line.runs) != 1:
        return
    best = line.runs[0].summary.get("best_epoch")
    if not isinstance(best, int) or best not in list(curve.x):
        return
    y = curve.y[list(curve.x).index(best)]
    ax.plot([best], [y], marker="o", markersize=10, markerfacecolor="none", markeredgecolor=line.color, linestyle="none")
    if best < curve.x[-1]:
        ax.axvline(best, color=line.color, linestyle=":", linewidth=1.0, alpha=0.7)
        ax.annotate(f"best epoch {best}", (best, y), xytext=(6, 10), textcoords="offset points", fontsize=8, color=line.color)


def _draw_companion(ax: Any, spec: PlotSpec, line: Line, curve: Curve) -> None:
    """The companion tag dotted in the line's colour, and the space between it and the main
    curve shaded: for validation vs training loss, the generalization gap itself."""
    if spec.companion is None:
        return
    other = _curve(line, replace(spec, tag=spec.companion, companion=None))
    if other is None:
        return
    curve.companion = other  # its values count for the y-axis limits and ticks
    ax.plot(other.x, other.y, color=line.color, linestyle=":", linewidth=1.4, zorder=3)
    x, mine, theirs = np.intersect1d(curve.x, other.x, return_indices=True)
    ax.fill_between(x, curve.y[mine], other.y[theirs], color=line.color, alpha=0.12, linewidth=0)


# The epoch-axis plots that mark a single run's best epoch (runner.epochs._track_best).
BEST_EPOCH_TAGS = ("loss/val", "gap/loss")


def _draw_raw(ax: Any, curve: Curve, color: Any) -> None:
    """The raw values under a smoothed line: faint and thin, every k-th point when there are many."""
    raw = curve.raw
    stride = max(1, math.ceil(len(raw.x) / RAW_POINTS))
    ax.plot(raw.x[::stride], raw.y[::stride], color=color, linewidth=0.5, alpha=0.18, zorder=1)


def _draw(spec: PlotSpec, lines: Sequence[Line], subtitle: str, ylabel: str) -> Figure | None:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn: list[tuple[Line, Curve]] = []
    for line in lines:
        curve = _curve(line, spec)
        if curve is None:
            if line.problem is not None:
                # Listed anyway, so a run that diverged before this plot's first point is not silently missing.
                ax.plot([], [], color=line.color, linestyle="--", label=f"{line.label}: no finite points")
            continue
        label = f"{line.label} [{curve.note}]" if curve.note else line.label
        few = len(curve.x) <= MARKERS_UP_TO
        if curve.raw is not None:
            _draw_raw(ax, curve, line.color)
        ax.plot(
            curve.x,
            curve.y,
            color=line.color,
            linestyle="--" if line.problem else "-",
            linewidth=1.6,
            marker="o" if few else None,
            markersize=3.5,
            label=label,
            zorder=3,
        )
        if curve.low is not None and spec.bands:
            ax.fill_between(curve.x, curve.low, curve.high, color=line.color, alpha=0.18, linewidth=0)
        _mark_divergence(ax, spec, line)
        _draw_companion(ax, spec, line, curve)
        _mark_best_epoch(ax, spec, line, curve)
        drawn.append((line, curve))
    if not drawn:
        return None
    if spec.log_x:
        ax.set_xscale("log")
    elif spec.integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _scale_y(ax, spec, drawn)
    fig.suptitle(spec.title, fontsize=13, x=0.01, horizontalalignment="left")
    if subtitle:
        ax.set_title(subtitle, fontsize=9, color="0.35", loc="left")
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel or (ylabel if spec.is_loss else "accuracy (fraction correct)"))
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    _legend(fig, ax, len(ax.get_legend_handles_labels()[0]))
    return fig


def _loss_name(records: Sequence[RunRecord]) -> str:
    """The loss class the runs used, from Hydra's record of their config, if they agree.

    Runs without a readable config (e.g. ones that failed before starting) do not count.
    """
    names = set()
    for record in records:
        try:
            config = yaml.safe_load((record.path / ".hydra" / "config.yaml").read_text())
            names.add(str(config["loss"]["_target_"]).rsplit(".", 1)[-1])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
    return names.pop() if len(names) == 1 else ""


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _write_plots(out_dir: Path, lines: Sequence[Line], subtitle: str, loss_name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ylabel = f"loss ({loss_name})" if loss_name else "loss"
    written = []
    for spec in PLOTS:
        path = out_dir / f"{spec.name}.png"
        fig = _draw(spec, lines, subtitle, ylabel)
        if fig is None:
            # A plot this sweep cannot have (no validation, nothing finite): drop an old one.
            path.unlink(missing_ok=True)
            continue
        save_figure(fig, out_dir.parent, path, dpi=DPI)
        written.append(path)
    return written


# --------------------------------------------------------------------------- Markdown
def _fmt(value: Any) -> str:
    """4 significant digits for floats, exact integers, "—" for missing values."""
    if value is None or isinstance(value, (dict, list)):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return _cell(str(value))


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, no column breaks."""
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def _notes(summary: dict[str, Any]) -> str:
    status = summary.get("status")
    if status == "diverged":
        d = summary.get("divergence")
        if isinstance(d, dict) and d.get("iteration") is not None:
            lr = d.get("lr")
            where = f"epoch {d.get('epoch')}" + (f", lr {lr:.4g}" if isinstance(lr, (int, float)) else "")
            return f"non-finite loss at iteration {d['iteration']} ({where})"
        return "non-finite loss"
    if summary.get("error"):
        return _cell(_shorten(str(summary["error"]).strip(), 200))
    notes = [_cell(str(w)) for w in summary.get("warnings") or []]
    if summary.get("stopped_early"):
        notes.append("stopped early")
    best, epochs = summary.get("best_epoch"), summary.get("epochs")
    if isinstance(best, int) and isinstance(epochs, int) and best < epochs:
        notes.append(f"lowest {'val' if summary.get('val_loss') is not None else 'train'} loss at epoch {best} of {epochs}")
    if summary.get("restored_best"):
        notes.append(f"model.pt holds epoch {best}'s weights (early_stopping_restore_best)")
    return "; ".join(notes)


COLUMNS = (
    ("run", None),
    ("status", "status"),
    ("N", "n_train"),
    ("batch size", "batch_size"),
    ("iterations/epoch", "iterations_per_epoch"),
    ("total updates", "iterations"),
    ("samples seen", "samples_seen"),
    ("seconds/epoch", "seconds_per_epoch"),
    ("final train loss", "train_loss"),
    ("val loss", "val_loss"),
    ("val acc", "val_acc"),
    ("best epoch", "best_epoch"),
    ("notes", None),
)


def _row(name: str, summary: dict[str, Any], notes: str) -> str:
    cells = [f"`{name}`"]
    cells += [_fmt(summary.get(key)) for title, key in COLUMNS[1:-1]]
    if summary.get("loss_grew"):
        cells[1] += f" ({LOSS_GREW})"
    cells.append(notes)
    return "| " + " | ".join(cells) + " |"


def _mean_row(name: str, members: Sequence[RunRecord]) -> str:
    """A seed group's mean of the finished members; shared counts shown once."""
    summaries = [m.summary for m in members]
    merged: dict[str, Any] = {"status": f"mean of {len(members)}"}
    for _, key in COLUMNS[2:-1]:
        values = [s.get(key) for s in summaries]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if all(isinstance(v, int) for v in values):
                merged[key] = values[0] if len(set(values)) == 1 else None
            else:
                merged[key] = float(np.mean(values))
    return _row(name, merged, "").replace(f"`{name}`", f"**`{name}`**", 1)


def _table(configs: dict[str, list[RunRecord]], labels: Labels) -> str:
    header = "| " + " | ".join(title for title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in (None, "status") else "---:" for _, key in COLUMNS) + "|"
    rows = [header, rule]
    for config, members in configs.items():
        for record in members:
            rows.append(_row(labels.run(record), record.summary, _notes(record.summary)))
        finished = [r for r in members if r.problem is None]
        if len(finished) > 1 and all(r.seed is not None for r in finished):
            seeds = _compact_ints([r.seed for r in finished])
            rows.append(_mean_row(labels.config(config, f"mean of seeds {seeds}"), finished))
    return "\n".join(rows)


def _status_counts(records: Sequence[RunRecord]) -> str:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    grew = sum(1 for record in records if record.problem == LOSS_GREW)
    return text + (f" ({grew} of them with a loss that grew by orders of magnitude)" if grew else "")


def _display_name(root: Path) -> str:
    """The directory's name, with its parent's when the name alone is just ``seed=<k>``."""
    resolved = root.resolve()
    return f"{resolved.parent.name}/{resolved.name}" if seed_of(resolved) is not None else resolved.name


def _how_to_read(root: Path, records: Sequence[RunRecord], configs: dict[str, list[RunRecord]], pngs: Sequence[Path]) -> str:
    """The reading notes that apply: a single run hears nothing of seeds, bands or comparisons."""
    several = len(records) > 1
    smoothed = any(len(r.scalars.get("loss/train_iter", ())) > SMOOTH_ABOVE for r in records if r.has_events)
    tags = READ_TAGS.format(smooth=READ_SMOOTH.format(count=SMOOTH_ABOVE, window=SMOOTH_WINDOW) if smoothed else "")
    full = READ_FULL.format(fair=READ_FAIR if len(configs) > 1 else "", shared=READ_SHARED if several else "")
    paragraphs = [READ_TERMS + "\n" + full + "\n" + tags]
    if several and any(len([r for r in members if r.problem is None]) > 1 for members in configs.values()):
        paragraphs.append(READ_BANDS)
    problems = [r for r in records if r.problem is not None and r.has_events]
    if several and problems:
        paragraphs.append(READ_DASHED)
    elif problems:
        paragraphs.append(READ_PROBLEM.format(status=_problem_suffix(problems[0]).strip("()")))
    paragraphs.append(READ_TB.format(board=board_command(root)))
    return "\n\n".join(paragraphs)


def _markdown(root: Path, records: Sequence[RunRecord], configs: dict[str, list[RunRecord]], labels: Labels, pngs: Sequence[Path]) -> str:
    title = _display_name(root)
    if len(records) == 1:
        source = f"the run in `{root}`: {records[0].status}" + (f" ({_growth_note(records[0].summary)})" if records[0].problem == LOSS_GREW else "")
    else:
        source = f"{len(records)} runs in `{root}`: {_status_counts(records)}"
    parts = [f"# Report: {title}", "", f"Generated {datetime.now():%Y-%m-%d %H:%M} from {source}."]
    if labels.common and len(configs) > 1:
        parts += ["", "Settings shared by every run (left out of the labels): " + ", ".join(f"`{t}`" for t in labels.common) + "."]
    parts += ["", "## How to read this", "", _how_to_read(root, records, configs, pngs)]
    no_curves = [labels.run(r) for r in records if not r.has_events]
    if no_curves:
        parts += ["", "Runs without TensorBoard logs (not plotted): " + ", ".join(f"`{n}`" for n in no_curves) + "."]
    parts += ["", "## Plots", ""]
    titles = {spec.name: spec.title for spec in PLOTS}
    for png in pngs:
        parts += [f"### {titles[png.stem]}", "", f"![{titles[png.stem]}]({IMAGES_DIR}/{png.name})", ""]
    if not pngs:
        parts += ["No run has finite logged values to plot.", ""]
    parts += ["## Runs" if len(records) > 1 else "## The run", "", _table(configs, labels), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- statistics over seeds
SEED_FIGURE = "final_over_seeds.png"


def _seed_statistics(root: Path, records: Sequence[RunRecord], configs: dict[str, list[RunRecord]], labels: Labels) -> str:
    """The "Statistics over seeds" section (:mod:`runner.seedstats`), for sweeps with seeds
    or with several configurations; empty for a lone run."""
    from runner.seedstats import draw_spread, markdown_section

    figure = root / IMAGES_DIR / SEED_FIGURE
    if len(configs) < 2 and not any(r.seed is not None for r in records):
        figure.unlink(missing_ok=True)
        return ""
    groups = {config: [r.summary for r in members if r.status == "done"] for config, members in configs.items()}
    groups = {config: members for config, members in groups.items() if members}
    if not groups:
        return ""
    drawn = draw_spread(figure, groups, labels.config)
    section = markdown_section(groups, labels.config, f"{IMAGES_DIR}/{SEED_FIGURE}" if drawn else None)
    return "\n## Statistics over seeds\n\n" + section + "\n"


# --------------------------------------------------------------------------- entry points
def write_report(root: Path) -> Path:
    """Writes ``<root>/report.md`` and ``<root>/report/*.png``.

    Args:
        root: a run directory, a sweep, or any directory above runs.

    Returns:
        The path of ``report.md``.

    Raises:
        ReportError: no run directory (``summary.json``) is in or below ``root``.
    """
    root = Path(root)
    records = _load_records(root)
    if not records:
        raise ReportError(f"{root}: not a run or sweep directory (no summary.json in it or below it)")
    configs = _configurations(records)
    labels = Labels.build(list(configs), fallback=_display_name(root))
    lines = _lines(configs, labels)
    subtitle = _shorten(", ".join(labels.common), 110) if len(configs) > 1 else labels.fallback
    pngs = _write_plots(root / IMAGES_DIR, lines, subtitle, _loss_name(records))
    report = root / REPORT_FILE
    # The instruments' sections (gradient noise, trajectories) follow, when any run has their data.
    from runner.instruments.sections import instrument_sections  # imports torch: only when reporting

    instruments = instrument_sections(root / IMAGES_DIR, configs, labels, _loss_name(records))
    text = _markdown(root, records, configs, labels, pngs) + _seed_statistics(root, records, configs, labels) + instruments
    with open_inside(root, report, "w") as handle:
        handle.write(text)
    return report


def _problem_with(root: Path) -> str | None:
    if not root.exists():
        return f"{root}: no such directory"
    if not root.is_dir():
        return f"{root}: not a directory"
    if not find_runs(root):
        return f"{root}: not a run or sweep directory (no summary.json in it or below it)"
    try:
        check_no_links(root)  # before the seed aggregates or the report write anything
    except RunnerError as err:
        return str(err)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m runner.report DIR``: seed aggregates, then the report.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 when ``DIR`` holds no runs (one line on stderr names it).
    """
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Write report.md and plots for a run or sweep directory, with seed aggregates.",
    )
    parser.add_argument("directory", type=Path, help="a run directory or a sweep (multirun) directory")
    args = parser.parse_args(argv)
    root: Path = args.directory
    problem = _problem_with(root)
    if problem:
        print_error(problem)
        return 2
    write_seed_aggregates(root)
    print(write_report(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
