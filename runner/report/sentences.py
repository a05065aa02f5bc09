"""The "Findings" section in words: one sentence per axis, the budget, the caveats, a single run's paragraph."""

from __future__ import annotations

import math
from typing import Sequence

from runner.report.findings import BATCH_LOSS_TAG, METRIC, AxisFinding, Findings, quantity, separation, span
from runner.report.records import LOSS_GREW, Labels, RunRecord, compact_ints, divergence_note, growth_note
from runner.seedstats import MIN_SEEDS, Spread, spread


def _g(value: float) -> str:
    return f"{value:.4g}"


def value_text(s: Spread) -> str:
    """``0.4521``, or ``0.4521 ± 0.012`` with the half-width of the 95% interval over seeds."""
    if s.ci is None:
        return _g(s.mean)
    return f"{_g(s.mean)} ± {(s.ci[1] - s.ci[0]) / 2:.2g}"


def _unit(finding: AxisFinding) -> str:
    return "updates" if finding.point.tag == BATCH_LOSS_TAG else finding.axis.unit


def _where(finding: AxisFinding, runs: Sequence[RunRecord]) -> str:
    """Where a configuration's value was logged, when not at the equal point itself."""
    point = finding.point
    xs = [point.points[r].x for r in runs if r in point.points]
    if all(math.isclose(x, point.at, rel_tol=1e-9, abs_tol=1e-12) for x in xs):
        return ""
    if all(x == 0 for x in xs):
        return " (not evaluated after the start by then)"
    return f" (at {span(xs, _unit(finding))})"


def _at_text(finding: AxisFinding, runs: dict[str, list[RunRecord]], names: dict[str, str]) -> str:
    """``4,314 samples = 3 epochs of 1,438``: the equal point, and what it amounts to."""
    point = finding.point
    every = [r for members in runs.values() for r in members]
    text = quantity(point.at, _unit(finding))
    n_train = {r.summary.get("n_train") for r in every}
    if finding.axis.name == "samples" and len(n_train) == 1 and isinstance(n := n_train.pop(), int) and n > 0:
        epochs = point.at / n
        if epochs.is_integer():
            text += f" = {int(epochs)} epoch{'s' if epochs != 1 else ''} of {n:,}"
    if point.tag == BATCH_LOSS_TAG:
        totals = []
        for config, members in runs.items():
            counts = [r.summary.get("iterations") for r in members]
            if all(isinstance(c, int) for c in counts):
                totals.append(f"`{names[config]}` {span([float(c) for c in counts], '')}")
        text += f", the batch loss `{BATCH_LOSS_TAG}`" + (f"; updates in all: {', '.join(totals)}" if totals else "")
    return text


def _difference(best: Spread, other: Spread, other_name: str) -> str:
    """``1.57 below `b` (26.3× lower)``; without the ratio when a loss is not above 0."""
    diff = other.mean - best.mean
    text = f"{_g(diff)} below {other_name}"
    if best.mean > 0 and other.mean > 0:
        ratio = other.mean / best.mean
        text += f" ({ratio:.3g}× lower)" if ratio >= 2 else f" ({100 * diff / other.mean:.2g}% lower)"
    return text


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def _sureness(finding: AxisFinding, names: dict[str, str]) -> str:
    """What the seeds say about the best against the others."""
    if max(s.n for s in finding.values.values()) == 1:
        return "one seed each, so chance is not ruled out"
    if finding.separated is True:
        worst = max(finding.tests.values(), key=lambda c: c.test.p)
        return f"the seeds separate it from every other configuration (Welch {_p(worst.test.p).replace('=', '≤')})"
    if finding.separated is False:
        within = [(c, t) for c, t in finding.tests.items() if separation(t) is False]
        return "but the seeds do not separate it from " + ", ".join(f"`{names[c]}` (Welch {_p(t.test.p)})" for c, t in within)
    return f"too few seeds to test (Welch's test needs {MIN_SEEDS} a configuration, with some spread)"


def axis_sentence(finding: AxisFinding, findings: Findings) -> str:
    """One sentence: each configuration's value at the equal point, the best, by how much, how sure."""
    names, runs = findings.names, findings.runs
    title = finding.axis.title
    if finding.point is None:
        return f"**{title}**: no comparison ({finding.why_none})."
    values = [f"`{names[c]}` {value_text(s)}{_where(finding, runs[c])}" for c, s in finding.values.items()]
    interval = " (mean ± 95% interval over seeds)" if any(s.ci for s in finding.values.values()) else ""
    text = f"**{title}** ({_at_text(finding, runs, names)}): {', '.join(values)}{interval}"
    best = finding.best
    if len(finding.values) < 2:
        return text + f"; only `{names[best]}` has a value there."
    (first, first_spread), (second, second_spread) = list(finding.values.items())[:2]
    difference = _difference(first_spread, second_spread, f"`{names[second]}`")
    return text + f" — best `{names[best]}`, {difference}; {_sureness(finding, names)}."


