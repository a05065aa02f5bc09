"""Nothing lost: a run killed at any moment resumes to exactly what an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner.checkpoint import FAULT_ENV, LAST, PREV, CheckpointWriter, load_checkpoint, save_checkpoint
from runner.errors import ConfigError, DataError
from runner.train import train

from conftest import read_scalars

# SGD on 120 iris samples, 4 epochs = 480 updates, a checkpoint every 50 of them:
# boundaries fall inside epochs and (at 240) on an epoch end.
RUN = ("dataset=iris", "batch_size=1", "epochs=4", "optimizer=momentum", "optimizer.lr=0.01", "checkpoint_every=50")
TOTAL = 480


def cli(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    environ = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *RUN, "progress=false", f"hydra.run.dir={out}", *extra],
        cwd=out.parent, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finished(out: Path, *extra: str) -> dict:
    proc = cli(out, *extra)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    assert finished(out)["iterations"] == TOTAL
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    got, want = read_scalars(out), read_scalars(reference)
    steps = [s for s, _ in got["loss/train_iter"]]
    assert steps == list(range(TOTAL))  # every step exactly once
    assert got["loss/train_iter"] == want["loss/train_iter"]  # bit for bit
    for tag in ("loss/train_full", "loss/val", "metric/acc/val", "vs_samples/loss/train_full", "update/grad_norm", "lr"):
        assert got[tag] == want[tag], tag
    weights, ref_weights = (torch.load(p / "model.pt", weights_only=True) for p in (out, reference))
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)


def wait_for_checkpoint(out: Path, min_iteration: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ckpt = out / "checkpoints" / LAST
        if ckpt.exists():
            try:
                state = torch.load(ckpt, weights_only=True)["state"]
                if state["iteration"] >= min_iteration:
                    return
            except Exception:
                pass  # being replaced right now
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


# Mid-epoch by default; around the epoch-2 boundary under -m slow (each is a real process and a kill).
@pytest.mark.parametrize("after", [60, pytest.param(240, marks=pytest.mark.slow)])
def test_kill_9_then_resume_equals_an_uninterrupted_run(after, reference, tmp_path):
    out = tmp_path / "run"
    proc = cli(out)
    wait_for_checkpoint(out, after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "summary.json").exists()
    summary = finished(out)
    assert summary["status"] == "done" and summary["iterations"] == TOTAL
    assert_same_run(out, reference)


@pytest.mark.slow  # a real process killed and resumed; the default run keeps kill -9 mid-epoch
def test_kill_during_a_checkpoint_write_then_resume(reference, tmp_path):
    out = tmp_path / "run"
    proc = cli(out, env={FAULT_ENV: "4"})  # dies inside its 4th checkpoint write
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert LAST in leftovers and any(n.startswith(".writing-") for n in leftovers)
    summary = finished(out)
    assert summary["status"] == "done"
    assert_same_run(out, reference)


@pytest.mark.slow  # a real process killed and resumed; the default run keeps kill -9 mid-epoch
def test_sigterm_saves_and_exits_cleanly_then_resumes(reference, tmp_path):
    out = tmp_path / "run"
    proc = cli(out)
    wait_for_checkpoint(out, 100, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 100 <= summary["iterations"] < TOTAL
    assert not (out / "model.pt").exists()
    steps = [s for s, _ in read_scalars(out)["loss/train_iter"]]
    assert steps == list(range(summary["iterations"]))  # flushed up to where it stopped
    resumed = finished(out)
    assert resumed["status"] == "done"
    assert_same_run(out, reference)


def _saved_state(out: Path, name: str) -> dict:
    return torch.load(out / "checkpoints" / name, weights_only=True)["state"]


def _submitted_positions(monkeypatch) -> list[tuple[int, int]]:
    """(epoch, iteration) of every checkpoint the run hands its writer, in order. The files
    alone cannot say: a checkpoint still queued when a newer one arrives is replaced by it."""
    positions: list[tuple[int, int]] = []
    submit = CheckpointWriter.submit

    def record(self, payload, snapshot=False):
        positions.append((payload["state"]["epoch"], payload["state"]["iteration"]))
        return submit(self, payload, snapshot)

    monkeypatch.setattr(CheckpointWriter, "submit", record)
    return positions


def test_epoch_ends_inside_the_checkpoint_interval_skip_their_checkpoint(make_cfg, tmp_path, monkeypatch):
    # 5 epochs of 4 updates (iris, 120 samples, batch 32) well inside an hour: the only
    # checkpoints are the one before the first update and the last epoch's.
    submitted = _submitted_positions(monkeypatch)
    out = tmp_path / "sparse"
    summary = train(make_cfg("dataset=iris", "batch_size=32", "epochs=5", "checkpoint_interval_s=3600", output_dir=out))
    assert summary["iterations"] == 20
    assert submitted == [(1, 0), (6, 20)]
    assert (_saved_state(out, PREV)["epoch"], _saved_state(out, PREV)["iteration"]) == (1, 0)
    assert (_saved_state(out, LAST)["epoch"], _saved_state(out, LAST)["iteration"]) == (6, 20)
    # 0: every epoch end saves. (On disk the previous file may be an older one than epoch 4's
    # end: the writer drops a queued checkpoint for a newer one.)
    submitted.clear()
    every = tmp_path / "every"
    train(make_cfg("dataset=iris", "batch_size=32", "epochs=5", "checkpoint_interval_s=0", output_dir=every))
    assert submitted == [(1, 0), (2, 4), (3, 8), (4, 12), (5, 16), (6, 20)]
    assert (_saved_state(every, LAST)["epoch"], _saved_state(every, LAST)["iteration"]) == (6, 20)


@pytest.mark.slow  # a real process killed and resumed
def test_a_kill_after_skipped_epoch_ends_resumes_exactly_from_the_older_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    # Checkpoints only before the first update and at the end; the process dies inside the
    # second write, so the run resumes from iteration 0 with 480 updates already in its event file.
    proc = cli(out, "checkpoint_every=0", "checkpoint_interval_s=3600", env={FAULT_ENV: "2"})
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert _saved_state(out, LAST)["iteration"] == 0
    summary = finished(out, "checkpoint_every=0", "checkpoint_interval_s=3600")
    assert summary["status"] == "done" and summary["iterations"] == TOTAL
    assert_same_run(out, reference)


def test_finished_run_is_kept_and_resume_never_refuses_it(make_cfg, tmp_path):
    out = tmp_path / "r"
    first = train(make_cfg("dataset=iris", output_dir=out))
    again = train(make_cfg("dataset=iris", output_dir=out))
    assert again == json.loads((out / "summary.json").read_text()) and again["train_loss"] == first["train_loss"]
    with pytest.raises(ConfigError, match="output_dir"):
        train(make_cfg("dataset=iris", "resume=never", output_dir=out))


def test_resume_refuses_a_different_config_but_allows_more_epochs(make_cfg, tmp_path):
    out = tmp_path / "r"
    cfg = make_cfg("dataset=iris", "epochs=2", output_dir=out)
    train(cfg)
    (out / "summary.json").unlink()  # as if killed after its last checkpoint
    with pytest.raises(DataError) as info:
        train(make_cfg("dataset=iris", "epochs=2", "optimizer.lr=0.5", output_dir=out))
    assert "optimizer.lr: 0.1 -> 0.5" in str(info.value)
    longer = train(make_cfg("dataset=iris", "epochs=3", output_dir=out))
    assert longer["status"] == "done" and longer["epochs"] == 3 and longer["iterations"] == 12
    assert [s for s, _ in read_scalars(out)["loss/train_full"]] == [0, 1, 2, 3]


def test_resume_must_without_a_checkpoint_is_an_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="resume='must'"):
        train(make_cfg("dataset=iris", "resume=must", output_dir=tmp_path / "empty"))


def test_failed_run_is_rerun_and_its_files_kept_aside(make_cfg, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    summary = train(make_cfg("dataset=iris", output_dir=out))
    assert summary["status"] == "done"
    kept = list((out / ".attempts").glob("*/summary.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["error"] == "boom"


def test_corrupt_last_falls_back_to_prev(tmp_path, caplog):
    save_checkpoint(tmp_path, {"n": 1})
    save_checkpoint(tmp_path, {"n": 2})
    (tmp_path / LAST).write_bytes(b"truncated garbage")
    state, path = load_checkpoint(tmp_path)
    assert state == {"n": 1} and path.name == PREV
    assert "cannot be loaded" in caplog.text
    (tmp_path / PREV).write_bytes(b"also garbage")
    with pytest.raises(DataError, match="no checkpoint here can be loaded"):
        load_checkpoint(tmp_path)


def test_a_malicious_checkpoint_is_refused_even_when_torch_is_told_to_trust_files(tmp_path):
    marker = tmp_path / "pwned"
    script = f"""
