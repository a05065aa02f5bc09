"""What ``hpr board`` opens: runs named by what differs, and the link that sets up the view.

TensorBoard names a run by the path of its event files' directory relative to the logdir,
so boarding a sweep root names runs ``batch_size=8/seed=1`` (no sweep name), a single run
``.``, and all of ``outputs/`` ``sweeps/2026-12-04_11-34-33-98957…`` (cut to one identical
prefix). ``--logdir_spec name:path,…`` cannot help: it splits on commas, which Hydra's job
names hold, and it turns off TensorBoard's fast loader. So the board opens a generated
directory of symbolic links instead: ``<tmp>/gd_compare/batch_size=8/seed=1`` → the run
directory. TensorBoard only reads through them (its data server follows directory links);
nothing is written inside a run directory, and the links live in a temporary directory
that is removed when the board stops. :class:`RunLinks` refreshes them every few seconds,
so runs of a sweep still in progress appear as they start.

The printed URL carries TensorBoard's own deep-link state (its webapp reads these query
keys in ``dashboard_deeplink_provider.ts``): ``smoothing``, ``runColorGroup=regex:…`` and
``pinnedCards``. Settings the URL cannot carry ("Ignore outliers in chart scaling", a log
x-axis) stay TensorBoard's defaults; :data:`HINT` says where to change them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
from pathlib import Path

import yaml

from runner import tags

EVENT_PREFIX = "events.out.tfevents."
MULTIRUN_FILE = "multirun.yaml"
REFRESH_S = 5.0  # TensorBoard itself reloads every 5 s

# The first cards a comparison needs, pinned above every group in this order: the fair
# comparison (whole training set and validation by samples seen), the same by epoch, and
# every update's loss. A tag a run did not log (no validation split) is not shown.
PINNED_TAGS = (
    tags.BY_SAMPLES + tags.LOSS_FULL,
    tags.BY_SAMPLES + tags.LOSS_VAL,
    tags.LOSS_FULL,
    tags.LOSS_VAL,
    tags.LOSS_ITER,
)
# One colour per configuration: TensorBoard groups runs by the regex's capture group, so
# the configuration (the name without its last ``seed=<k>`` or ``seed_aggregate`` part)
# picks the colour and the seeds of one configuration share it.
COLOR_BY_CONFIGURATION = r"^(.*?)(?:/seed(?:=-?\d+|_aggregate))?$"
HINT = (
    "The link sets smoothing 0, one colour per configuration (its seeds share it) and pins the loss cards. "
    "Not settable by link: untick 'Ignore outliers in chart scaling' in Settings (right pane) to see "
    "every point, and pick a log x-axis there to see few-update runs (BGD) beside SGD."
)

_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)_(\d\d)-(\d\d)-(\d\d)")


# ------------------------------------------------------------------------------- run names
def run_dirs(logdir: Path) -> list[Path]:
    """Every directory under ``logdir`` (itself included) holding an event file directly,
    without those inside another such directory (TensorBoard finds those through it) and
    without hidden directories (``.hydra``, ``.attempts``)."""
    found: list[Path] = []
    for current, dirs, files in os.walk(logdir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(f.startswith(EVENT_PREFIX) for f in files):
            found.append(Path(current))
            dirs[:] = []  # its sub-runs come with it
    return found


def sweep_root(run: Path) -> Path | None:
    """The sweep a run belongs to: the nearest directory at or above it with ``multirun.yaml``."""
    for directory in (run, *run.parents):
        if (directory / MULTIRUN_FILE).is_file():
            return directory
    return None


# A sweep with neither a preset nor a name of its own (Hydra's dated directory): ``sweep@<time>``.
UNNAMED_SWEEP = "sweep"


def sweep_label(root: Path) -> str:
    """A sweep's name: its experiment preset (``gd_compare``), else its directory's name, or
    :data:`UNNAMED_SWEEP` for Hydra's dated one (its 26 characters would fill the width
    TensorBoard gives a run's name, and HParams' Trial ID column, before the swept keys)."""
    try:
        config = yaml.safe_load((root / MULTIRUN_FILE).read_text(encoding="utf-8")) or {}
        experiment = config.get("hydra", {}).get("runtime", {}).get("choices", {}).get("experiment")
    except (OSError, yaml.YAMLError, AttributeError):
        experiment = None
    if experiment:
        return str(experiment)
    return UNNAMED_SWEEP if _STAMP.search(root.name) else root.name


def _stamp(root: Path, with_date: bool) -> str:
    """``13-10-44`` (or ``12-04_13-10-44``) from ``2026-12-04_13-10-44-692855``; else the name."""
    match = _STAMP.search(root.name)
    if not match:
        return root.name
    _, month, day, hour, minute, second = match.groups()
    return f"{month}-{day}_{hour}-{minute}-{second}" if with_date else f"{hour}-{minute}-{second}"


def _sweep_labels(roots: list[Path]) -> dict[Path, str]:
    """Each sweep's label, told apart by its start time (as short as it can be) where two
    share one; an unnamed sweep always carries its start time."""
    by_label: dict[str, list[Path]] = {}
    for root in roots:
        by_label.setdefault(sweep_label(root), []).append(root)
    labels = {}
    for label, same in by_label.items():
        if len(same) == 1 and label != UNNAMED_SWEEP:
            labels[same[0]] = label
            continue
        for with_date in (False, True):
            stamps = [_stamp(root, with_date) for root in same]
            if len(set(stamps)) == len(same):
                break
        else:
            stamps = [root.name for root in same]
        labels.update({root: f"{label}@{stamp}" for root, stamp in zip(same, stamps)})
    return labels


def _shortest_unique_suffixes(paths: list[Path]) -> dict[Path, str]:
    """Each path's last part, with as many parents as it takes to tell it from the others."""
    names: dict[Path, str] = {}
    depth = 1
    pending = list(paths)
    while pending:
        suffix = {p: "/".join(p.parts[-depth:]) for p in pending}
        counts: dict[str, int] = {}
        for s in suffix.values():
            counts[s] = counts.get(s, 0) + 1
        still = []
        for p in pending:
            if counts[suffix[p]] == 1 or depth >= len(p.parts):
                names[p] = suffix[p]
            else:
                still.append(p)
        pending, depth = still, depth + 1
    return names


