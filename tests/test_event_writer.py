"""Behaviour of runner.events (encode, writer): what TensorBoard reads back, byte by byte where it matters."""

from __future__ import annotations

import errno
import gc
import math
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader, RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tb_masked_crc32c
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard import summary as torch_summary

from runner.events import writer as event_writer
from runner.events.encode import encode_scalar, encode_scalars
from runner.events.writer import EventWriteError, EventWriter

REPO = Path(__file__).resolve().parents[1]
WALL = 1_700_000_000.25


# --------------------------------------------------------------------------- helpers
def split_records(blob: bytes) -> list[bytes]:
    """Splits TFRecord bytes into the events' data, checking both CRCs against TensorBoard's."""
    records, pos = [], 0
    while pos < len(blob):
        header = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", blob[pos + 8 : pos + 12])
        assert header_crc == tb_masked_crc32c(header)
        data = blob[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[pos + 12 + length : pos + 16 + length])
        assert data_crc == tb_masked_crc32c(data)
        records.append(data)
        pos += 16 + length
    assert pos == len(blob)
    return records


def protobuf_scalar(tag: str, step: int, value: float, wall_time: float) -> event_pb2.Event:
    return event_pb2.Event(
        wall_time=wall_time,
        step=step,
        summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]),
    )


def load_events(path: Path) -> list[event_pb2.Event]:
    """The events exactly as stored (EventFileLoader would migrate simple_value to a tensor)."""
    return [event_pb2.Event.FromString(record) for record in RawEventFileLoader(str(path)).Load()]


