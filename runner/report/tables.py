"""The runs table: one row per run from its ``summary.json``, and each seed group's mean."""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from runner.report.records import LOSS_GREW, Labels, RunRecord, compact_ints


def fmt(value: Any) -> str:
    """4 significant digits for floats, exact integers, "—" for missing values."""
    if value is None or isinstance(value, (dict, list)):
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return cell(str(value))


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, no column breaks."""
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with "…"."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def notes(summary: dict[str, Any]) -> str:
    """The run's notes cell: why it stopped, its warnings, its best epoch."""
    status = summary.get("status")
    if status == "diverged":
        d = summary.get("divergence")
        if isinstance(d, dict) and d.get("iteration") is not None:
            lr = d.get("lr")
            where = f"epoch {d.get('epoch')}" + (f", lr {lr:.4g}" if isinstance(lr, (int, float)) else "")
            return f"non-finite loss at iteration {d['iteration']} ({where})"
        return "non-finite loss"
    if summary.get("error"):
        return cell(shorten(str(summary["error"]).strip(), 200))
    found = [cell(str(w)) for w in summary.get("warnings") or []]
    if summary.get("stopped_early"):
        found.append("stopped early")
    best, epochs = summary.get("best_epoch"), summary.get("epochs")
    if isinstance(best, int) and isinstance(epochs, int) and best < epochs:
        found.append(f"lowest {'val' if summary.get('val_loss') is not None else 'train'} loss at epoch {best} of {epochs}")
    if summary.get("restored_best"):
        found.append(f"model.pt holds epoch {best}'s weights (early_stopping_restore_best)")
    return "; ".join(found)


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


def _row(name: str, summary: dict[str, Any], note: str) -> str:
    cells = [f"`{name}`"]
    cells += [fmt(summary.get(key)) for title, key in COLUMNS[1:-1]]
    if summary.get("loss_grew"):
        cells[1] += f" ({LOSS_GREW})"
    cells.append(note)
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


def runs_table(configs: dict[str, list[RunRecord]], labels: Labels) -> str:
    """The Markdown table: every run, then its seed group's mean where several seeds finished."""
    header = "| " + " | ".join(title for title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if key in (None, "status") else "---:" for _, key in COLUMNS) + "|"
    rows = [header, rule]
    for config, members in configs.items():
        for record in members:
            rows.append(_row(labels.run(record), record.summary, notes(record.summary)))
        finished = [r for r in members if r.problem is None]
        if len(finished) > 1 and all(r.seed is not None for r in finished):
            seeds = compact_ints([r.seed for r in finished])
            rows.append(_mean_row(labels.config(config, f"mean of seeds {seeds}"), finished))
    return "\n".join(rows)


def status_counts(records: Sequence[RunRecord]) -> str:
    """``3 done, 1 diverged``, with how many of them had a loss that grew."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    grew = sum(1 for record in records if record.problem == LOSS_GREW)
    return text + (f" ({grew} of them with a loss that grew by orders of magnitude)" if grew else "")
