"""report.md: the ordered section builders (:data:`SECTIONS`) and :func:`write_report`, which runs them."""

from __future__ import annotations

import importlib
import json
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from runner.board import board_command
from runner.report import findings as found
from runner.report import sentences
from runner.report.plots import PLOTS, SMOOTH_ABOVE, SMOOTH_WINDOW, PlotFiles, lines_of, write_plots
from runner.report.records import (
    LOSS_GREW,
    Labels,
    ReportError,
    RunRecord,
    configurations,
    display_name,
    growth_note,
    load_records,
    loss_name,
    problem_suffix,
)
from runner.report.tables import runs_table, shorten, status_counts
from runner.safefs import open_inside

REPORT_FILE = "report.md"
IMAGES_DIR = "report"
SEED_FIGURE = "final_over_seeds.png"

# "How to read this": the sentences that apply to what the report shows (a single run is
# not told about seed bands, dashed lines or comparing regimes).
READ_TERMS = """\
An **epoch** is one pass over the training set; an **iteration** is one parameter update.
Batch gradient descent (BGD) makes 1 update per epoch, SGD (batch size 1) makes N, and
mini-batch makes ceil(N / batch size)."""
READ_FULL = """\
`loss/train_full` is the loss on the *whole* training set at the weights at each epoch end{fair};
epoch 0 is the initial weights, before any update{shared}."""
READ_FAIR = ": the fair curve for comparing regimes"
READ_SHARED = ", so runs with the same seed start from the same point"
READ_TAGS = """\
`loss/train_epoch` averages the batch losses seen during the epoch, so under BGD it is the
loss *before* the epoch's single update and lags one update behind `loss/train_full`.
`loss/train_iter` is the loss of the batch each update was computed from: noisy for SGD
and small batches{smooth}. Time is training time only (evaluation excluded)."""
READ_SMOOTH = """\
; above {count} updates it is drawn as a moving mean (its window {window:.0%} of the iteration)
over the faint raw values"""
READ_COLOURS = """\
Each configuration has one colour in every plot; legends sit right of the plots."""
READ_BANDS = "A line with a shaded band is the mean over seeds, the band their minimum and maximum."
READ_DASHED = """\
Dashed lines are runs that did not finish well (diverged, interrupted, failed, or a loss that
grew by orders of magnitude), drawn on their own; a diverged run stops at its last finite
value and may leave the top of the frame."""
READ_PROBLEM = "The run did not finish well ({status}): its curves are dashed."
READ_TB = """\
TensorBoard draws the same curves, one run per job, and its Custom Scalars tab groups them the
same way: `{board}`."""


