"""The instruments' part of the sweep report: the noise-scale plot and the trajectory figures.

:func:`instrument_sections` is called by :func:`runner.report.write_report` with the report's
configurations (seed groups of run records) and labels; it writes its PNGs next to the
report's own and returns the Markdown to append (empty when no run measured anything). Each
run's noise values come from its event file (``noise/*``), its path from ``trajectory.npz``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from runner import tags
from runner.instruments.trajectory import TRAJECTORY_FILE, PathLine, Trajectory, draw, plane_note, png_bytes
from runner.safefs import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NOISE_PNG = "noise_scale.png"
TRAJECTORY_PNG = "trajectory.png"  # one loss surface shared by every recorded run
TRAJECTORY_PNG_EACH = "trajectory_{}.png"  # else one per run, numbered in report order
TRAJECTORY_IMAGE_TAG = "report/trajectory"
# A batch size within this factor of the critical batch size is "near" it.
NEAR_FACTOR = 2.0
FIGSIZE, DPI = (9.0, 5.0), 100

NOISE_READ = """\
`noise/b_simple` = tr(Σ) / |G|² is the simple gradient noise scale of McCandlish et al. (2018),
measured exactly at the run's weights every `noise.every` iterations: G is the gradient on the whole
training set, tr(Σ) the total variance of one sample's gradient around it (1/n normalisation). A
mini-batch of B samples has gradient noise tr(Σ)/B, as large as |G|² itself at B = B_simple. Below
it, updates are noise-dominated and larger batches buy almost proportionally fewer updates; above
it, the extra samples per update are mostly wasted. Dotted: `noise/b_crit`, the running mean of
B_simple (the critical-batch-size estimate). Grey lines: this sweep's batch sizes."""


def _records(configs: dict[str, list[Any]]) -> list[Any]:
    return [record for members in configs.values() for record in members]


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(count)]


# --------------------------------------------------------------------------- noise
LOSS_TAG = tags.BY_ITERATION + tags.LOSS_FULL  # the whole-training-set loss against the update (epoch 0 and epoch ends)


def loss_at_measurements(record: Any) -> np.ndarray:
    """The whole-training-set loss at each ``noise/b_simple`` measurement, interpolated in the
    update between the epoch-0 and epoch-end evaluations."""
    simple, loss = record.scalars["noise/b_simple"], record.scalars.get(LOSS_TAG)
    if loss is None or not len(loss):
        return np.full(len(simple), np.nan)
    return np.interp(simple.steps.astype(float), loss.steps.astype(float), loss.values.astype(float))


def b_simple_at_loss(losses: np.ndarray, values: np.ndarray, level: float) -> float | None:
    """B_simple where the loss first reached ``level`` (log-log interpolation between the two
    measurements around it); None when it never did."""
    hits = np.flatnonzero(losses <= level)
    if not len(hits):
        return None
    i = int(hits[0])
    if i == 0 or losses[i - 1] <= losses[i]:
        return float(values[i])
    t = (math.log(losses[i - 1]) - math.log(level)) / (math.log(losses[i - 1]) - math.log(losses[i]))
    return float(math.exp(math.log(values[i - 1]) + t * (math.log(values[i]) - math.log(values[i - 1]))))


def critical_batch_size(records: Sequence[Any]) -> tuple[float | None, int, float | None]:
    """B_simple compared at equal training loss: (the median over runs of B_simple where each
    run's loss first reached L*, how many runs gave one, L*).

    B_simple grows as the loss falls, so runs measured at different losses (a full-batch run
    measured once, at the initial weights) are not comparable; L* is the median of the runs'
    lowest loss at a measurement, so about half of the runs reach it and contribute.
    """
    curves = []
    for record in records:
        losses, values = loss_at_measurements(record), record.scalars["noise/b_simple"].values.astype(float)
        keep = np.isfinite(losses) & np.isfinite(values) & (losses > 0) & (values > 0)
        if keep.any():
            curves.append((losses[keep], values[keep]))
    if not curves:
        return None, 0, None
    level = float(np.median([c[0].min() for c in curves]))
    at = [b for b in (b_simple_at_loss(l, v, level) for l, v in curves) if b is not None]
    return (float(np.median(at)) if at else None), len(at), level


def classify(batch_sizes: Sequence[int], critical: float, factor: float = NEAR_FACTOR) -> dict[str, list[int]]:
    """``below`` (B < critical / factor), ``near`` (within the factor), ``above`` (B > critical * factor)."""
    groups: dict[str, list[int]] = {"below": [], "near": [], "above": []}
    for b in sorted(set(batch_sizes)):
        key = "below" if b < critical / factor else "above" if b > critical * factor else "near"
        groups[key].append(b)
    return groups


