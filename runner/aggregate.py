"""Seed-group aggregates and the TensorBoard custom-scalars layout of a sweep.

A sweep writes one run directory per job, named by the swept keys, with its event file
directly in it: ``<sweep>/batch_size=8/`` or, when seeds are swept too,
``<sweep>/batch_size=8/seed=<k>/``. Runs that share a parent directory and differ only
in ``seed=<k>`` form a *seed group*; :func:`write_seed_aggregates` adds a run
``<group>/seed_aggregate/`` holding the mean across seeds of every scalar, with ``/min``,
``/max`` and ``/std`` companions, so TensorBoard can draw one line (and, through the
layout's margin charts, a band) per configuration instead of one line per seed.

Every run's event file (and every aggregate's) starts with the same custom-scalars
layout (:func:`layout_summary`); TensorBoard merges identical layouts into one.

The members' event files are read by :mod:`runner.events.read`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from runner import tags
from runner.events import summaries
from runner.outcomes import LEDGER_DIR, not_results
from runner.events.read import Series, event_files, read_scalar_series
from runner.events.writer import EventWriter
from runner.safefs import open_inside

__all__ = [
    "AGGREGATE_DIR",
    "DEFAULT_LAYOUT",
    "EXCLUDED_DIRS",
    "SeedStats",
    "align_series",
    "find_runs",
    "layout_summary",
    "natural_key",
    "read_summary",
    "seed_groups",
    "seed_of",
    "seed_stats",
    "write_seed_aggregates",
]

SUMMARY_FILE = "summary.json"
AGGREGATE_DIR = "seed_aggregate"
AGGREGATE_FILE = "aggregate.json"
# Directories this module and runner.report write; none of them is a training run.
EXCLUDED_DIRS = frozenset({"report", AGGREGATE_DIR})

_SEED_DIR = re.compile(r"seed=(-?\d+)")
# Tags whose step is a measured time: no two seeds share those steps, so their points are
# paired by position (the k-th epoch end of every seed) instead of by step.
_POSITIONAL_PREFIXES = (tags.BY_TIME_MS,)
_STAT_SUFFIXES = ("min", "max", "std")


# --------------------------------------------------------------------------- discovery
# A decimal number: digits with an optional fraction and exponent (0.00495, 1e-3, 2.5E+4).
# Splitting on digit runs alone would read 0.00495 as 0 "." 495, after 0.0151 (0 "." 151).
# A sign belongs to the number only at the start or after "=" or "," (``seed=-1``), never
# inside a word or a date (``2026-11-30``).
_NUMBER = re.compile(r"((?:(?<![^=,])[-+])?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value (``seed=2`` before ``seed=10``,
    ``lr=0.00495`` before ``lr=0.0151``, ``lr=1e-4`` before ``lr=0.001``).

    Args:
        text: any string, typically a relative path.

    Returns:
        A tuple comparing numbers numerically (ties broken by their text) and the rest as text.
    """
    return tuple(
        (0, float(part), part) if index % 2 else (1, 0.0, part)
        for index, part in enumerate(_NUMBER.split(text))
        if part
    )


def _path_key(path: Path) -> tuple:
    return tuple(natural_key(part) for part in path.parts)


def find_runs(root: Path) -> list[Path]:
    """Every run directory (one holding ``summary.json``) under ``root``.

    ``root`` itself counts when it is a run, unless the sweep above it refused that job
    (its directory holds another config's run, or another process's: :mod:`runner.outcomes`).
    Hidden directories (``.hydra``,
    ``.attempts``) and the directories this package generates (:data:`EXCLUDED_DIRS`)
    are skipped.

    Args:
        root: a run, a sweep, or any directory above them.

    Returns:
        The run directories, ordered by path with numbers compared by value.
    """
    root = Path(root)
    runs, foreign = [], set()
    for current, dirs, files in os.walk(root):
        if LEDGER_DIR in dirs:  # a sweep: the directories its jobs were refused hold other runs
            foreign |= {path.absolute() for path in not_results(Path(current))}
        if SUMMARY_FILE in files and Path(current).absolute() not in foreign:
            runs.append(Path(current))
        # Pruned in place so os.walk never descends into them.
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS and not d.startswith(".")]
    return sorted(runs, key=_path_key)