def budget_text(records: Sequence[RunRecord]) -> str:
    """``Budget: 3 epochs (`budget=epochs`) per run.``, or how the budgets differ."""
    budgets: dict[str, int] = {}
    for record in records:
        budget = record.summary.get("budget")
        if isinstance(budget, dict) and isinstance(budget.get("amount"), (int, float)):
            unit = str(budget.get("unit"))
            text = f"{quantity(float(budget['amount']), 's' if unit == 'seconds' else unit)} (`budget={unit}`)"
            budgets[text] = budgets.get(text, 0) + 1
    if not budgets:
        return "The runs' budget is not recorded."
    if len(budgets) == 1:
        return f"Budget: {next(iter(budgets))} per run."
    return "Budgets differ between runs: " + "; ".join(f"{text} for {n} run{'s' if n > 1 else ''}" for text, n in budgets.items()) + "."


def findings_text(findings: Findings, records: Sequence[RunRecord]) -> list[str]:
    """The Findings section's paragraphs for several configurations (without its heading)."""
    return [
        budget_text(records) + f" Compared: the loss on the whole training set (`{METRIC}`) at one point per axis "
        "that every run reached (how, below; never extrapolated).",
        "\n".join(f"- {axis_sentence(a, findings)}" for a in findings.axes),
        "How each point was chosen (also in `findings.json`): "
        + "; ".join(f"*{a.axis.name}*: {a.point.how if a.point else a.why_none}" for a in findings.axes)
        + ".",
    ]


# --------------------------------------------------------------------------- caveats
def _fixed_lr(records: Sequence[RunRecord]) -> str | None:
    """A caveat when several batch sizes ran at one unscaled learning rate."""
    trained = [r for r in records if isinstance(r.summary.get("batch_size"), int)]
    batch_sizes = {r.summary["batch_size"] for r in trained}
    lrs = {r.summary.get("lr") for r in trained}
    scaling = {(r.summary.get("hparams") or {}).get("lr_scaling", "none") for r in trained}
    if len(batch_sizes) < 2 or len(lrs) != 1 or scaling != {"none"} or not isinstance(lr := lrs.pop(), (int, float)):
        return None
    sizes = ", ".join(str(b) for b in sorted(batch_sizes))
    return (
        f"**One learning rate for every batch size** ({lr:g} at batch sizes {sizes}, `lr_scaling=none`): the step "
        "that suits a small batch is timid for a large one, so this comparison favours small batches per sample and "
        "per epoch. Compare with the rate scaled to the batch (`lr_scaling=linear` or `lr_scaling=sqrt`, as "
        "`experiment=lr_batch_scaling` does) or searched for each batch size (`-m experiment=lr_search batch_size=<B>`)."
    )


def _only_the_start(finding: AxisFinding, runs: Sequence[RunRecord]) -> bool:
    """Whether every value of these runs at the equal point is their initial evaluation."""
    xs = [finding.point.points[r].x for r in runs if r in finding.point.points]
    return bool(xs) and all(x == 0 for x in xs)


def _axis_caveats(findings: Findings) -> list[str]:
    """When an axis could only compare weakly: the budget that would compare properly."""
    found = []
    for finding in findings.axes:
        point = finding.point
        if point is None:
            continue
        if point.tag == BATCH_LOSS_TAG:
            found.append(
                "**Equal updates**: the configurations' whole-training-set evaluations share no point after the start, "
                "so that axis compares single batch losses; to compare after the same number of updates on the whole "
                "training set, give every run the same: `budget=updates budget_amount=<k>`."
            )
        if finding.axis.name == "seconds":
            late = [findings.names[c] for c, members in findings.runs.items() if _only_the_start(finding, members)]
            if late:
                found.append(
                    f"**Equal time**: by {quantity(point.at, 's')}, when the quickest run ended, "
                    + _and([f"`{n}`" for n in late])
                    + " had not been evaluated after the start; to compare at equal time, give every run the same: "
                    "`budget=seconds budget_amount=<s>`."
                )
    return found


