"""The report's figures: one line per configuration in its own colour, seeds as a min–max band, legends beside the axes."""

# Figures are drawn on matplotlib's Agg canvas directly, so neither pyplot's global state nor
# the caller's backend is touched. matplotlib is imported where a figure is drawn (0.7 s): a
# report without figures (a single run's, by default) never loads it.

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from runner import tags
from runner.aggregate import align_series, is_positional
from runner.events.read import Series
from runner.safefs import save_figure
from runner.report.records import LOSS_GREW, Labels, RunRecord, compact_ints, problem_suffix

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
# Legend text is wrapped at this many characters (it sits right of the axes, in their height).
LEGEND_WRAP = 34
# The title is wrapped at this many characters, so it ends before the legend begins.
TITLE_WRAP = 64

# Runs whose curves climb out of the others' range: the y-limits come from the rest.
BLOWN_UP = ("diverged", LOSS_GREW)


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
    # A difference of losses (overfit_gap/loss) crosses 0 and is read on a linear axis.
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
        tags.BY_SAMPLES + tags.LOSS_FULL,
        "Whole-training-set loss vs samples seen",
        "training samples seen",
        integer_x=True,
    ),
    PlotSpec(
        "loss_vs_time",
        tags.BY_TIME_MS + tags.LOSS_FULL,
        "Whole-training-set loss vs training time",
        "training time (s, evaluation excluded)",
        x_scale=1e-3,
    ),
    PlotSpec("val_loss_vs_epoch", "loss/val", "Validation loss at each epoch end", "epoch", integer_x=True),
    PlotSpec("val_acc_vs_epoch", tags.ACC_VAL, "Validation accuracy at each epoch end", "epoch", is_loss=False, integer_x=True),
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
        tags.GAP_LOSS,
        "Generalization gap: validation loss − whole-training-set loss at each epoch end",
        "epoch",
        integer_x=True,
        log_y=False,
        ylabel="overfit_gap/loss (validation − training)",
    ),
)

# One line (a single run, or one configuration's seeds) compares nothing: by samples and by
# time it is the epoch curve on another axis, and the validation/training pair is drawn with
# its gap in one figure. Only these are drawn for it, the first that draws of each group:
# a run without a validation set gets the training loss by epoch instead.
SINGLE_LINE_PLOTS: tuple[tuple[str, ...], ...] = (
    ("loss_vs_iteration",),
    ("train_vs_val_loss", "loss_vs_epoch"),
    ("val_acc_vs_epoch",),
)

# --------------------------------------------------------------------------- lines to draw
@dataclass
class Line:
    """One legend entry: a configuration's finished seeds, or one unfinished run."""

    label: str
    runs: list[RunRecord]
    color: Any
    problem: str | None = None  # "diverged", "failed", ... for a run drawn on its own


def palette(count: int) -> list[Any]:
    """``count`` distinct colours, one per configuration: matplotlib's qualitative ``tab10``;
    above 10 its ``tab20`` with the ten strong shades first, so neighbours never get a light
    and a dark shade of one hue; above 20 evenly spaced hues of ``turbo``."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        strong_first = [*range(0, 20, 2), *range(1, 20, 2)]
        return [colormaps["tab20"](i) for i in strong_first[:count]]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, count)]


def lines_of(configs: dict[str, list[RunRecord]], labels: Labels) -> list[Line]:
    """One line per configuration (its finished seeds, in one colour), plus one per run that did
    not finish well, dashed in its configuration's colour."""
    colors = dict(zip(configs, palette(len(configs))))
    lines = []
    for config, members in configs.items():
        finished = [r for r in members if r.problem is None and r.has_events]
        if finished:
            seeds = [r.seed for r in finished if r.seed is not None]
            if len(finished) > 1:
                suffix = f"mean of seeds {compact_ints(seeds)}"
            else:
                # Name the seed only where its siblings are missing from the line.
                suffix = f"seed={seeds[0]}" if seeds and len(members) > 1 else ""
            lines.append(Line(labels.config(config, suffix), finished, colors[config]))
        for record in members:
            if record not in finished and record.has_events:
                lines.append(Line(labels.config(config, problem_suffix(record)), [record], colors[config], record.problem))
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


def finite_prefix(series: Series) -> Series:
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


def curve_of(line: Line, spec: PlotSpec) -> Curve | None:
    """The line's points on the plot: its seeds' mean (and min–max), finite values only."""
    series = [r.scalars[spec.tag] for r in line.runs if spec.tag in r.scalars]
    series = [s for s in (finite_prefix(s) for s in series) if len(s)]
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
        from matplotlib.ticker import FuncFormatter, NullFormatter

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


