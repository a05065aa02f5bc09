"""bench/gpu_check.sh off the GPU: with its CUDA steps skipped it still records the machine, writes
the whole table, and runs every benchmark it would run on the GPU on the CPU at tiny sizes, so a
device run cannot fail for a trivial reason (a typo, a missing option, a broken table).

Slow (about two minutes on a 2-core machine): the script starts several fresh processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow

COLUMNS = ["step", "device", "status", "seconds", "result", "log"]
CUDA_STEPS = [
    "torch sees the GPU",
    "pytest -m cuda (CUDA tests, sync-debug, cuda_graph = eager, NCCL torchrun)",
    "torchrun, 1 process on 1 GPU (nccl)",
    "first update latency (fresh process, eager and cuda_graph)",
    "BGD peak memory against the runner's estimate (with and without micro_batch_size)",
    "µs per iteration, one run, batch 1/32/full, eager and cuda_graph",
    "fused group K = 8, 64, 256 against the basic launcher (runs/s)",
]
REASON = "GPU_CHECK_SKIP_CUDA=1 (CUDA steps skipped on request)"
SECTIONS = {  # Markdown file under sections/ in logs.tar.gz -> the heading the benchmark writes
    "startup.md": "## Start-up: seconds to the first update",
    "bgd_memory.md": "## BGD peak memory on cpu: measured against the runner's estimate",
    "loop_overhead.md": "## Loop overhead: the runner against a bare torch loop",
    "fused_sweep.md": "| K runs | batch size |",
}


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    if sys.prefix == sys.base_prefix:  # the script would make its venv in the interpreter's own prefix
        pytest.skip("runs the script with the venv running the tests (GPU_CHECK_VENV), and this python is not in one")
    out = tmp_path_factory.mktemp("gpu_out")
    env = {
        **os.environ,
        "OUT": str(out),
        "GPU_CHECK_SKIP_CUDA": "1",
        # Its budget is sized for the 16-core device; a busy 2-core machine needs more.
        "GPU_CHECK_BUDGET_S": "1500",
        # The venv running these tests: creating one and installing torch takes minutes here.
        "GPU_CHECK_VENV": str(Path(sys.executable).parents[1]),
    }
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    unpacked = tmp_path_factory.mktemp("gpu_logs")
    with tarfile.open(out / "logs.tar.gz") as archive:
        archive.extractall(unpacked, filter="data")
    return done, out, unpacked


def table(markdown: str) -> list[dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:] if not line.startswith("|---")]
    assert all(len(row) == len(COLUMNS) for row in rows), rows
    return [dict(zip(COLUMNS, row)) for row in rows]


def test_every_cuda_step_is_skipped_with_its_reason_and_its_cpu_plumbing_passes(skipped_run):
    done, out, logs = skipped_run
    assert done.returncode == 0, done.stderr[-3000:]
    # Two files, so that the device tool (at most 8 files back) returns all of it.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_results.md", "logs.tar.gz"]
    markdown = (out / "gpu_results.md").read_text()
    # The benchmarks' own tables follow the step table; the step table comes first.
    rows = table(_step_table(markdown))
    steps = [row["step"] for row in rows]
    assert steps == [
        "machine", *(["wheels"] if (REPO / ".whl").is_dir() else []),  # bench/gpu_wheels.sh's folder, when filled
        "venv", "install torch", "install project", "torch sees the GPU",
        *[s for name in CUDA_STEPS[1:] for s in (name, f"{name} (CPU plumbing, tiny)")],
    ]
    cuda = [row for row in rows if row["device"] == "cuda"]
    assert [row["step"] for row in cuda] == CUDA_STEPS
    for row in cuda:
        assert row["status"] == "skipped" and row["result"].startswith(f"skipped: {REASON}"), row
    plumbing = [row for row in rows if row["device"] == "cpu"]
    assert len(plumbing) == len(CUDA_STEPS) - 1
    for row in plumbing:
        assert row["status"] == "ok", (row, (logs / row["log"]).read_text()[-3000:])
        assert int(row["seconds"]) >= 0 and (logs / row["log"]).is_file()
    by_step = {row["step"]: row for row in rows}
    assert by_step["machine"]["status"] == "ok" and "system torch" in by_step["machine"]["result"]
    assert by_step["venv"]["result"] == f"reused {Path(sys.executable).parents[1]} (Python {sys.version.split()[0]})"
    assert by_step["install torch"]["result"] == f"skipped: the environment has torch {torch.__version__} cuda available {torch.cuda.is_available()}"
    assert by_step["install project"]["result"] == "skipped: the environment has the project from this checkout, and pytest"
    assert re.search(r"\d+ tests? collected", by_step[f"{CUDA_STEPS[1]} (CPU plumbing, tiny)"]["result"])
    assert f"CUDA steps skipped: {REASON}" in markdown
    assert (logs / "logs" / "machine.txt").read_text().count("## ") >= 9


def test_each_benchmark_table_is_written_and_appended(skipped_run):
    _, out, logs = skipped_run
    markdown = (out / "gpu_results.md").read_text()
    for name, heading in SECTIONS.items():
        text = (logs / "sections" / name).read_text()
        assert heading in text, name
        assert text.strip() in markdown, name
    bgd = [line for line in (logs / "sections" / "bgd_memory.md").read_text().splitlines() if line.startswith("| 80000 |")]
    assert [line.split("|")[2].strip() for line in bgd] == ["null", "65536"]
    assert all(line.split("|")[5].strip() == "—" for line in bgd)  # the CPU keeps no peak: not invented


def _step_table(markdown: str) -> str:
    """The first table of the file (the steps), up to the first benchmark section."""
    start = markdown.index("| step |")
    end = markdown.find("\n\n", start)
    return markdown[start : end if end != -1 else None]
