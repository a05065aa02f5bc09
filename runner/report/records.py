"""The runs a report reads: their records, configurations and labels, and what of their logs could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from runner.aggregate import find_runs, natural_key, read_summary, seed_groups, seed_of
from runner.events.read import Series, event_files, read_scalar_series, unread_tail
from runner.errors import RunnerError
from runner.schema import split_items

LOSS_GREW = "loss grew"
# The epoch-level tag whose last step a finished run's summary must match (its last epoch end).
EPOCH_LOSS_TAG = "loss/train_full"
# Statuses of runs that trained, so that a missing event file is a loss and not just a run
# that failed before its first update.
TRAINED = ("done", "diverged", "interrupted")


class ReportError(RunnerError):
    """The directory holds no runs to report on."""


@dataclass(eq=False)
class RunRecord:
    """One run directory with its summary; scalars are read on first use (compared by identity)."""

    path: Path
    rel: str  # relative to the report's root, "." for the root itself
    summary: dict[str, Any]
    config: str  # the seed group's directory for its members, else the run's own path
    seed: int | None  # set for members of a seed group only
    _scalars: dict[str, Series] | None = field(default=None, repr=False)
    _unread: tuple[str | None] | None = field(default=None, repr=False)

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

    @property
    def unread(self) -> str | None:
        """What of the run's TensorBoard log could not be read, in words; None when it read whole."""
        if self._unread is None:
            self._unread = (self._check_log(),)
        return self._unread[0]

    def _check_log(self) -> str | None:
        files = event_files(self.path)
        if not files:
            trained = self.status in TRAINED or bool(self.summary.get("iterations"))
            return "no event file" if trained else None
        for path in files:
            tail = unread_tail(path)
            if tail:
                return f"its event file `{path.name}` is cut short ({tail:,} bytes after its last whole record)"
        if not self.scalars:
            return "its event file holds no scalars"
        epochs = self.summary.get("epochs")
        series = self.scalars.get(EPOCH_LOSS_TAG)
        if self.status == "done" and isinstance(epochs, int) and series is not None and len(series):
            # A file cut exactly between two records reads cleanly; it still lacks the epochs
            # the summary says were evaluated. (A log without the tag at all is not judged:
            # it may come from a version that named it otherwise.)
            last = int(series.steps.max())
            if last < epochs:
                return f"its log ends at epoch {last} of the {epochs} its summary records"
        return None


def _rel(path: Path, root: Path) -> str:
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


def load_records(root: Path) -> list[RunRecord]:
    """Every run under ``root`` (:func:`runner.aggregate.find_runs`), with its seed group."""
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


def configurations(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
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


def compact_ints(values: Sequence[int]) -> str:
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


def display_name(root: Path) -> str:
    """The directory's name, with its parent's when the name alone is just ``seed=<k>``."""
    resolved = root.resolve()
    return f"{resolved.parent.name}/{resolved.name}" if seed_of(resolved) is not None else resolved.name


def loss_name(records: Sequence[RunRecord]) -> str:
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


# --------------------------------------------------------------------------- what went wrong
def divergence_note(summary: dict[str, Any]) -> str:
    divergence = summary.get("divergence")
    if isinstance(divergence, dict) and divergence.get("iteration") is not None:
        return f"diverged at iteration {divergence['iteration']}"
    return "diverged"


def growth_note(summary: dict[str, Any]) -> str:
    initial, final = summary.get("initial_train_loss"), summary.get("train_loss")
    if isinstance(initial, (int, float)) and isinstance(final, (int, float)) and initial > 0:
        return f"loss grew {final / initial:.3g}x"
    return LOSS_GREW


def problem_suffix(record: RunRecord) -> str:
    """``seed=1 (diverged at iteration 12)``: what a label adds for a run that did not finish well."""
    seed = f"seed={record.seed} " if record.seed is not None else ""
    if record.problem == "diverged":
        note = divergence_note(record.summary)
    elif record.problem == LOSS_GREW:
        note = growth_note(record.summary)
    else:
        note = record.status
    return f"{seed}({note})"
