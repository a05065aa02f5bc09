"""A sweep's ledger: what each of its jobs ended as, kept apart from the run directories.

A job's directory can hold a run that is not this sweep's result: a run of another config,
or one another process is writing. Its ``summary.json`` then says ``done`` for someone else's
run, so the sweep cannot count or report from summaries alone. Each job records its outcome
(``done``, ``diverged``, ``failed``, ``oom``, ``interrupted``, ``refused``) in
``<sweep>/.sweep/<sweep id>/<job>.json`` — outside every run directory, so a refused one is
left exactly as it was — and the sweep's last line counts these. Readers of runs
(:func:`runner.aggregate.find_runs`) leave out the directories the latest sweep refused.

The files live in the sweep directory so jobs in other processes (joblib, Slurm, Ray) record
theirs too; what cannot be written (a full disk) is kept in this process as well.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.safefs import check_inside, open_inside

LEDGER_DIR = ".sweep"
CURRENT = "current.json"
# Outcomes that are results: a diverged run answers "does this lr work?".
RESULTS = ("done", "diverged")
ORDER = (*RESULTS, "failed", "oom", "interrupted", "refused", "not run")
# A job refused because its directory holds another config's run or is in use by another process.
REFUSED = "refused"

_memory: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}  # (sweep dir, id) -> job -> entry
_current: dict[str, dict[str, Any]] = {}  # sweep dir -> its current.json, as this process started it


def _key(sweep_dir: Path) -> str:
    return str(Path(sweep_dir).absolute())


def _write_json(sweep_dir: Path, path: Path, payload: dict[str, Any]) -> None:
    """``path`` written whole (a temporary file renamed over it), following no link out of ``sweep_dir``."""
    tmp = path.with_name(f".writing-{path.name}")
    try:
        with open_inside(Path(sweep_dir), tmp, "w") as handle:
            handle.write(json.dumps(payload) + "\n")
        os.replace(tmp, path)  # replaces a link planted at ``path`` itself, never its target
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def start(sweep_dir: Path, expected: int | None) -> str:
    """A new sweep into ``sweep_dir`` (``expected`` jobs, when known upfront): its id."""
    header = {"id": uuid.uuid4().hex, "expected": expected}
    _current[_key(sweep_dir)] = header
    try:
        folder = Path(sweep_dir) / LEDGER_DIR
        check_inside(Path(sweep_dir), folder)  # mkdir would create inside a planted link's target
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(sweep_dir, folder / CURRENT, header)
    except (OSError, RunnerError):
        pass  # kept in this process; the jobs it runs record here too
    return header["id"]


def current(sweep_dir: Path) -> dict[str, Any] | None:
    """The latest sweep's header (id, expected job count), or ``None`` when no sweep started one."""
    header = _current.get(_key(sweep_dir))
    if header is not None:
        return header
    try:
        header = json.loads((Path(sweep_dir) / LEDGER_DIR / CURRENT).read_text())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and isinstance(header.get("id"), str) else None


def record(sweep_dir: Path, job: int, job_dir: Path, outcome: str, error: str | None = None) -> None:
    """Job ``job`` of the current sweep ended as ``outcome`` in ``job_dir``."""
    header = current(sweep_dir)
    if header is None:
        return  # not a sweep this runner started (a plain compose, an old sweep)
    try:
        rel = str(Path(job_dir).absolute().relative_to(Path(sweep_dir).absolute()))
    except ValueError:
        rel = str(job_dir)
    entry = {"job": job, "dir": rel, "outcome": outcome, "error": error}
    _memory.setdefault((_key(sweep_dir), header["id"]), {})[job] = entry
    try:
        folder = Path(sweep_dir) / LEDGER_DIR / header["id"]
        check_inside(Path(sweep_dir), folder)  # mkdir would create inside a planted link's target
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(sweep_dir, folder / f"{job}.json", entry)
    except (OSError, RunnerError):
        pass  # a full disk: this process still knows it


def entries(sweep_dir: Path) -> dict[int, dict[str, Any]]:
    """Every job of the current sweep that recorded an outcome, by job number."""
    header = current(sweep_dir)
    if header is None:
        return {}
    found: dict[int, dict[str, Any]] = {}
    folder = Path(sweep_dir) / LEDGER_DIR / header["id"]
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("job"), int) and isinstance(entry.get("outcome"), str):
            found[entry["job"]] = entry
    found.update(_memory.get((_key(sweep_dir), header["id"]), {}))
    return found


def counts(sweep_dir: Path) -> Counter[str]:
    """How many jobs of the current sweep ended in each outcome; jobs it expected and that
    recorded nothing count as ``not run``."""
    found = entries(sweep_dir)
    tally = Counter(entry["outcome"] for entry in found.values())
    expected = (current(sweep_dir) or {}).get("expected")
    if isinstance(expected, int) and expected > len(found):
        tally["not run"] += expected - len(found)
    return tally


def ordered(tally: Counter[str]) -> list[str]:
    """The outcomes of ``tally`` in the order the sweep's line gives them."""
    return sorted(tally, key=lambda status: (ORDER.index(status) if status in ORDER else len(ORDER), status))


def not_results(sweep_dir: Path) -> set[Path]:
    """The job directories the current sweep refused: they hold someone else's run."""
    return {Path(sweep_dir) / entry["dir"] for entry in entries(sweep_dir).values() if entry["outcome"] == REFUSED}


def is_ledger(path: Path) -> bool:
    return (Path(path) / LEDGER_DIR / CURRENT).is_file()
