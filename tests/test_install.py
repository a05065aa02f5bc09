"""The package as a user installs it: ``pip install .`` (and ``-e .``) into a fresh venv, used from
another directory, so that nothing can come from the source tree by accident.

To stay quick and offline, the fresh venv borrows the dependencies from this project's venv through
a ``.pth`` file and pip builds with ``--no-deps --no-build-isolation --no-index``; the project
itself is installed the ordinary way, from a copy of the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from runner.cli import GROUPS

pytestmark = pytest.mark.install

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
TINY_RUN = ("epochs=1", "dataset=iris", "progress=false")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def copy_of_checkout(dest: Path) -> Path:
    """The working tree as git sees it (tracked files and new ones not ignored), in a repository of
    its own: building there leaves the real checkout alone, and git can tell what the build left."""
    for name in git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).split("\0"):
        source, target = REPO / name, dest / name
        if not name or not source.is_symlink() and not source.is_file():
            continue  # a tracked file deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():  # runner/conf, the link to conf/
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)
    git("init", "--quiet", cwd=dest)
    git("add", "--all", cwd=dest)
    return dest


def fresh_venv(path: Path) -> Path:
    """A new venv that sees this venv's packages (the dependencies) after its own; returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=TIMEOUT)
    python = path / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    borrowed = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(own) / "_borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(borrowed)))
    return path / "bin"


def pip_install(bin_dir: Path, *args: str) -> None:
    # --ignore-installed: the borrowed site-packages holds this project's own editable install,
    # which pip must neither reuse nor try to uninstall.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--quiet",
         "--disable-pip-version-check", "--no-deps", "--no-build-isolation", "--no-index", "--ignore-installed",
         *args],
        capture_output=True, text=True, timeout=TIMEOUT, env=user_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def user_env() -> dict[str, str]:
    """A user's shell: nothing pointing Python at this checkout, no full Hydra tracebacks."""
    drop = {"PYTHONPATH", "PYTHONHOME", "HYDRA_FULL_ERROR", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def help_groups(help_text: str) -> dict[str, list[str]]:
    """``{group: [options]}`` from the "Config groups" part of ``--help``."""
    section = help_text.split("== Config groups", 1)[1].split("\n", 1)[1].split("==", 1)[0]
    return {
        group.strip(): [option.strip() for option in options.split(",")]
        for group, _, options in (line.partition(":") for line in section.splitlines() if line.strip())
    }


def expected_groups(conf: Path) -> dict[str, list[str]]:
    return {group: sorted(p.stem for p in (conf / group).glob("*.yaml")) for group in GROUPS}


def installed_location(bin_dir: Path, cwd: Path) -> Path:
    """Where the fresh venv's Python finds ``runner``, asked from ``cwd``."""
    return Path(run([bin_dir / "python", "-c", "import runner; print(runner.__file__)"], cwd).stdout.strip()).parent


def untracked_leftovers(checkout: Path) -> list[str]:
    """Files a build added that git would offer to commit (build/, *.egg-info/, dist/ unless ignored)."""
    return git("ls-files", "--others", "--exclude-standard", cwd=checkout).split()


def test_plain_install_runs_from_another_directory(tmp_path):
    checkout = copy_of_checkout(tmp_path / "checkout")
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, str(checkout))
    assert untracked_leftovers(checkout) == []
    # In the checkout, `python -m runner` imports the source package (the current directory comes
    # first on sys.path), which must find the configs too.
    assert "== Config groups" in run([bin_dir / "python", "-m", "runner", "--help"], checkout).stdout
    shutil.rmtree(checkout)  # from here on, only the installed copy exists
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    package = installed_location(bin_dir, elsewhere)
    conf = package / "conf"
    assert package.is_relative_to(tmp_path / "venv" / "lib") and conf.is_dir() and not conf.is_symlink()
    for source in (REPO / "conf").rglob("*.yaml"):
        shipped = conf / source.relative_to(REPO / "conf")
        assert shipped.read_bytes() == source.read_bytes(), shipped
    for source in (REPO / "runner").rglob("*.py"):
        assert (package / source.relative_to(REPO / "runner")).is_file(), source

    help_text = run([bin_dir / "hpr", "--help"], elsewhere).stdout
    assert help_groups(help_text) == expected_groups(REPO / "conf")
    assert "== Defaults" in help_text  # the project's hydra/help template, not Hydra's stock one
    hydra_help = run([bin_dir / "hpr", "--hydra-help"], elsewhere).stdout
    assert "Hydra (" in hydra_help and "--hydra-help" in hydra_help

    run([bin_dir / "hpr", *TINY_RUN], elsewhere)
    run([bin_dir / "python", "-m", "runner", *TINY_RUN], elsewhere)
    summaries = sorted((elsewhere / "outputs").rglob("summary.json"))
    assert len(summaries) == 2
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["status"] == "done" and summary["epochs"] == 1, summary