import os, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"state": Evil()}}, "{tmp_path / 'checkpoints' / LAST}")
"""
    (tmp_path / "checkpoints").mkdir()
    subprocess.run([sys.executable, "-c", script], check=True)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", f"from pathlib import Path; from runner.checkpoint import load_checkpoint; load_checkpoint(Path('{tmp_path / 'checkpoints'}'))"],
        env=env, capture_output=True, text=True,
    )
    assert probe.returncode != 0 and "no checkpoint here can be loaded" in probe.stderr
    assert not marker.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signals_only_set_a_flag_and_handlers_are_restored(sig):
    from runner.epochs import StopFlag

    before = signal.getsignal(sig)
    with StopFlag() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)  # delivered to the main thread before the next bytecode
        assert stop.requested and stop.signal == sig
    assert signal.getsignal(sig) == before


def test_sigusr1_stops_a_run_at_an_iteration_boundary_with_a_checkpoint(make_cfg, tmp_path):
    """In-process: the signal arrives during training; the run stops cleanly and resumes exactly."""
    import threading

    overrides = ("dataset=iris", "batch_size=1", "epochs=30")

    def signal_once_training() -> None:
        # The initial checkpoint is written just before the loop installs its handlers.
        deadline = time.time() + 60
        while not (tmp_path / "r" / "checkpoints" / LAST).exists() and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)
        if (tmp_path / "r" / "checkpoints" / LAST).exists():  # else train() failed: don't kill pytest
            os.kill(os.getpid(), signal.SIGUSR1)

    sender = threading.Thread(target=signal_once_training)
    sender.start()
    stopped = train(make_cfg(*overrides, output_dir=tmp_path / "r"))
    sender.join()
    assert stopped["status"] == "interrupted" and 0 < stopped["iterations"] < 3600
    resumed = train(make_cfg(*overrides, output_dir=tmp_path / "r"))
    reference = train(make_cfg(*overrides, output_dir=tmp_path / "ref"))
    assert resumed["status"] == "done" and resumed["train_loss"] == reference["train_loss"]
    assert [s for s, _ in read_scalars(tmp_path / "r")["loss/train_iter"]] == list(range(3600))


# ------------------------------------------------------------------ a self-contained run directory
def hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): 'untouched' means byte for byte."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def killed_mid_run(out: Path) -> None:
    proc = cli(out, env={FAULT_ENV: "3"})  # SIGKILLed inside its 3rd checkpoint write: iteration 100
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_copy_of_an_interrupted_run_resumes_in_the_copy_and_leaves_the_original_untouched(reference, tmp_path):
    original, copy = tmp_path / "run", tmp_path / "copy" / "run"
    killed_mid_run(original)
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    before = hashes(original)
    summary = finished(copy)
    assert summary["status"] == "done" and summary["iterations"] == TOTAL
    assert_same_run(copy, reference)  # the copy's own event file holds every step once
    assert hashes(original) == before


@pytest.mark.slow
def test_a_moved_interrupted_run_resumes_where_it_now_is(reference, tmp_path):
    first, moved = tmp_path / "run", tmp_path / "elsewhere" / "run"
    killed_mid_run(first)
    moved.parent.mkdir()
    os.replace(first, moved)
    summary = finished(moved)
    assert summary["status"] == "done" and summary["iterations"] == TOTAL
    assert_same_run(moved, reference)
    assert not first.exists()


def interrupted_in_process(make_cfg, out: Path) -> None:
    """A finished 2-epoch run made to look interrupted after its last checkpoint."""
    train(make_cfg("dataset=iris", "epochs=2", output_dir=out))
    (out / "summary.json").unlink()


@pytest.mark.parametrize("stored", ["{victim}", "../../victim", "events.out.tfevents.x/../../../victim", 7])
def test_a_checkpoint_cannot_name_a_file_outside_its_run(stored, make_cfg, tmp_path):
    out, victim = tmp_path / "a" / "b", tmp_path / "victim"
    victim.write_text("the user's file")
    interrupted_in_process(make_cfg, out)
    for name in (LAST, PREV):
        payload = torch.load(out / "checkpoints" / name, weights_only=True)
        payload["tensorboard"] = [stored.format(victim=victim) if isinstance(stored, str) else stored, 3]
        torch.save(payload, out / "checkpoints" / name)
    with pytest.raises(DataError, match="not a checkpoint this runner wrote"):
        train(make_cfg("dataset=iris", "epochs=2", output_dir=out))
    assert victim.read_text() == "the user's file"


def test_checkpoints_store_the_event_file_by_name(make_cfg, tmp_path):
    interrupted_in_process(make_cfg, tmp_path / "r")
    name, size = torch.load(tmp_path / "r" / "checkpoints" / LAST, weights_only=True)["tensorboard"]
    assert "/" not in name and (tmp_path / "r" / name).stat().st_size >= size > 0


def test_the_checkpoint_writer_writes_the_state_as_it_was_when_submitted(tmp_path):
    """Serialised at submit (training goes on changing the tensors); the newest wins."""
    weights = torch.zeros(3)
    with CheckpointWriter(tmp_path) as writer:
        writer.submit({"step": 0, "weights": weights})
        writer.wait()
        for step in range(1, 20):
            weights.fill_(step)
            writer.submit({"step": step, "weights": weights})
        weights.fill_(-1.0)  # after the last submit: not in any file
    saved, path = load_checkpoint(tmp_path)
    assert path.name == LAST and saved["step"] == 19
    torch.testing.assert_close(saved["weights"], torch.full((3,), 19.0), rtol=0, atol=0)
    previous, _ = load_checkpoint(tmp_path, accept=lambda payload, p: payload if p.name == PREV else 1 / 0)
    assert 0 <= previous["step"] < 19  # an older whole checkpoint, kept as prev
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, PREV]


def test_a_failed_background_write_is_raised_by_the_training_thread(tmp_path):
    """A write the thread could not do (here: the folder is a file) reaches the run, which
    then ends with the error instead of believing it has a checkpoint."""
    folder = tmp_path / "checkpoints"
    folder.write_text("not a folder")
    writer = CheckpointWriter(folder)
    writer.submit({"step": 0})
    with pytest.raises(OSError):
        writer.wait()
    writer.submit({"step": 1})
    with pytest.raises(OSError):
        writer.close()
    assert folder.read_text() == "not a folder"