def accumulate(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def same_float32(a: float, b: float) -> bool:
    """Equal as float32, NaN included (NaN must stay NaN)."""
    with np.errstate(over="ignore"):  # 1e300 is meant to become inf
        a32, b32 = np.float32(a), np.float32(b)
    return bool(a32 == b32 or (np.isnan(a32) and np.isnan(b32)))


# --------------------------------------------------------------------------- round trips
def test_ten_thousand_points_read_back_exactly_by_event_accumulator(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(10_000)
    values = rng.standard_normal(10_000) * 10.0 ** rng.integers(-8, 8, 10_000)
    walls = WALL + np.arange(10_000) * 1e-3
    with EventWriter(tmp_path) as writer:
        # Uneven batches, split across the 1- to 2-byte varint boundary at step 128.
        for begin, end in [(0, 1), (1, 100), (100, 1_000), (1_000, 10_000)]:
            writer.add_scalars("train/loss", steps[begin:end], values[begin:end], walls[begin:end])
        writer.add_scalar("val/loss", 0.5, 999, wall_time=WALL)
        writer.add_scalars("val/loss", [1999, 2999], np.array([0.25, 0.125]), WALL + 1.0)

    acc = accumulate(tmp_path)
    assert set(acc.Tags()["scalars"]) == {"train/loss", "val/loss"}
    train = acc.Scalars("train/loss")
    assert [e.step for e in train] == list(range(10_000))
    np.testing.assert_array_equal(np.array([e.value for e in train], dtype=np.float32), values.astype(np.float32))
    np.testing.assert_array_equal(np.array([e.wall_time for e in train]), walls)
    val = acc.Scalars("val/loss")
    assert [(e.step, e.value, e.wall_time) for e in val] == [
        (999, 0.5, WALL),
        (1999, 0.25, WALL + 1.0),
        (2999, 0.125, WALL + 1.0),
    ]


def test_default_wall_time_is_now(tmp_path: Path) -> None:
    before = time.time()
    with EventWriter(tmp_path) as writer:
        writer.add_scalars("a", [1, 2], [1.0, 2.0])
        writer.add_scalar("b", 3.0, 3)
    after = time.time()
    events = [e for e in load_events(next(tmp_path.iterdir())) if e.HasField("summary")]
    assert len(events) == 3
    assert all(before <= e.wall_time <= after for e in events)


STEP_ORDERS = {
    "growing": np.arange(0, 40_000, 97),
    "around_zero": np.arange(-300, 300),
    "shuffled": np.random.default_rng(1).permutation(np.arange(-20_000, 20_000, 37)),
    "extremes": np.array([0, 1, 127, 128, 16383, 16384, 2**40, -1, -(2**63), 2**63 - 1, 5]),
}


@pytest.mark.parametrize("tag", ["train/loss", "", "ü/" + "x" * 300])
@pytest.mark.parametrize("order", list(STEP_ORDERS))
def test_encoded_records_equal_protobuf_serialisation(order: str, tag: str) -> None:
    steps = STEP_ORDERS[order]
    rng = np.random.default_rng(2)
    values = rng.standard_normal(len(steps))
    walls = WALL + rng.random(len(steps))
    for wall_times in (walls, WALL):
        records = split_records(encode_scalars(tag, steps, values, wall_times))
        assert len(records) == len(steps)
        for i, data in enumerate(records):
            wall = float(walls[i]) if wall_times is walls else WALL
            expected = protobuf_scalar(tag, int(steps[i]), float(values[i]), wall)
            assert event_pb2.Event.FromString(data) == expected
            # Byte-identical, not merely equivalent: the vectorised CRC covers every byte.
            assert data == expected.SerializeToString()


def test_single_point_encoder_agrees_with_batch_encoder() -> None:
    steps = STEP_ORDERS["extremes"]
    values = np.array([0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1e300, -1e-45, 3.4e38, 1e-40, 7.0])
    batch = encode_scalars("t", steps, values, WALL)
    single = b"".join(encode_scalar("t", int(s), float(v), WALL) for s, v in zip(steps, values))
    assert batch == single


def test_file_is_readable_by_event_file_loader(tmp_path: Path) -> None:
    with EventWriter(tmp_path, filename_suffix=".v2") as writer:
        writer.add_scalars("loss", np.arange(5), np.arange(5) / 4, WALL)
        path = writer.path
    assert path.name.endswith(".v2")
    assert load_events(path)[1:] == [protobuf_scalar("loss", i, i / 4, WALL) for i in range(5)]
    # The loader TensorBoard's data server uses, which migrates scalars to tensors.
    events = list(EventFileLoader(str(path)).Load())
    assert events[0].file_version == "brain.Event:2"
    assert [e.step for e in events[1:]] == list(range(5))
    assert {e.wall_time for e in events[1:]} == {WALL}
    for i, event in enumerate(events[1:]):
        (value,) = event.summary.value
        assert value.tag == "loss"
        assert value.metadata.plugin_data.plugin_name == "scalars"
        assert list(value.tensor.float_val) == [i / 4]


def test_file_name_follows_tensorboard_convention_and_is_unique(tmp_path: Path) -> None:
    with EventWriter(tmp_path, filename_suffix=".x") as first, EventWriter(tmp_path, filename_suffix=".x") as second:
        pattern = rf"events\.out\.tfevents\.\d{{10}}\.{re.escape(socket.gethostname())}\.{os.getpid()}\.\d+\.x"
        assert re.fullmatch(pattern, first.path.name)
        assert re.fullmatch(pattern, second.path.name)
        assert first.path != second.path
        assert first.path.parent == tmp_path


def test_extreme_steps_and_values_round_trip(tmp_path: Path) -> None:
    steps = [0, 1, 2**31, 2**40, 2**40 + 1, 2**63 - 1, -1, -(2**63)]
    values = [0.0, -0.0, -1.5e-3, math.nan, math.inf, -math.inf, 1e300, 1e-45]
    with EventWriter(tmp_path) as writer:
        writer.add_scalars("batch", steps, values, WALL)
        for step, value in zip(steps, values):
            writer.add_scalar("single", value, step, wall_time=WALL)
        path = writer.path
    read = {"batch": [], "single": []}
    for event in load_events(path)[1:]:
        (value,) = event.summary.value
        read[value.tag].append((event.step, value.simple_value))
    for tag in read:
        assert [s for s, _ in read[tag]] == steps
        for (_, got), want in zip(read[tag], values):
            assert same_float32(got, want), (tag, got, want)
        assert math.copysign(1.0, read[tag][1][1]) == -1.0  # -0.0 keeps its sign

    # The accumulator (what the scalar dashboard uses) keeps big steps exactly too.
    big = accumulate(tmp_path).Scalars("batch")
    assert [e.step for e in big] == steps
    assert math.isnan(big[3].value)


def test_accepts_torch_tensors_and_float32_arrays(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add_scalars("t", torch.arange(3), torch.tensor([0.1, 0.2, 0.3]), WALL)
        writer.add_scalars("f", np.arange(3, dtype=np.int32), np.array([1, 2, 3], dtype=np.float32)[::-1], WALL)
    acc = accumulate(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("t")] == [(i, float(np.float32(v))) for i, v in enumerate([0.1, 0.2, 0.3])]
    assert [(e.step, e.value) for e in acc.Scalars("f")] == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_matches_torch_summary_writer(tmp_path: Path) -> None:
    points = [("loss", 0.731, 0), ("loss", 0.5, 1), ("loss", -2.25, 128), ("acc", 0.9, 2**40), ("loss", 1e-7, -3)]
    torch_writer = SummaryWriter(log_dir=str(tmp_path / "torch"))
    for i, (tag, value, step) in enumerate(points):
        torch_writer.add_scalar(tag, value, step, walltime=WALL + i)
    torch_writer.close()
    with EventWriter(tmp_path / "ours") as writer:
        for i, (tag, value, step) in enumerate(points[:2]):
            writer.add_scalar(tag, value, step, wall_time=WALL + i)
        for i, (tag, value, step) in enumerate(points[2:], start=2):
            writer.add_scalars(tag, [step], [value], WALL + i)

    (torch_file,) = (tmp_path / "torch").iterdir()
    theirs, ours = load_events(torch_file), load_events(writer.path)
    assert theirs[0].file_version == ours[0].file_version == "brain.Event:2"
    assert ours[1:] == theirs[1:]


# --------------------------------------------------------------------------- other summaries
def test_text_and_hparams_summaries_read_back(tmp_path: Path) -> None:
    hparams = {"lr": 0.1, "optimizer": "adam", "batch_size": 32}
    experiment, session_start, session_end = torch_summary.hparams(hparams, {"hparam/loss": 0.5})
    with EventWriter(tmp_path) as writer:
        writer.add_summary(torch_summary.text("notes", "hello **world**"), 7, wall_time=WALL)
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary, 0)
        writer.add_scalars("hparam/loss", [0], [0.5], WALL)
        path = writer.path

    acc = accumulate(tmp_path)
    (text,) = acc.Tensors("notes/text_summary")
    assert (text.step, text.wall_time) == (7, WALL)
    assert text.tensor_proto.string_val == [b"hello **world**"]
    assert acc.SummaryMetadata("notes/text_summary").plugin_data.plugin_name == "text"

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == 0.1
    assert start.session_start_info.hparams["optimizer"].string_value == "adam"
    assert start.session_start_info.hparams["batch_size"].number_value == 32
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert [m.name.tag for m in exp.experiment.metric_infos] == ["hparam/loss"]

    # Exactly what was handed in, nothing lost or re-encoded.
    summaries = [e.summary for e in load_events(path)[1:5]]
    assert summaries == [torch_summary.text("notes", "hello **world**"), experiment, session_start, session_end]


def test_add_summary_rejects_other_messages(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer, pytest.raises(TypeError, match="Summary"):
        writer.add_summary(event_pb2.Event(), 0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- life cycle
def test_flush_makes_points_visible_while_open(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    loader = EventFileLoader(str(writer.path))
    writer.add_scalars("loss", np.arange(1000), np.ones(1000), WALL)
    writer.flush()
    first = [e.step for e in loader.Load() if e.HasField("summary")]
    assert first == list(range(1000))
    writer.add_scalar("loss", 2.0, 1000)
    writer.flush()
    assert [e.step for e in loader.Load()] == [1000]  # the loader picks up where it stopped
    writer.close()


def test_points_reach_the_file_without_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A live TensorBoard must see points during a long epoch without anyone calling flush().
    monkeypatch.setattr(event_writer, "_MAX_LATENCY_S", 0.05)
    with EventWriter(tmp_path) as writer:
        writer.add_scalar("loss", 1.0, 1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if any(e.HasField("summary") for e in load_events(writer.path)):
                break
            time.sleep(0.02)
        else:
            pytest.fail("point not written within 5 s")


def test_close_is_idempotent_and_later_writes_raise(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    writer.close()
    assert accumulate(tmp_path).Scalars("loss")[0].value == 1.0
    for call in (
        lambda: writer.add_scalar("loss", 1.0, 2),
        lambda: writer.add_scalars("loss", [2], [1.0]),
        lambda: writer.add_scalars("loss", [], []),
        lambda: writer.add_summary(torch_summary.text("t", "x"), 2),
        writer.flush,
    ):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_dropped_writer_is_finalised(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.add_scalars("loss", np.arange(100), np.zeros(100), WALL)
    thread = writer._sink.thread
    del writer
    gc.collect()
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    assert len(accumulate(tmp_path).Scalars("loss")) == 100


def test_unclosed_writer_is_flushed_at_exit_and_does_not_hang(tmp_path: Path) -> None:
    script = (
        "import numpy as np\n"
        "from runner.events.writer import EventWriter\n"
        f"w = EventWriter({str(tmp_path)!r})\n"
        "w.add_scalars('loss', np.arange(5000), np.ones(5000))\n"
        "w.add_scalar('loss', 2.0, 5000)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)
    steps = [e.step for e in accumulate(tmp_path).Scalars("loss")]
    assert steps == list(range(5001))


class _FullDisk:
    """Stands in for the event file on a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_write_error_in_thread_is_raised_on_callers_thread(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer._sink.file.close()
    writer._sink.file = _FullDisk()
    writer.add_scalars("loss", [1, 2], [1.0, 2.0])
    with pytest.raises(EventWriteError) as info:
        writer.flush()
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    assert str(writer.path) in str(info.value)
    # Broken for good: every later call says so instead of dropping points.
    with pytest.raises(EventWriteError):
        writer.add_scalar("loss", 3.0, 3)
    with pytest.raises(EventWriteError):
        writer.close()
    writer.close()


def test_logdir_below_a_file_raises_oserror_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(OSError) as info:
        EventWriter(blocker / "run")
    assert str(blocker) in str(info.value)


def test_read_only_logdir_raises_oserror_naming_the_path(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("running as a user (root) who can write to a read-only directory")
        with pytest.raises(OSError) as info:
            EventWriter(read_only / "run")
        assert str(read_only) in str(info.value)
        with pytest.raises(OSError) as info:
            EventWriter(read_only)
        assert str(read_only) in str(info.value)
    finally:
        read_only.chmod(0o700)


# --------------------------------------------------------------------------- bad input
def test_bad_arguments_are_rejected_before_anything_is_written(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        with pytest.raises(TypeError, match="integers"):
            writer.add_scalars("loss", [0.5, 1.5], [1.0, 2.0])
        with pytest.raises(ValueError, match="shape"):
            writer.add_scalars("loss", [1, 2, 3], [1.0, 2.0])
        with pytest.raises(ValueError, match="wall_times"):
            writer.add_scalars("loss", [1, 2], [1.0, 2.0], [WALL])
        with pytest.raises(ValueError, match="one-dimensional"):
            writer.add_scalars("loss", [[1, 2]], [[1.0, 2.0]])
        with pytest.raises(ValueError, match="int64"):
            writer.add_scalars("loss", np.array([2**63], dtype=np.uint64), [1.0])
        with pytest.raises(ValueError, match="int64"):
            writer.add_scalar("loss", 1.0, 2**63)
        with pytest.raises(TypeError, match="integer"):
            writer.add_scalar("loss", 1.0, 1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="tag"):
            writer.add_scalars(b"loss", [1], [1.0])  # type: ignore[arg-type]
        path = writer.path
    assert [e for e in load_events(path) if e.HasField("summary")] == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_cannot_log_silently(tmp_path: Path) -> None:
    # A forked child (e.g. a DataLoader worker) has no writer thread: its points would be lost.
    with EventWriter(tmp_path) as writer:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 2
            try:
                writer.add_scalar("loss", 1.0, 1)
            except RuntimeError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        writer.add_scalar("loss", 2.0, 2)
    assert [e.step for e in accumulate(tmp_path).Scalars("loss")] == [2]