def caveats(configs: dict[str, list[RunRecord]], labels: Labels, findings: Findings | None = None) -> list[str]:
    """What the numbers call for: a fixed lr across batch sizes, weak equal points, runs that
    blew up, diverged or did not finish, too few seeds."""
    records = [r for members in configs.values() for r in members]
    left_out = ": left out of the values above" if findings is not None else ""
    found = [c for c in [_fixed_lr(records)] if c]
    if findings is not None:
        found += _axis_caveats(findings)
    for record in records:
        name = f"`{labels.run(record)}`"
        if record.problem == LOSS_GREW:
            found.append(
                f"**Loss grew**: {name} ended with a whole-training-set loss {growth_note(record.summary).removeprefix('loss grew ')} "
                "its initial one (flagged `loss_grew`): a run that blew up; a smaller `optimizer.lr` would tell more."
            )
        elif record.status == "diverged":
            found.append(f"**Diverged**: {name} {divergence_note(record.summary).removeprefix('diverged ')} (non-finite loss){left_out}.")
        elif record.status != "done":
            found.append(f"**Not finished**: {name} is `{record.status}`{left_out}.")
    if findings is not None:
        counts = [len(members) for members in findings.runs.values()]
        if counts and max(counts) == 1:
            found.append(
                "**One seed per configuration**: no interval and no test of chance; sweep the seed too "
                f"(e.g. `seed=0,1,2`, at least {MIN_SEEDS}) to know how sure each difference is."
            )
        elif counts and min(counts) < MIN_SEEDS:
            found.append(f"**Few seeds**: configurations with fewer than {MIN_SEEDS} finished seeds are not judged by Welch's test.")
    return found


def unread_text(records: Sequence[RunRecord], labels: Labels) -> str:
    """The runs whose log could not be read whole, and what that means for the report."""
    unread = [r for r in records if r.unread is not None]
    if not unread:
        return ""
    each = "; ".join(f"`{labels.run(r)}`: {r.unread}" for r in unread)
    return f"**Could not read** {each}. Left out of the comparisons below; plots drawn by an earlier report are kept as they were."


# --------------------------------------------------------------------------- one configuration
def _finals(runs: Sequence[RunRecord], key: str) -> list[float] | None:
    values = [r.summary.get(key) for r in runs]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def _mean_text(values: Sequence[float]) -> str:
    return value_text(spread(values))


def _counts(runs: Sequence[RunRecord]) -> str:
    """``135 updates, 4,314 samples and 0.31 s of training`` (ranges over seeds)."""
    pieces = []
    for key, unit in (("iterations", "updates"), ("samples_seen", "samples"), ("train_seconds", "s")):
        values = [r.summary.get(key) for r in runs]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            pieces.append(span([float(v) for v in values], unit))
    if not pieces:
        return "training"
    return (", ".join(pieces[:-1]) + " and " + pieces[-1] if len(pieces) > 1 else pieces[0]) + " of training"


def summary_paragraph(configs: dict[str, list[RunRecord]], labels: Labels) -> str:
    """One paragraph for a single run (or one configuration's seeds): what it reached, after
    how much training, and what went wrong."""
    records = [r for members in configs.values() for r in members]
    done = [r for r in records if r.status == "done"]
    first = (done or records)[0]
    s = first.summary
    if len(records) == 1:
        text = f"The run `{labels.run(first)}` is `{first.status}`"
    else:
        seeds = [r.seed for r in done if r.seed is not None]
        text = f"One configuration, {len(records)} runs ({len(done)} done" + (f", seeds {compact_ints(seeds)}" if seeds else "") + ")"
    if isinstance(s.get("batch_size"), int):
        budget = budget_text([first]).removeprefix("Budget: ").removesuffix(" per run.")
        text += f": batch size {s['batch_size']} ({s.get('iterations_per_epoch')} updates per epoch), {budget}"
    text += "."
    finals, initial = _finals(done, "train_loss"), _finals(done, "initial_train_loss")
    if finals:
        start = f" from {_mean_text(initial)} at the start" if initial else ""
        text += f" The whole-training-set loss went{start} to {_mean_text(finals)} after {_counts(done)}"
        extra = [f"validation loss {_mean_text(v)}" for v in [_finals(done, "val_loss")] if v]
        extra += [f"accuracy {_mean_text(v)}" for v in [_finals(done, "val_acc")] if v]
        text += (" (" + ", ".join(extra) + ")" if extra else "") + ("; mean ± 95% interval over seeds" if len(done) > 1 else "") + "."
    best, epochs = s.get("best_epoch"), s.get("epochs")
    if len(records) == 1 and first.status == "done" and isinstance(best, int) and isinstance(epochs, int) and best < epochs:
        text += f" Its lowest {'validation' if s.get('val_loss') is not None else 'training'} loss was at epoch {best} of {epochs}."
    notes = caveats(configs, labels)
    return " ".join([text, *notes])