def _sizes(values: Sequence[int], n_train: int | None) -> str:
    return ", ".join(f"{b} (full)" if b == n_train else str(b) for b in values) or "none"


def batch_size_sentence(batch_sizes: Sequence[int], critical: float, runs: int, n_train: int | None, level: float | None = None) -> str:
    groups = classify(batch_sizes, critical)
    low, high = critical / NEAR_FACTOR, critical * NEAR_FACTOR
    return (
        f"Measured critical batch size: about **{critical:.3g}** (the median over {runs} run{'s' if runs != 1 else ''} "
        f"of B_simple where the whole-training-set loss first reached {level:.3g}: runs compared at equal loss, "
        "since B_simple grows as the loss falls). Rule: a batch size is *near* it within a factor {NEAR_FACTOR:g} "
        f"({low:.3g} ≤ B ≤ {high:.3g}). Below it: {_sizes(groups['below'], n_train)} — noise-dominated updates, "
        f"each sample well used. Near it: {_sizes(groups['near'], n_train)}. Above it: {_sizes(groups['above'], n_train)} "
        "— more samples per update than the gradient's noise calls for."
    )


def _noise_figure(lines: list[tuple[str, Any, Any]], batch_sizes: Sequence[int], n_train: int | None) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, record, color in lines:
        simple, running = record.scalars["noise/b_simple"], record.scalars.get("noise/b_crit")
        # Epochs, not iterations: every batch size then spans the same stretch of training.
        per_epoch = record.summary.get("iterations_per_epoch") or 1
        few = len(simple) <= 30
        ax.plot(simple.steps / per_epoch, simple.values, color=color, linewidth=1.5, marker="o" if few else None, markersize=3, label=label)
        if running is not None:
            ax.plot(running.steps / per_epoch, running.values, color=color, linewidth=1.0, linestyle=":")
    for b in sorted(set(batch_sizes)):
        ax.axhline(b, color="0.45", linewidth=0.8, linestyle="--", zorder=0)
        ax.annotate(f"B={b}{' (full)' if b == n_train else ''}", (0.005, b), xycoords=("axes fraction", "data"),
                    fontsize=7, color="0.3", va="bottom")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (iteration / iterations per epoch): where in training it was measured")
    ax.set_ylabel("B_simple = tr(Σ) / |G|²  (samples)")
    fig.suptitle("Gradient noise scale over training, against this sweep's batch sizes", fontsize=13, x=0.01, horizontalalignment="left")
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return fig


def noise_section(out_dir: Path, configs: dict[str, list[Any]], labels: Any) -> str:
    records = _records(configs)
    measured = [r for r in records if r.has_events and len(r.scalars.get("noise/b_simple", ()))]
    path = out_dir / NOISE_PNG
    if not measured:
        path.unlink(missing_ok=True)
        return ""
    batch_sizes = [r.summary["batch_size"] for r in records if isinstance(r.summary.get("batch_size"), int)]
    n_train = next((r.summary.get("n_train") for r in measured if r.summary.get("n_train")), None)
    colors = _colors(len(measured))
    fig = _noise_figure([(_label(labels, r), r, c) for r, c in zip(measured, colors)], batch_sizes, n_train)
    out_dir.mkdir(parents=True, exist_ok=True)  # only when there is a figure: a run without one gets no folder
    save_figure(fig, out_dir.parent, path, dpi=DPI)
    critical, runs, level = critical_batch_size(measured)
    parts = ["## Gradient noise", "", NOISE_READ, "", f"![Gradient noise scale]({out_dir.name}/{NOISE_PNG})", ""]
    if critical is not None and batch_sizes:
        parts += [batch_size_sentence(batch_sizes, critical, runs, n_train, level), ""]
    parts += [_noise_table([(_label(labels, r), r) for r in measured]), ""]
    return "\n".join(parts)


