"""No link is followed out of a run or sweep directory.

A link planted at any path the project writes — found by listing a real run's tree and a
real sweep's tree (report, seed aggregates), so a file added later is covered without
touching this file — makes a rerun (or the report) refuse in one line naming it, exit 2,
before anything is written: the link's target is byte-identical afterwards and the
directory unchanged. Runs go through :func:`runner.cli.run_cli` in this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest

from runner.errors import DataError
from runner.safefs import LinkRefused, check_no_links, open_inside

# single_run_plots: the report's figures are among the paths a run writes.
RUN = ["dataset=iris", "epochs=1", "batch_size=32", "checkpoint_every=2", "progress=false", "device=cpu", "single_run_plots=true"]
SWEEP = ["-m", "dataset=iris", "epochs=1", "batch_size=32", "seed=0,1", "progress=false", "device=cpu"]


def cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    from runner.cli import run_cli

    stderr, before = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            status = run_cli(argv)
    finally:
        os.chdir(before)
    return status, stderr.getvalue()


def report(root: Path) -> tuple[int, str]:
    from runner.report import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = main([str(root)])
    return status, stderr.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a link's target, a directory's mark."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "dir"
    return found


def written_paths(root: Path) -> list[Path]:
    """Every file and directory the project wrote under ``root`` (relative)."""
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def one_per_job(paths: list[Path]) -> list[Path]:
    """The paths of the first job directory of each kind (jobs write the same files: checking
    every seed's copy would only repeat the same check), plus everything else."""
    seen, kept = set(), []
    for rel in paths:
        shape = tuple("<job>" if "=" in part else part for part in rel.parts)
        if shape not in seen:
            seen.add(shape)
            kept.append(rel)
    return kept


def plant_link(tree: Path, rel: Path, outside: Path) -> Path:
    """Move ``tree/rel`` out to ``outside`` and leave a link to it in its place."""
    entry = tree / rel
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(entry), str(outside))
    entry.symlink_to(outside, target_is_directory=outside.is_dir())
    return outside


def victim_bytes(path: Path) -> dict[str, str]:
    return snapshot(path) if path.is_dir() else {"": hashlib.sha256(path.read_bytes()).hexdigest()}


def assert_refused_and_untouched(tmp: Path, tree: Path, rel: Path, run) -> None:
    """Plant a link at ``rel`` in a copy of ``tree``, call ``run(copy)``: refused, nothing changed."""
    case = tmp / f"case-{hashlib.sha1(str(rel).encode()).hexdigest()[:10]}"  # '=' would need quoting in Hydra
    copy = case / "dir"
    shutil.copytree(tree, copy, symlinks=True)
    victim = plant_link(copy, rel, case / "outside" / rel.name)
    before, victim_before = snapshot(case), victim_bytes(victim)
    status, err = run(copy)
    assert status == 2, f"{rel}: exit {status}: {err}"
    lines = err.splitlines()
    # One line; a sweep refused before its first job lists each job it cannot run, one per line.
    one_line = len(lines) == 1 or all(line.startswith("  #") for line in lines[1:])
    assert one_line and err.startswith("Error: ") and "symbolic link" in err, f"{rel}: {err}"
    assert "Traceback" not in err
    assert victim_bytes(victim) == victim_before, f"{rel}: the link's target changed"
    assert snapshot(case) == before, f"{rel}: refused, but the directory changed"


# ------------------------------------------------------------------ the guards themselves
def test_open_inside_refuses_a_link_at_the_file_or_on_the_way(tmp_path):
    root, victim = tmp_path / "run", tmp_path / "victim"
    (root / "sub").mkdir(parents=True)
    victim.write_text("mine")
    (root / "file").symlink_to(victim)
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    for target in ("file", "dirlink/victim"):
        for mode in ("w", "a", "a+", "r+b", "wb"):
            with pytest.raises(LinkRefused, match="symbolic link"):
                open_inside(root, root / target, mode)
    with pytest.raises(DataError, match="outside"):
        open_inside(root, tmp_path / "victim", "w")
    with pytest.raises(DataError, match="not a file inside"):
        open_inside(root, root / "sub" / ".." / ".." / "victim", "w")
    assert victim.read_text() == "mine"
    with open_inside(root, root / "sub" / "ok", "w") as handle:
        handle.write("x")
    assert (root / "sub" / "ok").read_text() == "x"


def test_check_no_links_names_the_link_and_accepts_a_root_reached_through_one(tmp_path):
    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    (real / "a" / "f").write_text("x")
    via = tmp_path / "via"
    via.symlink_to(real, target_is_directory=True)
    check_no_links(via)  # the user chose to reach the directory through a link
    (real / "a" / "g").symlink_to(real / "a" / "f")
    with pytest.raises(LinkRefused, match=r"/a/g: is a symbolic link"):
        check_no_links(via)


def test_the_lock_is_never_written_through_a_link_planted_after_the_check(tmp_path):
    from runner.rundir import exclusive

    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.write_text("the user's file")
    (out / ".lock").symlink_to(victim)
    with pytest.raises(LinkRefused):
        with exclusive(out):
            pass
    assert victim.read_text() == "the user's file"


# ------------------------------------------------------------------ every path a run writes
@pytest.fixture(scope="module")
def run_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    status, err = cli([*RUN, f"hydra.run.dir={root / 'run'}"], root)
    assert status == 0, err
    return root / "run"


def test_a_run_tree_has_the_files_this_test_relies_on(run_tree):
    names = {str(p) for p in written_paths(run_tree)}
    # A canary: if the enumeration found nothing, the next test would check nothing.
    assert {".lock", "cli.log", ".hydra/config.yaml", ".hydra/accepted/config.yaml", "checkpoints/last.ckpt",
            "checkpoints/prev.ckpt", "summary.json", "model.pt", "report.md"} <= names
    assert any(n.startswith("events.out.tfevents.") for n in names) and any(n.startswith("report/") for n in names)


@pytest.mark.slow
def test_a_link_at_any_path_of_a_run_is_refused_by_a_rerun(run_tree, tmp_path):
    for rel in written_paths(run_tree):
        assert_refused_and_untouched(tmp_path, run_tree, rel, lambda copy: cli([*RUN, f"hydra.run.dir={copy}"], copy.parent))


def test_a_link_at_the_lock_of_a_run_is_refused_by_a_rerun(run_tree, tmp_path):
    """The issue's example: today's rerun wrote its pid into the user's file."""
    assert_refused_and_untouched(tmp_path, run_tree, Path(".lock"), lambda copy: cli([*RUN, f"hydra.run.dir={copy}"], copy.parent))


# ------------------------------------------------------------------ every path a sweep writes
@pytest.fixture(scope="module")
def sweep_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    status, err = cli([*SWEEP, f"hydra.sweep.dir={root / 'sweep'}"], root)
    assert status == 0, err
    return root / "sweep"


@pytest.mark.slow
def test_a_link_at_any_path_of_a_sweep_is_refused_by_a_rerun_and_by_the_report(sweep_tree, tmp_path):
    names = {str(p) for p in written_paths(sweep_tree)}
    assert {"report.md", "multirun.yaml"} <= names and any("aggregate" in n for n in names), sorted(names)
    for rel in one_per_job(written_paths(sweep_tree)):
        assert_refused_and_untouched(tmp_path / "sweep", sweep_tree, rel, lambda copy: cli([*SWEEP, f"hydra.sweep.dir={copy}"], copy.parent))
        assert_refused_and_untouched(tmp_path / "report", sweep_tree, rel, report)
