"""A best learning rate at an edge of its grid: the grid is extended one step that way and the point run.

After the sweep, per batch size whose best lr (fewest median updates) is the smallest or
largest it tried, one more lr a grid step beyond that edge is trained for every seed of the
batch size, and the best lr is chosen again; at most ``scaling.lr_extensions`` lrs are added
per batch size. A best lr still at an edge after that stays flagged (``lr_at_edge``).

The added runs live under ``<sweep>/lr_extension/batch_size=B,optimizer.lr=LR/seed=S`` with
the same ``.hydra/`` record as the sweep's jobs (their lr changed), so the report and
``scaling.json`` read them like any run; which lrs were added is read back from that folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from runner.safefs import open_inside
from runner.scaling.analysis import EXTENSION_DIR, StudyRun, best_points, extensions_of, is_extension, load_runs

log = logging.getLogger(__name__)

LR_KEY = "optimizer.lr"

# Trains the given lr at one batch size for each seed of the template runs (one per seed)
# and returns the new runs.
TrainCell = Callable[[Sequence[StudyRun], float], list[StudyRun]]


def round_lr(lr: float) -> float:
    """Three significant digits: a value the command line, a directory name and a JSON file agree on."""
    return float(f"{lr:.3g}")


def next_lr(lrs: Sequence[float], best: float) -> float | None:
    """One grid step beyond the edge ``best`` sits at (the ratio of the two lrs at that edge),
    or None when ``best`` is inside the grid."""
    lrs = sorted(lrs)
    if len(lrs) < 2 or best not in (lrs[0], lrs[-1]):
        return None
    if best == lrs[0]:
        return round_lr(lrs[0] * lrs[0] / lrs[1])
    return round_lr(lrs[-1] * lrs[-1] / lrs[-2])


def planned(runs: Sequence[StudyRun], bound: int) -> list[tuple[int, float]]:
    """(batch size, lr) to run next: each batch size whose best lr sits at a grid edge and that
    has had fewer than ``bound`` lrs added."""
    added = extensions_of(runs)
    todo = []
    for point in best_points(runs):
        if not point["lr_at_edge"] or len(added.get(point["batch_size"], [])) >= bound:
            continue
        lr = next_lr(point["lrs"], point["lr"])
        if lr is not None and lr not in point["lrs"]:
            todo.append((point["batch_size"], lr))
    return todo


def extend(runs: list[StudyRun], bound: int, train_cell: TrainCell) -> list[tuple[int, float]]:
    """Extend every batch size's lr grid while its best lr is at an edge, up to ``bound`` added
    lrs each; ``runs`` gains the new runs. Returns the (batch size, lr) trained, in order."""
    done: list[tuple[int, float]] = []
    while todo := planned(runs, bound):
        for b, lr in todo:
            templates = _one_per_seed([r for r in runs if r.batch_size == b])
            log.info("Batch size %d: its best lr is at an edge of its grid; running lr %g (%d seeds).", b, lr, len(templates))
            runs.extend(train_cell(templates, lr))
            done.append((b, lr))
    return done


def _one_per_seed(runs: Sequence[StudyRun]) -> list[StudyRun]:
    by_seed: dict[int, StudyRun] = {}
    for run in sorted(runs, key=lambda r: (is_extension(r), r.rel)):  # a grid run's record, where there is one
        by_seed.setdefault(run.seed, run)
    return [by_seed[s] for s in sorted(by_seed)]


# ------------------------------------------------------------------- running the added point
def _replace_lr(overrides: Sequence[str], lr: float) -> list[str]:
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != LR_KEY]
    return [*kept, f"{LR_KEY}={lr:g}"]


def job_record(root: Path, template: Path, out: Path, lr: float) -> tuple[DictConfig, DictConfig]:
    """Write ``out/.hydra/`` as the template job's record with the lr changed; return the task
    config to train and Hydra's config of the job (its choices and overrides name the run)."""
    record = template / ".hydra"
    config = OmegaConf.load(record / "config.yaml")
    hydra = OmegaConf.load(record / "hydra.yaml")
    overrides = _replace_lr(list(OmegaConf.load(record / "overrides.yaml")), lr)
    OmegaConf.update(config, LR_KEY, lr)
    hydra.hydra.overrides.task = overrides
    hydra.hydra.runtime.output_dir = str(out)
    hydra.hydra.job.override_dirname = ",".join(overrides)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", config), ("hydra.yaml", hydra), ("overrides.yaml", OmegaConf.create(overrides))):
        with open_inside(root, out / ".hydra" / name, "w") as handle:
            handle.write(OmegaConf.to_yaml(node))
    return _compose([*overrides, f"output_dir='{out}'"]), hydra  # quoted: the path holds = and ,


def _compose(overrides: list[str]) -> DictConfig:
    """The job's typed config, composed as the sweep composed it (in this process's Hydra, or
    the project's conf/ when none is set up, as in a test)."""
    from contextlib import nullcontext

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.cli import CONF_DIR

    ready = GlobalHydra.instance().is_initialized()
    with nullcontext() if ready else initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def train_cell_in(root: Path, target: float) -> TrainCell:
    """Train the added lr for each seed as single runs in this process, into ``root/lr_extension/``."""

    def train_cell(templates: Sequence[StudyRun], lr: float) -> list[StudyRun]:
        from hydra.core.hydra_config import HydraConfig

        from runner.train import train

        b = templates[0].batch_size
        cell = root / EXTENSION_DIR / f"batch_size={b},{LR_KEY}={lr:g}"
        previous = HydraConfig.instance().cfg
        try:
            for template in templates:
                out = cell / f"seed={template.seed}"
                task, hydra = job_record(root, root / template.rel, out, lr)
                HydraConfig.instance().set_config(_typed(hydra))  # the run's choices and overrides, as a job's
                train(task)
        finally:
            HydraConfig.instance().cfg = previous
        return [_under(run, root, cell) for run in load_runs(cell, target)]

    return train_cell


def _typed(hydra: DictConfig) -> DictConfig:
    """Hydra's record as the typed config ``HydraConfig.set_config`` takes (plugins' keys kept)."""
    from hydra.conf import HydraConf

    base = OmegaConf.structured(HydraConf)
    OmegaConf.set_struct(base, False)
    return OmegaConf.create({"hydra": OmegaConf.merge(base, hydra.hydra)})


def _under(run: StudyRun, root: Path, cell: Path) -> StudyRun:
    """``run`` (loaded relative to ``cell``) with its directory relative to the sweep root."""
    run.rel = str((cell / run.rel).relative_to(root))
    return run


def extend_study(root: Path, target: float, bound: int) -> list[tuple[int, float]]:
    """At the end of the sweep ``root``: extend the lr grids whose best lr is at an edge."""
    if bound <= 0:
        return []
    try:
        return extend(load_runs(root, target), bound, train_cell_in(root, target))
    except Exception:  # noqa: BLE001 - the sweep's own results are complete: the study is written, its edge flagged
        log.exception("Could not extend the lr grid of %s; the best lrs at an edge stay flagged.", root)
        return []


def bound_of(root: Path) -> int:
    """``scaling.lr_extensions`` of the sweep's runs (0 where it is not set)."""
    for path in sorted(root.rglob(".hydra/config.yaml")):
        return int(OmegaConf.select(OmegaConf.load(path), "scaling.lr_extensions", default=0) or 0)
    return 0