def seed_of(run: Path) -> int | None:
    """The seed a run directory is named after (``seed=3`` → 3), else ``None``."""
    match = _SEED_DIR.fullmatch(Path(run).name)
    return int(match.group(1)) if match else None


def seed_groups(runs: Iterable[Path], root: Path) -> dict[str, list[Path]]:
    """Groups ``seed=<k>`` runs by the directory they share.

    Args:
        runs: run directories, e.g. from :func:`find_runs`.
        root: the directory labels are relative to.

    Returns:
        Group label (the group directory relative to ``root``, ``"."`` for ``root``
        itself) → its runs ordered by seed. Runs not named ``seed=<int>``, and runs
        whose parent lies outside ``root`` (``root`` being a single seed run), belong
        to no group.
    """
    root = Path(root).resolve()
    groups: dict[str, list[Path]] = {}
    for run in runs:
        if seed_of(run) is None:
            continue
        parent = Path(run).resolve().parent
        if parent != root and root not in parent.parents:
            continue
        label = parent.relative_to(root).as_posix()
        groups.setdefault(label, []).append(Path(run))
    return {label: sorted(members, key=seed_of) for label, members in sorted(groups.items(), key=lambda kv: natural_key(kv[0]))}


def read_summary(run: Path) -> dict:
    """A run's ``summary.json``; an unreadable one reads as a failed run saying why.

    Args:
        run: the run directory.

    Returns:
        The summary dict (always with a ``status`` key).
    """
    path = Path(run) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return {"status": "unreadable", "error": f"{path.name}: {err}"}
    if not isinstance(summary, dict):
        return {"status": "unreadable", "error": f"{path.name} does not hold a JSON object"}
    summary.setdefault("status", "unknown")
    return summary


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class SeedStats:
    """Several seeds' values of one tag, paired point by point."""

    steps: np.ndarray  # int64, one per aligned point
    values: np.ndarray  # float32, (members, points)
    wall_offsets: np.ndarray  # float64 seconds since each member's first point, (members, points)

    @property
    def mean(self) -> np.ndarray:
        return self.values.astype(np.float64).mean(axis=0)

    @property
    def min(self) -> np.ndarray:
        return self.values.min(axis=0)

    @property
    def max(self) -> np.ndarray:
        return self.values.max(axis=0)

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation (ddof=1), the estimate of the seed-to-seed spread the
        report's tables use too (:mod:`runner.seedstats`); 0 with a single seed (no spread seen)."""
        wide = self.values.astype(np.float64)
        return wide.std(axis=0, ddof=1) if len(wide) > 1 else np.zeros(wide.shape[1:])


def is_positional(tag: str) -> bool:
    """Whether ``tag``'s points are paired across seeds by position rather than by step."""
    return tag.startswith(_POSITIONAL_PREFIXES)


def _last_per_step(series: Series) -> Series:
    """One point per step, the last one logged (what a rerun of a step overwrites)."""
    reversed_steps = series.steps[::-1]
    _, first_in_reversed = np.unique(reversed_steps, return_index=True)
    keep = np.sort(len(series) - 1 - first_in_reversed)
    return Series(series.steps[keep], series.values[keep], series.wall_times[keep])


def _sorted_by_step(series: Series) -> Series:
    order = np.argsort(series.steps, kind="stable")
    return Series(series.steps[order], series.values[order], series.wall_times[order])


def align_series(members: Sequence[Series], positional: bool = False) -> SeedStats:
    """Pairs the points of several seeds' series of one tag.

    Args:
        members: one series per seed, non-empty.
        positional: pair the k-th points (the step becomes the rounded mean of the
            members' k-th steps) instead of the points at equal steps.

    Returns:
        The aligned values; steps present in every member (or the shortest member's
        length when ``positional``), in increasing order.
    """
    if not members:
        raise ValueError("align_series needs at least one series")
    starts = [float(s.wall_times.min()) if len(s) else 0.0 for s in members]
    if positional:
        count = min(len(s) for s in members)
        steps_matrix = np.stack([s.steps[:count] for s in members])
        steps = np.rint(steps_matrix.astype(np.float64).mean(axis=0)).astype(np.int64)
        values = np.stack([s.values[:count] for s in members])
        walls = np.stack([s.wall_times[:count] - start for s, start in zip(members, starts)])
        return SeedStats(steps, values.astype(np.float32), walls)
    by_step = [_sorted_by_step(_last_per_step(s)) for s in members]
    common = by_step[0].steps
    for s in by_step[1:]:
        common = np.intersect1d(common, s.steps, assume_unique=True)
    index = [np.searchsorted(s.steps, common) for s in by_step]
    values = np.stack([s.values[i] for s, i in zip(by_step, index)])
    walls = np.stack([s.wall_times[i] - start for s, i, start in zip(by_step, index, starts)])
    return SeedStats(common.astype(np.int64), values.astype(np.float32), walls)