def run_names(logdir: Path) -> dict[str, Path]:
    """TensorBoard run name → run directory for every run under ``logdir``.

    A job of a sweep is ``<experiment or sweep name>/<its path in the sweep>``
    (``gd_compare/batch_size=8/seed=1``); two sweeps of one experiment add their start time
    (``gd_compare@13-10-44/…``), as does a sweep without a preset in Hydra's dated directory
    (``sweep@13-10-44/…``); a run outside any sweep is its directory's last part, with
    parents added only where two would share a name.
    """
    logdir = Path(logdir).resolve()
    runs = run_dirs(logdir)
    roots = {run: sweep_root(run) for run in runs}
    labels = _sweep_labels(sorted({r for r in roots.values() if r is not None}))
    singles = _shortest_unique_suffixes([run for run, root in roots.items() if root is None])
    names: dict[str, Path] = {}
    for run, root in roots.items():
        if root is None:
            name = singles[run]
        else:
            inside = run.relative_to(root).as_posix()
            name = labels[root] if inside == "." else f"{labels[root]}/{inside}"
        names[name] = run
    return names


class RunLinks:
    """A temporary directory of links named by :func:`run_names`, kept up to date in the
    background; a context manager that removes it (links only: never what they point at)."""

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir).resolve()
        self.path = Path(tempfile.mkdtemp(prefix="hpr-board-"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_until_stopped, name="hpr-board-links", daemon=True)
        try:
            self.refresh()
        except BaseException:  # Ctrl-C while listing: leave nothing behind
            self.__exit__()
            raise

    def refresh(self) -> None:
        """Add a link for every run not linked yet (a link, once made, keeps its name)."""
        for name, run in run_names(self.logdir).items():
            link = self.path / name
            if link.is_symlink() or link.exists():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(run, target_is_directory=True)

    def _refresh_until_stopped(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self.refresh()
            except OSError:
                pass  # a run directory removed while being listed: the next pass sees the new state

    def __enter__(self) -> "RunLinks":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # rmtree removes links without following them (the runs are never touched).
        shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------------- the link
def view_query(pinned: tuple[str, ...] = PINNED_TAGS) -> str:
    """The query string of TensorBoard's deep link for the comparison view."""
    cards = [{"plugin": "scalars", "tag": tag} for tag in pinned]
    params = {
        "smoothing": "0",
        "runColorGroup": f"regex:{COLOR_BY_CONFIGURATION}",
        "pinnedCards": json.dumps(cards, separators=(",", ":")),
    }
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe=":/")


def view_url(base: str) -> str:
    """``base`` (TensorBoard's root URL) opened on Time Series with the comparison view."""
    return f"{base.rstrip('/')}/?{view_query()}#timeseries"
