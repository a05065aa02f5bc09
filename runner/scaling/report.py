"""The study's words: the recommendation, the sweep-end lines and the report section, all from ``scaling.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.safefs import open_inside
from runner.scaling.analysis import SCALING_JSON, analyse, load_runs, study_target
from runner.scaling.extend import bound_of, extend_study
from runner.scaling.plots import FRONTIER_PNG, NOISE_PNG, STEPS_PNG, REGIME_FACTOR, write_plots


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _interval(fitted: dict[str, Any]) -> str:
    interval = fitted.get("B_crit_interval")
    return f"95% interval {_g(interval[0])}–{_g(interval[1])} from resampling seeds" if interval else "no interval"


def recommendation(result: dict[str, Any]) -> str:
    """The study's answer in words (McCandlish et al.'s reading of the fit), every number from ``result``."""
    fitted, noise = result["fit"], result["noise"]
    if fitted is None:
        return "Too few batch sizes reached the target to fit B_crit (at least two are needed)."
    x = fitted["B_crit"]
    text = (
        f"B_crit ≈ {_g(x)} ({_interval(fitted)}); up to about {_g(x / REGIME_FACTOR)} each doubling of the batch size "
        f"cut the updates by about half; beyond about {_g(x * REGIME_FACTOR)} it cut them by less than 10%. "
        f"For the fewest updates at no more than twice the minimal samples, use B ≈ {_g(x)}."
    )
    if noise is not None:
        text += f" The gradient noise scale predicted {_g(noise['B_simple'])} (ratio {_g(noise['B_simple'] / x)})."
    edges = [p["batch_size"] for p in result["points"] if p["lr_at_edge"]]
    if edges:
        text += (f" Caution: the best learning rate is still at an edge of its grid at batch size {', '.join(map(str, edges))}"
                 " (its S may be overestimated): widen optimizer.lr there or raise scaling.lr_extensions.")
    return text


def extension_words(result: dict[str, Any]) -> str | None:
    """Which batch sizes had their lr grid extended (their best lr was at an edge), and where they ended."""
    parts = []
    for p in result["points"]:
        added = p.get("lr_extensions") or []
        if added:
            where = "still at the edge" if p["lr_at_edge"] else "inside the grid"
            parts.append(f"batch size {p['batch_size']}: lr {', '.join(f'{lr:g}' for lr in added)} added, best lr {p['lr']:g} ({where})")
    if not parts:
        return None
    return "Learning-rate grid extended where the best lr was at an edge: " + "; ".join(parts) + "."


def end_lines(result: dict[str, Any]) -> list[str]:
    """What the sweep prints at its end."""
    lines = []
    fitted, noise = result["fit"], result["noise"]
    if fitted is not None:
        lines.append(f"B_crit = {_g(fitted['B_crit'])} ({_interval(fitted)}), S_min = {_g(fitted['S_min'])}, E_min = {_g(fitted['E_min'])}")
    if noise is not None:
        lines.append(f"B_simple = {_g(noise['B_simple'])} (range {_g(noise['B_simple_range'][0])}–{_g(noise['B_simple_range'][1])}) at the target")
    extended = extension_words(result)
    if extended:
        lines.append(extended)
    lines.append(recommendation(result))
    return lines


def _n_train(root: Path, result: dict[str, Any]) -> int | None:
    for point in result["points"]:
        summary = root / point["runs"][0] / "summary.json"
        if summary.is_file():
            return int(json.loads(summary.read_text())["n_train"])
    return None


def write_study(root: Path) -> dict[str, Any] | None:
    """``scaling.json`` and the figures in ``root``; None (nothing written) when it is not a study."""
    result = analyse(root)
    if result is None:
        return None
    with open_inside(root, root / SCALING_JSON, "w") as handle:
        handle.write(json.dumps(result, indent=2) + "\n")
    runs = load_runs(root, result["target"]["value"])
    write_plots(root, result, runs, _n_train(root, result))
    return result


def prepare(root: Path) -> dict[str, Any] | None:
    """For a report of ``root``: ``scaling.json`` and the figures where they are missing (a sweep
    that ended before its study was written); the study's result, or None when it is not one."""
    path = root / SCALING_JSON
    if not path.is_file():
        return write_study(root)
    result = json.loads(path.read_text())
    if not (root / STEPS_PNG).is_file():
        write_plots(root, result, load_runs(root, result["target"]["value"]), _n_train(root, result))
    return result


def finish_study(root: Path) -> None:
    """At a sweep's end: extend the lr grids whose best lr is at an edge, write the study and
    print its findings (nothing for another sweep)."""
    target = study_target(root)
    if target is None:
        return
    extend_study(root, target, bound_of(root))
    result = write_study(root)
    if result is None:
        return
    print(f"Batch-size scaling study ({root / SCALING_JSON}):")
    for line in end_lines(result):
        print(f"  {line}")


def _table(result: dict[str, Any], n_train: int | None) -> str:
    rows = ["| batch size | best lr | S (median) | S range | E (median) | lr at grid edge | runs |", "|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        b = f"{p['batch_size']} (full)" if p["batch_size"] == n_train else str(p["batch_size"])
        low, high = p["steps_range"]
        rng = f"{low}–{high if high is not None else 'not reached'}"
        rows.append(f"| {b} | {p['lr']:g} | {p['steps']:g} | {rng} | {p['samples']:g} | {'yes' if p['lr_at_edge'] else 'no'} | {len(p['runs'])} |")
    return "\n".join(rows)


def markdown_section(root: Path) -> str | None:
    """The report's "Which batch size?" section for a scaling study in ``root`` (None otherwise).

    Only composes: it reads ``scaling.json`` and names the figures beside it, which the sweep's
    end (:func:`finish_study`) or the report command (:func:`prepare`) wrote.
    """
    path = root / SCALING_JSON
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    n_train = _n_train(root, result)
    target = result["target"]
    parts = [
        "## Which batch size?",
        "",
        f"**{recommendation(result)}**",
        "",
        f"Each run stopped when `{target['tag']}` (the loss on the whole training set, evaluated after updates "
        f"on a geometric grid and at every epoch end) reached ≤ {target['value']:g}. S is the first such update; "
        "per batch size the learning rate with the fewest median updates over seeds is kept. "
        "Fit: S = S_min (1 + B_crit / B) by least squares on log S (McCandlish et al. 2018).",
        "",
        _table(result, n_train),
        "",
    ]
    extended = extension_words(result)
    if extended:
        parts += [extended, ""]
    for png, caption in ((STEPS_PNG, "Updates to target against batch size"), (FRONTIER_PNG, "Samples against updates: the trade-off frontier"), (NOISE_PNG, "B_simple against the training loss")):
        if (root / png).is_file():
            parts += [f"![{caption}]({png})", ""]
    return "\n".join(parts)
