"""The command line ends without the interpreter's teardown (runner.fastexit), and still does
everything that shutdown does that anyone can see: threads joined, atexit handlers run, the
streams flushed, the exit status kept."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import atexit, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from runner.fastexit import exit_now

    out = Path(sys.argv[1])
    pool = ThreadPoolExecutor(1)  # an idle pool: its worker waits for the threading exit hook
    pool.submit(lambda: None).result()

    def late_write():
        time.sleep(0.3)
        (out / "thread.txt").write_text("joined")

    threading.Thread(target=late_write).start()  # not a daemon: the interpreter would wait for it
    atexit.register(lambda: (out / "atexit.txt").write_text("ran after " + (out / "thread.txt").read_text()))
    sys.stdout.write("buffered, no newline")
    sys.stderr.write("err, no newline")
    exit_now(int(sys.argv[2]))
""")


@pytest.mark.parametrize("code", [0, 3])
def test_exit_now_joins_threads_runs_atexit_flushes_and_keeps_the_status(tmp_path, code):
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path), str(code)], capture_output=True, text=True, timeout=60)
    assert result.returncode == code
    assert (result.stdout, result.stderr) == ("buffered, no newline", "err, no newline")
    assert (tmp_path / "atexit.txt").read_text() == "ran after joined"  # in the interpreter's order: threads, then atexit


def test_a_run_ends_with_its_files_and_log_complete(tmp_path):
    """The console script's own path: a user's data module registers an atexit handler and
    leaves a thread running; both finish, and the run's log and summary are whole."""
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import atexit, threading, time
        from pathlib import Path

        import numpy as np

        def spiral():
            atexit.register(lambda: Path("atexit.txt").write_text("ran"))
            threading.Thread(target=lambda: (time.sleep(0.3), Path("thread.txt").write_text("joined"))).start()
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 2)).astype("float32")
            return x, (x[:, 0] > 0).astype("int64")
    """))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "runner", "dataset=python", "dataset.fn=mydata.spiral", "epochs=2", "progress=false", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "atexit.txt").read_text() == "ran" and (tmp_path / "thread.txt").read_text() == "joined"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["epochs"] == 2
    log = next(run_dir.glob("*.log")).read_text()
    assert "epoch 2 " in log and log.endswith("\n")
    # The closing line reached the terminal: the report's path, last thing a run logs.
    assert result.stdout.rstrip().splitlines()[-1].endswith(f"Report: {run_dir / 'report.md'}")
    assert (run_dir / "report.md").read_text().startswith("#")
