"""A Markdown report with plots for a run or a sweep: ``python -m runner.report DIR``.

``write_report(root)`` reads every run under ``root`` (``summary.json`` and its event file)
and writes ``<root>/report.md``, the plots in ``<root>/report/*.png`` and, for a sweep of
several configurations, ``<root>/findings.json``. The report opens with its findings: each
configuration's loss at equal samples, updates and training time, the best one, and whether
the seeds separate it. The plots are not put into TensorBoard: its Scalars tab draws the same
curves. The command line also regenerates the seed aggregates (:mod:`runner.aggregate`) so
that TensorBoard and the report agree.

What lives where:

- :mod:`~runner.report.records`: the runs read (:class:`RunRecord`), grouped into
  configurations and labelled (:class:`Labels`), and what of their logs could not be read;
- :mod:`~runner.report.findings`: where runs are compared on each axis (the equal points), each
  configuration's values there, Welch's tests, and ``findings.json``;
- :mod:`~runner.report.sentences`: the "Findings" section in words: a sentence per axis, the
  budget, the caveats, a single run's paragraph;
- :mod:`~runner.report.plots`: :data:`PLOTS`, one line per configuration in its own colour,
  drawn on matplotlib's Agg canvas;
- :mod:`~runner.report.tables`: the runs table;
- :mod:`~runner.report.markdown`: the ordered section builders (``SECTIONS``, with the
  ``sweep_study`` hook for studies in their own module) and :func:`write_report`;
- :mod:`~runner.report.command`: :func:`main`, the command line (``__main__`` runs it).
"""

from runner.report.command import main
from runner.report.markdown import SECTIONS, sweep_study, write_report
from runner.report.plots import PLOTS, Line, PlotSpec, curve_of, draw, finite_prefix, lines_of
from runner.report.records import Labels, ReportError, RunRecord, configurations, load_records

__all__ = ["PLOTS", "SECTIONS", "Labels", "Line", "PlotSpec", "ReportError", "RunRecord", "main", "sweep_study", "write_report"]

# The names the tests knew when this package was one module (runner/report.py).
_configurations = configurations
_curve = curve_of
_draw = draw
_finite_prefix = finite_prefix
_lines = lines_of
_load_records = load_records