def seed_stats(members: Sequence[Mapping[str, Series]]) -> dict[str, SeedStats]:
    """Aligned values of every tag all members have, for tags with at least one common point.

    Args:
        members: each seed's ``read_scalar_series`` result.

    Returns:
        Tag → :class:`SeedStats`, in tag order.
    """
    if not members:
        return {}
    tags = set(members[0]).intersection(*members[1:])
    stats = {}
    for tag in sorted(tags):
        aligned = align_series([m[tag] for m in members], positional=is_positional(tag))
        if len(aligned.steps):
            stats[tag] = aligned
    return stats


# --------------------------------------------------------------------------- writing aggregates
def _clear_event_files(logdir: Path) -> None:
    """Removes the event files a previous generation wrote, so a rewrite replaces them."""
    for old in event_files(logdir):
        old.unlink()


def _remove_aggregate(agg_dir: Path) -> None:
    """Deletes a stale aggregate, touching nothing it did not write itself."""
    if (agg_dir / AGGREGATE_FILE).exists() or event_files(agg_dir):
        shutil.rmtree(agg_dir, ignore_errors=True)


def _write_aggregate_events(agg_dir: Path, stats: Mapping[str, SeedStats], base_time: float) -> None:
    agg_dir.mkdir(parents=True, exist_ok=True)
    _clear_event_files(agg_dir)
    writer = EventWriter(agg_dir)
    try:
        writer.add_summary(layout_summary(), step=0, wall_time=base_time)
        for tag, s in stats.items():
            # Mean elapsed time since each seed started, so TensorBoard's "relative" axis
            # shows a typical seed's timing.
            walls = base_time + s.wall_offsets.mean(axis=0)
            writer.add_scalars(tag, s.steps, s.mean, walls)
            for suffix in _STAT_SUFFIXES:
                writer.add_scalars(f"{tag}/{suffix}", s.steps, getattr(s, suffix), walls)
    finally:
        writer.close()


def _describe(label: str, members: Sequence[Path], skipped: Sequence[tuple[Path, str]], stats: Mapping[str, SeedStats]) -> dict:
    return {
        "group": label,
        "seeds": [seed_of(m) for m in members],
        "members": [m.name for m in members],
        "excluded": [{"run": p.name, "status": status} for p, status in skipped],
        "statistics": ["mean", *_STAT_SUFFIXES],
        "std": "sample (ddof=1), as report.md",
        "tags": {
            tag: {
                "points": int(len(s.steps)),
                "first_step": int(s.steps[0]),
                "last_step": int(s.steps[-1]),
                "aligned_by": "position (k-th point of every seed; step = mean)" if is_positional(tag) else "step",
            }
            for tag, s in stats.items()
        },
    }


def write_seed_aggregates(root: Path) -> list[Path]:
    """Writes ``<group>/seed_aggregate/`` for each seed group with at least two finished runs.

    For every scalar tag all finished members have, the aggregate run holds ``<tag>``
    (the mean across seeds), ``<tag>/min``, ``<tag>/max`` and ``<tag>/std`` (sample, ddof=1)
    at each step present in every member; ``vs_time_ms/`` tags, whose steps are
    measured times, pair the seeds' k-th points instead. Diverged and failed seeds are
    left out (and listed in ``aggregate.json``). An existing aggregate is replaced, and
    one whose group no longer qualifies is removed.

    Args:
        root: a sweep (or any directory above runs).

    Returns:
        The aggregate run directories written.
    """
    root = Path(root)
    written = []
    for label, members in seed_groups(find_runs(root), root).items():
        group_dir = root / label
        agg_dir = group_dir / AGGREGATE_DIR
        done, skipped = [], []
        for run in members:
            status = read_summary(run)["status"]
            if status == "done" and event_files(run):
                done.append(run)
            else:
                skipped.append((run, status))
        if len(done) < 2:
            _remove_aggregate(agg_dir)
            continue
        series = [read_scalar_series(run) for run in done]
        stats = seed_stats(series)
        base_time = min((float(s.wall_times.min()) for m in series for s in m.values() if len(s)), default=time.time())
        _write_aggregate_events(agg_dir, stats, base_time)
        description = _describe(label, done, skipped, stats)
        # Final metrics over the seeds (mean, sample std, min, max, 95% CI).
        from runner.seedstats import final_statistics

        description["final"] = final_statistics([read_summary(run) for run in done])
        with open_inside(agg_dir.parent, agg_dir / AGGREGATE_FILE, "w") as handle:
            handle.write(json.dumps(description, indent=2) + "\n")
        written.append(agg_dir)
    return written


