"""Loss-surface trajectories: the path the weights took, over the loss contours around it.

With ``trajectory.record=true`` a run records its weights every ``trajectory.every``
iterations (iteration 0 is the initial weights; the final weights close the path). The
copies stay on the device during a segment and come to the host with the segment's losses,
so recording costs no host synchronisation per iteration.

At the end the path is shown on a plane:

* a model with exactly two trainable parameters (``dataset=linreg dataset.d=1`` with a
  bias): the parameter plane itself, no projection;
* any larger model: the plane through the final weights spanned by the top two principal
  components of the path's offsets from the final weights (``trajectory.directions=pca``),
  or by two filter-normalised random directions (``random``; biases not perturbed), both
  from Li et al., "Visualizing the Loss Landscape of Neural Nets" (2018). The path is
  projected onto the plane (least squares); the contours are the loss *on the plane*, which
  a projected point of the path only approximately sits on.

The loss at each grid point is the exact mean over the training set (float64 sums, the same
per-sample losses as :func:`runner.loop.evaluate`). The run writes ``trajectory.npz`` (path
coordinates, grid, losses) into its directory and the figure to TensorBoard as the image
``trajectory``; the sweep report draws every run's path of one loss surface in one figure.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from runner.batches import Split

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from runner.losses import Loss
from runner.safefs import open_inside

log = logging.getLogger(__name__)

TRAJECTORY_FILE = "trajectory.npz"
IMAGE_TAG = "trajectory"
DIRECTIONS = ("pca", "random")
# Grid points times samples evaluated in one vectorised call (memory: times the model's width).
EVALUATIONS_PER_CALL = 1 << 16
FIGSIZE, DPI = (7.5, 6.0), 100


def flat_parameters(params: Sequence[Tensor]) -> Tensor:
    """The weights as one detached vector (a copy, on their device)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def parameter_labels(model: nn.Module) -> list[str]:
    """One name per scalar parameter: ``1.weight``, or ``1.weight[3]`` for a tensor of several."""
    labels = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            labels += [name] if p.numel() == 1 else [f"{name}[{i}]" for i in range(p.numel())]
    return labels