@dataclass
class Report:
    """What every section builder reads: the runs, their configurations and labels, what was drawn."""

    root: Path
    records: list[RunRecord]
    configs: dict[str, list[RunRecord]]
    labels: Labels
    loss_name: str
    plots: PlotFiles = field(default_factory=lambda: PlotFiles((), ()))
    findings: found.Findings | None = None
    drew_plots: bool = True  # False: a single run's report without figures (single_run_plots=false)

    @property
    def images(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def unread(self) -> list[RunRecord]:
        """Runs whose log could not be read whole: their old figures are kept."""
        return [r for r in self.records if r.unread is not None]


Section = Callable[[Report], "str | None"]


# --------------------------------------------------------------------------- the sections
def title_section(report: Report) -> str:
    records = report.records
    if len(records) == 1:
        grew = f" ({growth_note(records[0].summary)})" if records[0].problem == LOSS_GREW else ""
        source = f"the run in `{report.root}`: {records[0].status}{grew}"
    else:
        source = f"{len(records)} runs in `{report.root}`: {status_counts(records)}"
    return f"# Report: {display_name(report.root)}\n\nGenerated {datetime.now():%Y-%m-%d %H:%M} from {source}."


def _scaling_study(root: Path) -> str | None:
    """The batch-size study's recommendation, when ``root`` holds one (its ``scaling.json``)."""
    from runner.scaling.analysis import SCALING_JSON
    from runner.scaling.report import recommendation

    path = root / SCALING_JSON
    if not path.is_file():
        return None
    try:
        return recommendation(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable scaling.json: the ordinary findings follow


def findings_section(report: Report) -> str:
    """What the runs show, first: per axis, each configuration's loss, the best and how sure;
    for a single run (or configuration) a one-paragraph summary."""
    parts = ["## Findings"]
    unread = sentences.unread_text(report.records, report.labels)
    if unread:
        parts.append(unread)
    if report.findings is None:
        parts.append(sentences.summary_paragraph(report.configs, report.labels))
        return "\n\n".join(parts)
    study = _scaling_study(report.root)
    if study is not None:
        # A batch-size study crosses every batch size with a grid of lrs on purpose: the answer
        # is the fit over each batch size's best lr, not a ranking of every (B, lr) cell.
        parts.append(study + " The section *Which batch size?* below shows how it was measured; every "
                     "configuration's loss at equal samples, updates and time is in `findings.json`.")
        return "\n\n".join(parts)
    parts += sentences.findings_text(report.findings, report.records)
    notes = sentences.caveats(report.configs, report.labels, report.findings)
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts)


def settings_section(report: Report) -> str | None:
    if report.labels.common and len(report.configs) > 1:
        return "Settings shared by every run (left out of the labels): " + ", ".join(f"`{t}`" for t in report.labels.common) + "."
    return None


def how_to_read_section(report: Report) -> str:
    """The reading notes that apply: a single run hears nothing of seeds, bands or comparisons."""
    records, configs = report.records, report.configs
    several = len(records) > 1
    smoothed = any(len(r.scalars.get("loss/train_iter", ())) > SMOOTH_ABOVE for r in records if r.has_events)
    tags = READ_TAGS.format(smooth=READ_SMOOTH.format(count=SMOOTH_ABOVE, window=SMOOTH_WINDOW) if smoothed else "")
    full = READ_FULL.format(fair=READ_FAIR if len(configs) > 1 else "", shared=READ_SHARED if several else "")
    paragraphs = ["## How to read this", READ_TERMS + "\n" + full + "\n" + tags]
    if len(configs) > 1:
        paragraphs.append(READ_COLOURS)
    if several and any(len([r for r in members if r.problem is None]) > 1 for members in configs.values()):
        paragraphs.append(READ_BANDS)
    problems = [r for r in records if r.problem is not None and r.has_events]
    if several and problems:
        paragraphs.append(READ_DASHED)
    elif problems:
        paragraphs.append(READ_PROBLEM.format(status=problem_suffix(problems[0]).strip("()")))
    paragraphs.append(READ_TB.format(board=board_command(report.root)))
    no_curves = [report.labels.run(r) for r in records if not r.has_events]
    if no_curves:
        paragraphs.append("Runs without TensorBoard logs (not plotted): " + ", ".join(f"`{n}`" for n in no_curves) + ".")
    return "\n\n".join(paragraphs)


def _kept_note(path: Path) -> str:
    return f"kept from the report of {datetime.fromtimestamp(path.stat().st_mtime):%Y-%m-%d %H:%M}: a run's log could not be read whole"


NOT_DRAWN = (
    "Not drawn at the end of a single run: drawing them takes about 2 s, longer than a short run "
    "trains. `{report}` draws them now (`single_run_plots=true` at the end of every run), and "
    "TensorBoard shows every curve: `{board}`."
)


def plots_section(report: Report) -> str:
    parts = ["## Plots"]
    if not report.drew_plots:
        command = shlex.join([str(Path(sys.executable).absolute()), "-m", "runner.report", str(report.root.resolve())])
        return "\n\n".join([*parts, NOT_DRAWN.format(report=command, board=board_command(report.root))])
    titles = {spec.name: spec.title for spec in PLOTS}
    kept = set(report.plots.kept)
    for png in report.plots.all:
        title = titles[png.stem]
        heading = f"### {title}" + (f" ({_kept_note(png)})" if png in kept else "")
        parts += [heading, f"![{title}]({IMAGES_DIR}/{png.name})"]
    if not report.plots.all:
        parts.append("No run has finite logged values to plot.")
    return "\n\n".join(parts)


def runs_section(report: Report) -> str:
    return ("## Runs" if len(report.records) > 1 else "## The run") + "\n\n" + runs_table(report.configs, report.labels)


def seed_statistics_section(report: Report) -> str | None:
    """The "Statistics over seeds" section (:mod:`runner.seedstats`), for sweeps with seeds
    or with several configurations; none for a lone run."""
    from runner.seedstats import draw_spread, markdown_section

    figure = report.images / SEED_FIGURE
    if len(report.configs) < 2 and not any(r.seed is not None for r in report.records):
        figure.unlink(missing_ok=True)
        return None
    groups = {config: [r.summary for r in members if r.status == "done"] for config, members in report.configs.items()}
    groups = {config: members for config, members in groups.items() if members}
    if not groups:
        return None
    drawn = draw_spread(figure, groups, report.labels.config)
    section = markdown_section(groups, report.labels.config, f"{IMAGES_DIR}/{SEED_FIGURE}" if drawn else None)
    return "## Statistics over seeds\n\n" + section


def instruments_section(report: Report) -> str | None:
    """The instruments' sections (gradient noise, trajectories), when any run has their data.

    When a run's log could not be read whole, a figure they would remove for lack of data is
    put back as it was, and listed.
    """
    from runner.instruments.sections import instrument_sections  # imports torch: only when reporting

    before = {p: p.read_bytes() for p in report.images.glob("*.png")} if report.unread else {}
    text = instrument_sections(report.images, report.configs, report.labels, report.loss_name).strip()
    restored = []
    for path, data in before.items():
        if not path.exists():
            with open_inside(report.root, path, "wb") as handle:
                handle.write(data)
            restored.append(path)
    if restored:
        kept = "\n\n".join(f"![{p.stem}]({IMAGES_DIR}/{p.name})" for p in restored)
        text += f"\n\n## Figures kept from an earlier report\n\nA run's log could not be read whole, so these stay as they were.\n\n{kept}"
    return text.strip() or None


def sweep_study(module: str) -> Section:
    """The hook for a study of the whole sweep that lives in its own module.

    The module's ``markdown_section(root: Path) -> str | None`` gives the section's Markdown
    (with its ``##`` heading; None or "" when the sweep holds nothing for it). It is imported
    when a report is written, so the study may import this package. A study joins the report
    with one line in :data:`SECTIONS`, e.g. the batch-size scaling study:
    ``sweep_study("runner.scaling"),``.
    """

    def section(report: Report) -> str | None:
        return importlib.import_module(module).markdown_section(report.root)

    section.__name__ = section.__qualname__ = f"sweep_study({module!r})"
    return section


# report.md, in this order: each builder returns its Markdown, or None to leave it out. The
# findings come first, as a paper's abstract does; the evidence follows. Studies of the whole
# sweep (sweep_study) go after the statistics over seeds.
SECTIONS: tuple[Section, ...] = (
    title_section,
    findings_section,
    settings_section,
    how_to_read_section,
    plots_section,
    runs_section,
    seed_statistics_section,
    sweep_study("runner.scaling.report"),
    instruments_section,
)


# --------------------------------------------------------------------------- entry point
def write_report(root: Path, sections: Sequence[Section] = SECTIONS, plots: bool = True) -> Path:
    """Writes ``<root>/report.md``, ``<root>/report/*.png`` and, for several configurations,
    ``<root>/findings.json``.

    A run whose event file is missing or cut short is left out of the findings and named; the
    plots drawn by an earlier report are then kept as they are, never deleted.

    Args:
        root: a run directory, a sweep, or any directory above runs.
        sections: the section builders, in order (:data:`SECTIONS`).
        plots: draw the figures of :data:`PLOTS`; False writes the text alone (the figures
            of an earlier report are removed: they would be out of date), and matplotlib is
            never imported (the instruments' figures are still drawn for runs that measured).

    Returns:
        The path of ``report.md``.

    Raises:
        ReportError: no run directory (``summary.json``) is in or below ``root``.
    """
    root = Path(root)
    records = load_records(root)
    if not records:
        raise ReportError(f"{root}: not a run or sweep directory (no summary.json in it or below it)")
    configs = configurations(records)
    labels = Labels.build(list(configs), fallback=display_name(root))
    report = Report(root, records, configs, labels, loss_name(records))
    subtitle = shorten(", ".join(labels.common), 110) if len(configs) > 1 else labels.fallback
    lines = lines_of(configs, labels) if plots else []
    report.plots = write_plots(report.images, lines, subtitle, report.loss_name, keep_existing=bool(report.unread))
    report.drew_plots = plots
    report.findings = found.find(configs, labels) if len(configs) > 1 else None
    found.write_json(root, report.findings)
    blocks = [block.strip() for block in (section(report) for section in sections) if block and block.strip()]
    path = root / REPORT_FILE
    with open_inside(root, path, "w") as handle:
        handle.write("\n\n".join(blocks) + "\n")
    return path
