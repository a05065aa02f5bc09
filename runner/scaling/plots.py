"""The study's figures: S against B with the fit and its regimes, the S–E frontier, B_simple against the loss."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from runner.safefs import save_figure
from runner.scaling.grid import B_SIMPLE_TAG, TAG

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STEPS_PNG = "scaling_steps.png"
FRONTIER_PNG = "scaling_frontier.png"
NOISE_PNG = "scaling_noise.png"
FIGSIZE, DPI = (8.0, 5.0), 100
# The regimes, as the fit's B_crit sets them: doubling B cuts S by >= 40% below B_crit/4,
# by <= 10% above 4 B_crit.
REGIME_FACTOR = 4.0


def _axes() -> tuple[Figure, Any]:
    """A figure of the study's size with one axes (no pyplot: no global state, any thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: a report without a study never loads matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _log_log(ax: Any, xlabel: str, ylabel: str, title: str, *, xbase: float = 10, legend_loc: str = "best") -> None:
    """What every figure of the study shares: log-log axes, labels, a small legend, a faint grid."""
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc=legend_loc)
    ax.grid(True, which="both", alpha=0.2)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    save_figure(fig, path.parent, path, dpi=DPI)  # never through a link planted in the sweep
    return path


def _label(b: int, n_train: int | None) -> str:
    return f"{b} (full)" if b == n_train else str(b)


def steps_plot(result: dict[str, Any], path: Path, n_train: int | None) -> Path:
    """S against B (log–log): measured points with their seed range, the perfect-scaling line
    through the smallest batch, the fitted S_min (1 + B_crit / B), the three regimes shaded."""
    points, fitted = result["points"], result["fit"]
    b = np.array([p["batch_size"] for p in points], dtype=float)
    s = np.array([p["steps"] for p in points], dtype=float)
    fig, ax = _axes()
    lo, hi = b.min() / 1.5, b.max() * 1.5
    if fitted is not None:
        bc = fitted["B_crit"]
        for left, right, color, name in (
            (lo, bc / REGIME_FACTOR, "tab:green", "perfect scaling"),
            (bc / REGIME_FACTOR, bc * REGIME_FACTOR, "tab:orange", "diminishing returns"),
            (bc * REGIME_FACTOR, hi, "tab:red", "plateau"),
        ):
            if right > left and right > lo and left < hi:
                ax.axvspan(max(left, lo), min(right, hi), color=color, alpha=0.1, label=name)
        grid = np.geomspace(lo, hi, 200)
        ax.plot(grid, fitted["S_min"] * (1 + bc / grid), color="black", label=f"fit: S_min={fitted['S_min']:.3g}, B_crit={bc:.3g}")
        ax.axvline(bc, color="black", linestyle=":", linewidth=1)
    ax.plot([b[0], hi], [s[0], s[0] * b[0] / hi], color="grey", linestyle="--", label="perfect scaling (S ∝ 1/B)")
    low = [p["steps_range"][0] for p in points]
    high = [p["steps_range"][1] if p["steps_range"][1] is not None else p["steps"] for p in points]
    ax.errorbar(b, s, yerr=[s - np.array(low, float), np.array(high, float) - s], fmt="o", color="tab:blue", capsize=3, label="measured (median, seed range)")
    _log_log(ax, "batch size B", "updates to target S", f"Updates to reach training loss ≤ {result['target']['value']:g} (best lr per batch size)",
             xbase=2, legend_loc="lower left")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(s.min(), min(low)) / 2, max(s.max(), max(high)) * 2)
    return _save(fig, path)


def frontier_plot(result: dict[str, Any], path: Path, n_train: int | None) -> Path:
    """E against S: each batch size's point, labelled, and the fitted hyperbola (S/S_min − 1)(E/E_min − 1) = 1."""
    points, fitted = result["points"], result["fit"]
    s = np.array([p["steps"] for p in points], dtype=float)
    e = np.array([p["samples"] for p in points], dtype=float)
    fig, ax = _axes()
    if fitted is not None:
        bs = np.geomspace(min(p["batch_size"] for p in points) / 4, max(p["batch_size"] for p in points) * 4, 300)
        ax.plot(fitted["S_min"] * (1 + fitted["B_crit"] / bs), fitted["E_min"] * (1 + bs / fitted["B_crit"]), color="black", label="fit: (S/S_min − 1)(E/E_min − 1) = 1")
        ax.axvline(fitted["S_min"], color="grey", linestyle=":", linewidth=1, label=f"S_min = {fitted['S_min']:.3g}")
        ax.axhline(fitted["E_min"], color="grey", linestyle="--", linewidth=1, label=f"E_min = {fitted['E_min']:.3g}")
    ax.plot(s, e, "o", color="tab:blue")
    for p, x, y in zip(points, s, e):
        ax.annotate(f"B={_label(p['batch_size'], n_train)}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    _log_log(ax, "updates to target S", "samples to target E = samples processed", "The trade-off between updates and samples")
    ax.set_xlim(s.min() / 2, s.max() * 2)
    ax.set_ylim(e.min() / 2, e.max() * 2)
    return _save(fig, path)


def noise_plot(result: dict[str, Any], runs: Sequence[Any], path: Path, n_train: int | None) -> Path | None:
    """B_simple over training against the training loss (so runs compare at equal loss), one
    colour per batch size (its best-lr runs); the target as a vertical line."""
    chosen = {rel: p["batch_size"] for p in result["points"] for rel in p["runs"]}
    sizes = sorted(set(chosen.values()))
    from matplotlib import colormaps

    colors = {b: colormaps["viridis"](i / max(len(sizes) - 1, 1)) for i, b in enumerate(sizes)}
    fig, ax = _axes()
    drawn, labelled = 0, set()
    for run in runs:
        if run.rel not in chosen or B_SIMPLE_TAG not in run.series:
            continue
        loss, noise = loss_and_noise(run.series)
        if not len(loss):
            continue
        b = chosen[run.rel]
        ax.plot(loss, noise, "o-", color=colors[b], markersize=3, linewidth=1, label=None if b in labelled else f"B={_label(b, n_train)}")
        labelled.add(b)
        drawn += 1
    if not drawn:
        return None
    ax.axvline(result["target"]["value"], color="black", linestyle=":", label="target")
    _log_log(ax, "training loss (whole training set)", "B_simple = tr(Σ) / |G|²", "Gradient noise scale over training, at equal loss")
    ax.invert_xaxis()  # training goes left to right: the loss falls
    return _save(fig, path)


def loss_and_noise(series: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The training loss and B_simple at the updates where both were logged."""
    loss_series, noise_series = series[TAG], series[B_SIMPLE_TAG]
    loss_at = dict(zip(loss_series.steps.tolist(), loss_series.values.tolist()))
    pairs = [(loss_at[s], v) for s, v in zip(noise_series.steps.tolist(), noise_series.values.tolist()) if s in loss_at]
    arr = np.array(pairs, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def write_plots(root: Path, result: dict[str, Any], runs: Sequence[Any], n_train: int | None) -> list[Path]:
    """The figures into ``root`` (only the S plot and frontier need two points)."""
    paths = []
    if result["points"]:
        paths += [steps_plot(result, root / STEPS_PNG, n_train), frontier_plot(result, root / FRONTIER_PNG, n_train)]
    noise = noise_plot(result, runs, root / NOISE_PNG, n_train)
    return paths + ([noise] if noise is not None else [])
