"""The command line ``python -m runner.report DIR``: seed aggregates, then the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from runner.aggregate import find_runs, write_seed_aggregates
from runner.errors import RunnerError, print_error
from runner.report.markdown import write_report
from runner.scaling.report import prepare as prepare_scaling_study
from runner.safefs import check_no_links


def _problem_with(root: Path) -> str | None:
    if not root.exists():
        return f"{root}: no such directory"
    if not root.is_dir():
        return f"{root}: not a directory"
    if not find_runs(root):
        return f"{root}: not a run or sweep directory (no summary.json in it or below it)"
    try:
        check_no_links(root)  # before the seed aggregates or the report write anything
    except RunnerError as err:
        return str(err)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m runner.report DIR``: seed aggregates, then the report.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 when ``DIR`` holds no runs (one line on stderr names it).
    """
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Write report.md, findings.json and plots for a run or sweep directory, with seed aggregates.",
    )
    parser.add_argument("directory", type=Path, help="a run directory or a sweep (multirun) directory")
    args = parser.parse_args(argv)
    root: Path = args.directory
    problem = _problem_with(root)
    if problem:
        print_error(problem)
        return 2
    write_seed_aggregates(root)
    prepare_scaling_study(root)  # a batch-size study's scaling.json and figures, where missing
    print(write_report(root))
    return 0