# --------------------------------------------------------------------------- layout
# Category → chart title → (kind, tags). Multiline tags are matched exactly (layout_summary
# anchors them); Margin takes (value, lower, upper) tag names, which TensorBoard reads
# as exact names.
LayoutSpec = Mapping[str, Mapping[str, tuple[str, Sequence[str]]]]

DEFAULT_LAYOUT: LayoutSpec = {
    "Loss by iteration": {
        "loss/train_iter: batch loss at each update (step = iteration)": ("Multiline", ["loss/train_iter"]),
    },
    "Loss by epoch": {
        "loss/train_full: whole training set at epoch end": ("Multiline", ["loss/train_full"]),
        "loss/train_epoch: mean batch loss during the epoch": ("Multiline", ["loss/train_epoch"]),
    },
    "Loss by samples seen": {
        "vs_samples/loss/train_full (step = samples seen)": ("Multiline", [tags.BY_SAMPLES + tags.LOSS_FULL]),
    },
    "Loss by wall time": {
        "vs_time_ms/loss/train_full (step = training ms)": ("Multiline", [tags.BY_TIME_MS + tags.LOSS_FULL]),
    },
    "Validation": {
        "loss/val": ("Multiline", ["loss/val"]),
        "metric/acc/val": ("Multiline", [tags.ACC_VAL]),
    },
    "Overfitting": {
        "loss/train_full and loss/val: the gap between them": ("Multiline", ["loss/train_full", "loss/val"]),
        "overfit_gap/loss: validation − whole-training-set loss": ("Multiline", [tags.GAP_LOSS]),
        "overfit_gap/acc: training − validation accuracy": ("Multiline", [tags.GAP_ACC]),
    },
    "Seed bands": {
        "loss/train_full: seed mean, min–max": (
            "Margin",
            ["loss/train_full", "loss/train_full/min", "loss/train_full/max"],
        ),
        "loss/val: seed mean, min–max": ("Margin", ["loss/val", "loss/val/min", "loss/val/max"]),
    },
}

_CHART_KINDS = ("Multiline", "Margin")


def _layout_for_torch(tags: LayoutSpec) -> dict[str, dict[str, list]]:
    layout: dict[str, dict[str, list]] = {}
    for category, charts in tags.items():
        layout[category] = {}
        for title, (kind, chart_tags) in charts.items():
            if kind not in _CHART_KINDS:
                raise ValueError(f"chart {title!r}: kind must be one of {_CHART_KINDS}, got {kind!r}")
            if kind == "Margin":
                if len(chart_tags) != 3:
                    raise ValueError(f"margin chart {title!r} needs (value, lower, upper), got {list(chart_tags)}")
                layout[category][title] = ["Margin", list(chart_tags)]
            else:
                # Anchored, so "loss/train_full" does not also match "vs_samples/loss/train_full".
                layout[category][title] = ["Multiline", [f"^{re.escape(tag)}$" for tag in chart_tags]]
    return layout


def layout_summary(tags: LayoutSpec = DEFAULT_LAYOUT):
    """The custom-scalars layout for TensorBoard's Custom Scalars tab, as a summary to log.

    Every run writes the same one into its own event file: TensorBoard merges the
    layouts of all runs, keeping one of each chart, and the charts select tags by
    regex, so one fixed layout fits every run and no extra directory is needed.

    Args:
        tags: category → chart title → ``("Multiline", [tag, ...])`` or
            ``("Margin", [value_tag, lower_tag, upper_tag])``.

    Returns:
        A ``Summary`` for :meth:`runner.events.writer.EventWriter.add_summary`.
    """
    return summaries.custom_scalars(_layout_for_torch(tags))