# --------------------------------------------------------------------------- the plane
@dataclass
class Plane:
    """A 2-D slice of weight space: ``origin + a * directions[0] + b * directions[1]``."""

    kind: str  # "parameters" (2-parameter models), "pca" or "random"
    origin: np.ndarray  # (P,) float64
    directions: np.ndarray  # (2, P) float64
    axes: tuple[str, str]
    explained: tuple[float, float] | None = None  # pca: each direction's share of the path's variance

    def coordinates(self, path: np.ndarray) -> np.ndarray:
        """(T, 2) coordinates of the path's points on the plane (least squares)."""
        offsets = (path - self.origin).T
        return np.linalg.lstsq(self.directions.T, offsets, rcond=None)[0].T

    def points(self, alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
        """(len(betas) * len(alphas), P) weights, row-major over (beta, alpha)."""
        a, b = np.meshgrid(alphas, betas)
        return self.origin + a.reshape(-1, 1) * self.directions[0] + b.reshape(-1, 1) * self.directions[1]


def filter_normalised_direction(model: nn.Module, generator: torch.Generator) -> np.ndarray:
    """A Gaussian direction with each filter (row of a weight tensor) scaled to that filter's
    norm in the current weights; biases and other 1-D parameters get 0 (Li et al. 2018)."""
    parts = []
    for p in (p for p in model.parameters() if p.requires_grad):
        w = p.detach().double().cpu()
        if w.dim() <= 1:
            parts.append(torch.zeros(w.numel(), dtype=torch.float64))
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        rows, d_rows = w.reshape(len(w), -1), d.reshape(len(d), -1)
        d_rows *= rows.norm(dim=1, keepdim=True) / d_rows.norm(dim=1, keepdim=True).clamp(min=1e-12)
        parts.append(d_rows.reshape(-1))
    return torch.cat(parts).numpy()


def make_plane(model: nn.Module, path: np.ndarray, directions: str, seed: int) -> Plane:
    """The plane to draw ``path`` (T, P) on: the parameter plane for P = 2, else PCA or random."""
    n_params = path.shape[1]
    if n_params == 2:
        labels = parameter_labels(model)
        return Plane("parameters", np.zeros(2), np.eye(2), (labels[0], labels[1]))
    final = path[-1]
    generator = torch.Generator().manual_seed(seed)
    if directions == "random":
        d1 = filter_normalised_direction(model, generator)
        d2 = filter_normalised_direction(model, generator)
        return Plane("random", final, np.stack([d1, d2]), ("random direction 1", "random direction 2"))
    _, s, vt = np.linalg.svd(path - final, full_matrices=False)
    found = [vt[i] for i in range(min(2, len(s))) if s[i] > 1e-12 * max(s[0], 1e-300)]
    explained = tuple(float(v) for v in (s[:2] ** 2 / max(float((s**2).sum()), 1e-300)))
    while len(found) < 2:
        # A path with fewer than two independent directions (a straight line, no update):
        # complete the plane with a random direction orthogonal to what was found.
        d = filter_normalised_direction(model, generator)
        if not d.any():
            d = torch.randn(n_params, generator=generator, dtype=torch.float64).numpy()
        for v in found:
            d = d - d.dot(v) * v
        found.append(d / np.linalg.norm(d))
    explained = explained + (0.0,) * (2 - len(explained))
    return Plane("pca", final, np.stack(found), ("PC 1", "PC 2"), explained[:2])


def grid_axes(coords: np.ndarray, resolution: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates spanning the path's box, widened by ``margin`` of its size on each side."""
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = high - low
    fallback = span.max() if span.max() > 0 else max(float(np.abs(coords).max()), 1.0)
    span = np.where(span > 0, span, fallback)
    low, high = low - margin * span, high + margin * span
    return np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution)


# --------------------------------------------------------------------------- the surface
def _unflatten(flat: Tensor, template: dict[str, Tensor]) -> dict[str, Tensor]:
    """(G, P) rows → ``{name: (G, *shape)}`` in the parameters' order."""
    out, offset = {}, 0
    for name, p in template.items():
        out[name] = flat[:, offset : offset + p.numel()].reshape(len(flat), *p.shape)
        offset += p.numel()
    return out


@torch.no_grad()
def plane_losses(model: nn.Module, loss_fn: Loss, split: Split, points: np.ndarray, chunk_size: int) -> np.ndarray:
    """The mean training loss at each row of ``points`` (weights, (G, P)), float64.

    Per-sample losses as :func:`runner.loop.evaluate` computes them, summed in float64,
    vectorised over grid points with ``vmap(functional_call(...))``.
    """
    template = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    first = next(iter(template.values()))
    per_call = max(1, EVALUATIONS_PER_CALL // max(1, min(chunk_size, len(split))))
    totals = []
    for start in range(0, len(points), per_call):
        flat = torch.as_tensor(points[start : start + per_call], dtype=first.dtype, device=first.device)
        params = _unflatten(flat, template)
        total = torch.zeros(len(flat), dtype=torch.float64, device=first.device)
        for x, y, _labels in split.chunks(chunk_size):
            def loss_sum(p: dict[str, Tensor], x: Tensor = x, y: Tensor = y) -> Tensor:
                return loss_fn.per_sample(functional_call(model, (p, buffers), (x,)), y).sum(dtype=torch.float64)

            total += vmap(loss_sum, randomness="error")(params)
        totals.append(total)
    return (torch.cat(totals) / len(split)).cpu().numpy()


ARRAYS = ("steps", "coords", "alphas", "betas", "losses", "origin", "directions")


@dataclass
class Trajectory:
    """A run's path on its plane, with the loss over the grid around it (what ``trajectory.npz`` holds)."""

    kind: str
    axes: tuple[str, str]
    steps: np.ndarray  # (T,) iteration of each point: weights before that update
    coords: np.ndarray  # (T, 2)
    alphas: np.ndarray  # (R,)
    betas: np.ndarray  # (R,)
    losses: np.ndarray  # (R, R): losses[j, i] at (alphas[i], betas[j])
    surface: str  # runs with equal surface keys share one loss surface (and, for "parameters", one plane)
    origin: np.ndarray  # (P,) the plane's origin (the final weights; 0 for the parameter plane)
    directions: np.ndarray  # (2, P) the plane's directions
    explained: tuple[float, float] | None = None

    def save(self, path: Path) -> None:
        arrays = {k: getattr(self, k) for k in ARRAYS}
        meta = {"kind": self.kind, "axes": list(self.axes), "surface": self.surface, "explained": self.explained}
        with open_inside(path.parent, path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Path) -> Trajectory:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            explained = tuple(meta["explained"]) if meta["explained"] is not None else None
            return cls(
                kind=meta["kind"], axes=tuple(meta["axes"]), surface=meta["surface"], explained=explained,
                **{k: data[k] for k in ARRAYS},
            )


def trace_trajectory(
    model: nn.Module, loss_fn: Loss, split: Split, steps: np.ndarray, path: np.ndarray, *,
    directions: str = "pca", resolution: int = 41, margin: float = 0.2, chunk_size: int = 8192, seed: int = 0, surface: str = "",
) -> Trajectory:
    """The plane for ``path`` (T, P), the path on it, and the loss over a grid around it."""
    plane = make_plane(model, path, directions, seed)
    coords = plane.coordinates(path)
    alphas, betas = grid_axes(coords, resolution, margin)
    losses = plane_losses(model, loss_fn, split, plane.points(alphas, betas), chunk_size).reshape(len(betas), len(alphas))
    return Trajectory(plane.kind, plane.axes, steps, coords, alphas, betas, losses, surface, plane.origin, plane.directions, plane.explained)


# --------------------------------------------------------------------------- the figure
@dataclass
class PathLine:
    label: str
    coords: np.ndarray
    color: Any
    updates: int  # the updates the path spans (more than its points when trajectory.every > 1)


def _levels(losses: np.ndarray) -> tuple[np.ndarray, Any]:
    """Contour levels: log-spaced when the surface spans decades, else evenly spaced."""
    finite = losses[np.isfinite(losses)]
    low, high = float(finite.min()), float(finite.max())
    if low > 0 and high / low > 30:
        from matplotlib.colors import LogNorm

        return np.geomspace(low, high, 25), LogNorm(low, high)
    return np.linspace(low, high, 25) if high > low else np.array([low, low + 1e-12]), None


def draw(surface: Trajectory, lines: Sequence[PathLine], title: str, subtitle: str = "", loss_name: str = "loss") -> Figure:
    """Loss contours of ``surface``'s grid with every line's path: start ○, end ★."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    levels, norm = _levels(surface.losses)
    filled = ax.contourf(surface.alphas, surface.betas, surface.losses, levels=levels, norm=norm, cmap="viridis", extend="both")
    ax.contour(surface.alphas, surface.betas, surface.losses, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.6)
    bar = fig.colorbar(filled, ax=ax)
    bar.set_label(loss_name)
    # Long (noisy) paths first, so that the short smooth ones stay visible on top.
    for order, line in enumerate(sorted(lines, key=lambda line: -len(line.coords))):
        coords = line.coords
        width = 1.8 if len(coords) < 200 else 0.8
        ax.plot(coords[:, 0], coords[:, 1], color=line.color, linewidth=width, alpha=0.95, zorder=3 + order,
                marker="o" if len(coords) <= 60 else None, markersize=3, label=f"{line.label}: {line.updates} updates")
        ax.plot(*coords[-1], marker="*", markersize=15, color=line.color, markeredgecolor="black", linestyle="none", zorder=20)
    if lines:
        ax.plot(*lines[0].coords[0], marker="o", markersize=9, color="white", markeredgecolor="black", linestyle="none", label="start", zorder=21)
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    ax.set_xlabel(surface.axes[0])
    ax.set_ylabel(surface.axes[1])
    fig.suptitle(title, fontsize=12, x=0.01, horizontalalignment="left")
    if subtitle:
        ax.set_title(subtitle, fontsize=9, color="0.35", loc="left")
    return fig


def plane_note(surface: Trajectory) -> str:
    if surface.kind == "parameters":
        return "the parameter plane (2 trainable parameters: no projection)"
    if surface.kind == "pca":
        shares = ", ".join(f"{share:.0%}" for share in surface.explained or ())
        return f"plane of the path's top 2 principal components through the final weights ({shares} of the path's variance)"
    return "plane of 2 filter-normalised random directions through the final weights"


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the instrument
def surface_key(cfg: Any) -> str:
    """What the loss surface depends on: data, model, loss, and the split (seed only when there
    is a validation split to draw). Training-procedure keys (batch size, optimizer, ...) are not in it."""
    from omegaconf import OmegaConf

    parts = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in ("dataset", "model", "loss")}
    parts["val_fraction"] = cfg.val_fraction
    if cfg.val_fraction > 0:
        parts["seed"] = cfg.seed
    return json.dumps(parts, sort_keys=True)


class PathRecorder:
    """Records the weights every ``every`` iterations, before the update (on the device); at the
    end adds the final weights and writes ``trajectory.npz`` and the TensorBoard image."""

    key = "trajectory"

    def __init__(self, model: nn.Module, loss_fn: Loss, split: Split, every: int, *, directions: str, resolution: int,
                 margin: float, chunk_size: int, seed: int, surface: str):
        self.model, self.loss_fn, self.split, self.every = model, loss_fn, split, every
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.options = dict(directions=directions, resolution=resolution, margin=margin, chunk_size=chunk_size, seed=seed, surface=surface)
        self.steps: list[int] = []  # on the host: points already moved
        self.points: list[np.ndarray] = []
        self._steps: list[int] = []  # this segment's, still on the device
        self._points: list[Tensor] = []

    def before_update(self, iteration: int) -> None:
        if iteration % self.every:
            return
        self._steps.append(iteration)
        self._points.append(flat_parameters(self.params))

    def flush(self, logger: Any, end: int) -> None:
        """Move the segment's points to the host (one transfer), keeping those before ``end``."""
        if not self._points:
            return
        points = torch.stack(self._points).cpu().numpy()
        for step, point in zip(self._steps, points):
            if step < end:
                self.steps.append(step)
                self.points.append(point)
        self._steps, self._points = [], []

    def state_dict(self) -> dict[str, Any]:
        points = np.stack(self.points) if self.points else np.zeros((0, sum(p.numel() for p in self.params)), dtype=np.float32)
        return {"steps": torch.as_tensor(self.steps, dtype=torch.int64), "points": torch.from_numpy(points)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"].tolist()
        self.points = list(state["points"].numpy())

    def path(self, final_iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps, points): the recorded weights, closed by the current (final) weights."""
        steps, points = list(self.steps), list(self.points)
        if not steps or steps[-1] < final_iteration:
            steps.append(final_iteration)
            points.append(flat_parameters(self.params).cpu().numpy())
        return np.asarray(steps, dtype=np.int64), np.stack(points).astype(np.float64)

    def finish(self, out: Path, logger: Any, summary: dict[str, Any]) -> None:
        if summary.get("status") == "interrupted":
            return  # the path so far lives in the checkpoint; the resumed run draws it whole
        steps, path = self.path(int(summary["iterations"]))
        if not np.isfinite(path).all():
            log.warning("No trajectory figure: the weights stopped being finite.")
            return
        trajectory = trace_trajectory(self.model, self.loss_fn, self.split, steps, path, **self.options)
        trajectory.save(Path(out) / TRAJECTORY_FILE)
        regime = {"bgd": "BGD", "sgd": "SGD"}.get(summary.get("regime"), f"batch size {summary.get('batch_size')}")
        fig = draw(trajectory, [PathLine(regime, trajectory.coords, "tab:red", int(steps[-1]))], "Path of the weights over the loss surface", plane_note(trajectory))
        logger.log_image(IMAGE_TAG, png_bytes(fig), int(summary["iterations"]))
        log.info("Trajectory: %d points on the %s; %s", len(steps), plane_note(trajectory), Path(out) / TRAJECTORY_FILE)


def path_bytes(n_params: int, iterations: int | None, every: int) -> int:
    """Host memory the recorded path needs (float32 points), for the memory check."""
    return 0 if iterations is None else n_params * 4 * (iterations // every + 2)