def _noise_table(rows: Sequence[tuple[str, Any]]) -> str:
    """Per run: B_simple at its first and last measurement, its final running estimate, and
    where the run's own batch size lies against that estimate (the same factor-2 rule)."""
    lines = [
        "| run | batch size | measurements | B_simple first | B_simple last | `noise/b_crit` final | batch size vs it |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, record in rows:
        simple, running = record.scalars["noise/b_simple"], record.scalars.get("noise/b_crit")
        final = float(running.values[-1]) if running is not None and len(running) else math.nan
        batch = record.summary.get("batch_size")
        where = next((k for k, v in classify([batch], final).items() if v), "—") if isinstance(batch, int) and math.isfinite(final) else "—"
        lines.append(
            f"| `{label}` | {batch} | {len(simple)} | {float(simple.values[0]):.4g} | {float(simple.values[-1]):.4g} | {final:.4g} | {where} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- trajectories
def _load_trajectories(records: Sequence[Any]) -> list[tuple[Any, Trajectory]]:
    found = []
    for record in records:
        path = Path(record.path) / TRAJECTORY_FILE
        if path.is_file():
            found.append((record, Trajectory.load(path)))
    return found


REGIMES = {"bgd": "BGD", "sgd": "SGD", "minibatch": "mini-batch"}


def _label(labels: Any, record: Any) -> str:
    """The run's label with its regime: ``batch_size=1 (SGD)``."""
    regime = REGIMES.get(record.summary.get("regime"))
    return f"{labels.run(record)} ({regime})" if regime else labels.run(record)


def _box_area(t: Trajectory) -> float:
    return float((t.alphas[-1] - t.alphas[0]) * (t.betas[-1] - t.betas[0]))


def shared_surface(found: Sequence[tuple[Any, Trajectory]]) -> Trajectory | None:
    """The grid to draw every path over, when all paths lie in one parameter plane of one loss
    surface (2-parameter models, same data, model and loss): the widest of their grids."""
    if not found or any(t.kind != "parameters" for _, t in found) or len({t.surface for _, t in found}) != 1:
        return None
    return max((t for _, t in found), key=_box_area)


def _write_tensorboard_image(out_dir: Path, tag: str, png: bytes) -> None:
    """The combined figure as a TensorBoard image: a run named ``report`` in the report's folder,
    replaced (not appended to) whenever the report is written again."""
    from runner.events import summaries
    from runner.events.writer import EventWriter

    for old in out_dir.glob("events.out.tfevents.*"):
        old.unlink()
    with EventWriter(out_dir) as writer:
        writer.add_summary(summaries.image(tag, png), step=0)


def trajectory_section(out_dir: Path, configs: dict[str, list[Any]], labels: Any, loss_name: str = "") -> str:
    for old in [*out_dir.glob("trajectory*.png"), *out_dir.glob("events.out.tfevents.*")]:
        old.unlink()
    found = _load_trajectories(_records(configs))
    if not found:
        return ""
    ylabel = f"training loss ({loss_name})" if loss_name else "training loss"
    colors = _colors(len(found))
    surface = shared_surface(found)
    parts = ["## Loss-surface trajectories", ""]
    if surface is not None:
        lines = [PathLine(_label(labels, record), t.coords, color, int(t.steps[-1])) for (record, t), color in zip(found, colors)]
        fig = draw(surface, lines, "Paths of the weights over the training-loss contours", plane_note(surface), ylabel)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out_dir.parent, out_dir / TRAJECTORY_PNG, dpi=DPI)
        _write_tensorboard_image(out_dir, TRAJECTORY_IMAGE_TAG, png_bytes(fig))
        parts += [
            "Every run's weights, from the same start (○) to its end (★), over the contours of the loss on the "
            "whole training set (exact at each grid point). Batch gradient descent follows the steepest "
            "descent smoothly; SGD's single-sample gradients zigzag around it; mini-batches lie in between. "
            f"Also in TensorBoard (Images, run `{out_dir.name}`).",
            "",
            f"![Trajectories]({out_dir.name}/{TRAJECTORY_PNG})",
            "",
        ]
        return "\n".join(parts)
    parts += ["Each run's path on its own plane (its loss surface differs, or it has more than two parameters).", ""]
    for number, ((record, t), color) in enumerate(zip(found, colors), start=1):
        name = TRAJECTORY_PNG_EACH.format(number)
        fig = draw(t, [PathLine(_label(labels, record), t.coords, color, int(t.steps[-1]))], f"Path of the weights: {labels.run(record)}", plane_note(t), ylabel)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out_dir.parent, out_dir / name, dpi=DPI)
        parts += [f"![Trajectory of {labels.run(record)}]({out_dir.name}/{name})", ""]
    return "\n".join(parts)


def instrument_sections(out_dir: Path, configs: dict[str, list[Any]], labels: Any, loss_name: str = "") -> str:
    """The Markdown of the instruments' sections ("" when no run has instrument data)."""
    sections = [noise_section(out_dir, configs, labels), trajectory_section(out_dir, configs, labels, loss_name)]
    text = "\n".join(s for s in sections if s)
    return ("\n" + text) if text else ""