def legend_outside(fig: Figure, ax: Any) -> None:
    """The legend right of the axes, never over a curve; long labels wrapped."""
    handles, texts = ax.get_legend_handles_labels()
    if handles:
        wrapped = [textwrap.fill(t, LEGEND_WRAP) for t in texts]
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
    other = curve_of(line, replace(spec, tag=spec.companion, companion=None))
    if other is None:
        return
    curve.companion = other  # its values count for the y-axis limits and ticks
    ax.plot(other.x, other.y, color=line.color, linestyle=":", linewidth=1.4, zorder=3)
    x, mine, theirs = np.intersect1d(curve.x, other.x, return_indices=True)
    ax.fill_between(x, curve.y[mine], other.y[theirs], color=line.color, alpha=0.12, linewidth=0)


# The epoch-axis plots that mark a single run's best epoch (runner.epochs._track_best).
BEST_EPOCH_TAGS = (tags.LOSS_VAL, tags.GAP_LOSS)


def _draw_raw(ax: Any, curve: Curve, color: Any) -> None:
    """The raw values under a smoothed line: faint and thin, every k-th point when there are many."""
    raw = curve.raw
    stride = max(1, math.ceil(len(raw.x) / RAW_POINTS))
    ax.plot(raw.x[::stride], raw.y[::stride], color=color, linewidth=0.5, alpha=0.18, zorder=1)


def draw(spec: PlotSpec, lines: Sequence[Line], subtitle: str, ylabel: str) -> Figure | None:
    """The figure of ``spec`` for ``lines``; None when no line has a point on it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn: list[tuple[Line, Curve]] = []
    for line in lines:
        curve = curve_of(line, spec)
        if curve is None:
            if line.problem is not None:
                # Listed anyway, so a run that diverged before this plot's first point is not silently missing.
                ax.plot([], [], color=line.color, linestyle="--", label=f"{line.label}: no finite points")
            continue
        label = f"{line.label} [{curve.note}]" if curve.note else line.label
        few = len(curve.x) <= MARKERS_UP_TO
        # Lines of a few points (BGD: one update per epoch) go over the dense ones, so
        # they stay visible where the curves meet.
        zorder = 4 if few else 3
        if curve.raw is not None:
            _draw_raw(ax, curve, line.color)
        ax.plot(
            curve.x,
            curve.y,
            color=line.color,
            linestyle="--" if line.problem else "-",
            linewidth=1.6,
            marker="o" if few else None,
            markersize=4.5,
            label=label,
            zorder=zorder,
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
    # Wrapped short of the legend, which starts at the top right.
    fig.suptitle(textwrap.fill(spec.title, TITLE_WRAP), fontsize=13, x=0.01, horizontalalignment="left")
    if subtitle:
        ax.set_title(subtitle, fontsize=9, color="0.35", loc="left")
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel or (ylabel if spec.is_loss else "accuracy (fraction correct)"))
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    legend_outside(fig, ax)
    return fig


@dataclass(frozen=True)
class PlotFiles:
    """The report's plots: drawn now, and kept from an earlier report."""

    written: tuple[Path, ...]
    kept: tuple[Path, ...]

    @property
    def all(self) -> list[Path]:
        """Every plot the report shows, in :data:`PLOTS` order."""
        order = {f"{spec.name}.png": i for i, spec in enumerate(PLOTS)}
        return sorted([*self.written, *self.kept], key=lambda p: order[p.name])


def write_plots(out_dir: Path, lines: Sequence[Line], subtitle: str, loss_name: str, keep_existing: bool = False) -> PlotFiles:
    """Draws the plots of :data:`PLOTS` that ``lines`` need into ``out_dir`` (for a single
    line, :data:`SINGLE_LINE_PLOTS`; none for no lines); a plot they do not need is removed
    from an earlier report.

    Args:
        keep_existing: some run's log could not be read whole: an existing plot is kept as it
            is (not redrawn from less, not deleted); only plots missing so far are drawn.
    """
    ylabel = f"loss ({loss_name})" if loss_name else "loss"
    groups = [(spec.name,) for spec in PLOTS] if len(lines) > 1 else SINGLE_LINE_PLOTS if lines else ()
    if groups:
        out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {spec.name: spec for spec in PLOTS}
    written, kept = [], []
    for group in groups:
        for name in group:
            path = out_dir / f"{name}.png"
            if keep_existing and path.exists():
                kept.append(path)
                break
            fig = draw(by_name[name], lines, subtitle, ylabel)
            if fig is not None:
                save_figure(fig, out_dir.parent, path, dpi=DPI)
                written.append(path)
                break
    if not keep_existing:
        # A plot these lines cannot have or do not need (no validation, nothing finite, one
        # line): an old one from an earlier report would be shown as if it were current.
        for spec in PLOTS:
            path = out_dir / f"{spec.name}.png"
            if path not in written:
                path.unlink(missing_ok=True)
    return PlotFiles(tuple(written), tuple(kept))