def test_editable_install_reads_conf_from_the_checkout(tmp_path):
    checkout = copy_of_checkout(tmp_path / "checkout")
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, "--editable", str(checkout))
    assert untracked_leftovers(checkout) == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    assert installed_location(bin_dir, elsewhere) == checkout / "runner"
    # An edit to conf/ takes effect at once, without reinstalling.
    datasets = checkout / "conf" / "dataset"
    (datasets / "iris_copy.yaml").write_bytes((datasets / "iris.yaml").read_bytes())
    groups = help_groups(run([bin_dir / "hpr", "--help"], elsewhere).stdout)
    assert "iris_copy" in groups["dataset"]
    assert groups == expected_groups(checkout / "conf")


def runtime_distributions() -> set[str]:
    """hparam-runner's runtime dependencies and theirs, extras left out (what `make run` installs)."""
    from importlib.metadata import PackageNotFoundError, distribution
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = ["hparam-runner"]
    while todo:
        name = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # a platform-only dependency not installed here
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # behind an extra (or another platform)
            key = req.name.lower().replace("_", "-")
            if key not in seen:
                seen.add(key)
                todo.append(req.name)
    return seen


def runtime_only_venv(path: Path) -> Path:
    """A new venv holding links to the runtime dependencies' files only, taken from this venv:
    a plain `pip install torch==2.13.0 .` without downloading, and without any extra's packages."""
    from importlib.metadata import distribution

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=TIMEOUT)
    own = Path(subprocess.run([path / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True).stdout.strip())
    for name in runtime_distributions():
        dist = distribution(name)
        parts = [Path(str(f)).parts for f in dist.files or [] if not str(f).startswith("..")]
        entries = set()
        for part in parts:
            # A namespace package (hydra_plugins) is shared by several distributions, the extras'
            # plugins among them: link each distribution's own folder inside it, not all of it.
            namespace = len(part) > 2 and not Path(dist.locate_file(Path(part[0]) / "__init__.py")).exists()
            entries.add(Path(*part[:2]) if namespace else Path(part[0]))
        for entry in entries:
            source = Path(dist.locate_file(entry))
            if source.exists() and not (own / entry).exists():
                (own / entry).parent.mkdir(parents=True, exist_ok=True)
                (own / entry).symlink_to(source)
    return path / "bin"


def test_the_runtime_alone_trains_and_names_the_extra_a_launcher_needs(tmp_path):
    """`make run`'s install (no extras): `hpr epochs=1` trains; a Slurm sweep or an Optuna search
    is refused in one line naming the pip install that adds it."""
    checkout = copy_of_checkout(tmp_path / "checkout")
    bin_dir = runtime_only_venv(tmp_path / "venv")
    # The wheel is built here (the build backend, setuptools, is no runtime dependency), then installed there.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(checkout)],
                   check=True, capture_output=True, timeout=TIMEOUT, env=user_env())
    pip_install(bin_dir, str(next(wheels.glob("*.whl"))))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    missing = run([bin_dir / "python", "-c", "import importlib.util as u; print([m for m in ('submitit', 'ray', 'optuna', 'pytest', 'selenium', 'pandas') if u.find_spec(m)])"], elsewhere)
    assert missing.stdout.strip() == "[]"
    run([bin_dir / "hpr", "epochs=1", "progress=false"], elsewhere)
    assert json.loads(next((elsewhere / "outputs").rglob("summary.json")).read_text())["status"] == "done"
    for argv, extra in ((["-m", "hydra/launcher=slurm"], "cluster"), (["-m", "hydra/launcher=ray_cluster"], "cluster"), (["-m", "experiment=lr_search"], "search")):
        result = subprocess.run([bin_dir / "hpr", *argv], cwd=elsewhere, env=user_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("Error: ") and f"pip install 'hparam-runner[{extra}]'" in result.stderr, result.stderr
    assert sorted(p.name for p in (elsewhere / "outputs").rglob("summary.json")) == ["summary.json"]
