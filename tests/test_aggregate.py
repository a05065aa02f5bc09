"""Seed groups, their aggregate runs, the custom-scalars layout and the fast event reader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.tensorboard import SummaryWriter

from runner.aggregate import AGGREGATE_DIR, find_runs, layout_summary, seed_groups, write_seed_aggregates
from runner.events.read import _record_bounds, read_scalar_series
from runner.events.writer import EventWriter
from runner.train import train

from conftest import compose_cfg, read_scalars

IRIS = ("dataset=iris", "epochs=2")


def _train(run_dir: Path, *overrides: str) -> dict:
    """Trains into ``run_dir`` and records the overrides as Hydra would."""
    cfg = compose_cfg([*IRIS, *overrides])
    # Set after composing: the "=" in sweep paths would not survive the override parser.
    cfg.output_dir = str(run_dir)
    summary = train(cfg)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in (*IRIS, *overrides)))
    return summary


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two configurations × seeds, plus a diverged seed that must stay out of its group's mean."""
    root = tmp_path_factory.mktemp("sweep")
    for seed in (0, 1, 2):
        _train(root / "batch_size=8" / f"seed={seed}", "batch_size=8", f"seed={seed}")
    for seed in (0, 1):
        _train(root / "regime=bgd" / f"seed={seed}", "regime=bgd", f"seed={seed}")
    summary = _train(root / "regime=bgd" / "seed=7", "batch_size=1", "optimizer.lr=1e6", "seed=7")
    assert summary["status"] == "diverged"
    return root


def _event_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("events.out.tfevents.*"))


def _touch_run(path: Path, status: str = "done") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({"status": status}))
    return path


# --------------------------------------------------------------------------- discovery
def test_find_runs_and_seed_groups_on_a_constructed_layout(tmp_path):
    root = tmp_path
    expected = [
        _touch_run(root / "a=1,b=2" / f"seed={k}") for k in (0, 1, 2, 10)
    ] + [_touch_run(root / "plain_run"), _touch_run(root / "seed=0"), _touch_run(root / "seed=x")]
    # None of these is a run: generated directories, Hydra's folder, a set-aside attempt.
    for ignored in ("a=1,b=2/seed_aggregate", "report", "plain_run/.hydra", "seed=0/.attempts/1-failed"):
        _touch_run(root / ignored)
    (root / "empty").mkdir()

    runs = find_runs(root)
    assert sorted(runs) == sorted(expected)
    # Seeds in numeric order: seed=10 after seed=2.
    assert [r.name for r in runs[:4]] == ["seed=0", "seed=1", "seed=2", "seed=10"]

    groups = seed_groups(runs, root)
    assert list(groups) == [".", "a=1,b=2"]
    assert groups["."] == [root / "seed=0"]
    assert [p.name for p in groups["a=1,b=2"]] == ["seed=0", "seed=1", "seed=2", "seed=10"]


def test_a_run_directory_is_its_own_only_run(tmp_path):
    run = _touch_run(tmp_path / "seed=3")
    assert find_runs(run) == [run]
    # Its siblings live outside the root, so it forms no group there.
    assert seed_groups([run], run) == {}


# --------------------------------------------------------------------------- aggregates
def _common(members: list[dict], tag: str) -> tuple[list[int], np.ndarray]:
    """Steps every member has and the members' float32 values there, (members, steps)."""
    by_step = [dict(m[tag]) for m in members]
    steps = sorted(set.intersection(*(set(d) for d in by_step)))
    return steps, np.array([[d[s] for s in steps] for d in by_step], dtype=np.float32)


def test_aggregate_is_exactly_the_seed_statistics(sweep):
    written = write_seed_aggregates(sweep)
    assert sorted(written) == [sweep / "batch_size=8" / AGGREGATE_DIR, sweep / "regime=bgd" / AGGREGATE_DIR]

    for agg_dir, seeds in ((sweep / "batch_size=8" / AGGREGATE_DIR, (0, 1, 2)), (sweep / "regime=bgd" / AGGREGATE_DIR, (0, 1))):
        members = [read_scalars(agg_dir.parent / f"seed={k}") for k in seeds]
        aggregate = read_scalars(agg_dir)
        tags = set(members[0]).intersection(*members[1:])
        assert {"loss/train_iter", "loss/train_full", "lr", "vs_samples/loss/train_full"} <= tags
        for tag in tags - {t for t in tags if t.startswith("vs_time_ms/")}:
            steps, values = _common(members, tag)
            wide = values.astype(np.float64)
            expected = {
                "": wide.mean(axis=0),
                "/min": values.min(axis=0),
                "/max": values.max(axis=0),
                "/std": wide.std(axis=0, ddof=1),  # the sample std, as the report's tables
            }
            for suffix, want in expected.items():
                got = aggregate[tag + suffix]
                assert [s for s, _ in got] == steps, tag + suffix
                np.testing.assert_array_equal(np.array([v for _, v in got], np.float32), want.astype(np.float32), err_msg=tag + suffix)


def test_time_tags_pair_the_kth_epoch_of_each_seed(sweep):
    write_seed_aggregates(sweep)
    members = [read_scalars(sweep / "batch_size=8" / f"seed={k}") for k in (0, 1, 2)]
    aggregate = read_scalars(sweep / "batch_size=8" / AGGREGATE_DIR)
    tag = "vs_time_ms/loss/train_full"
    steps = np.array([[s for s, _ in m[tag]] for m in members])
    values = np.array([[v for _, v in m[tag]] for m in members], np.float32)
    got = aggregate[tag]
    assert [s for s, _ in got] == np.rint(steps.mean(axis=0)).astype(int).tolist()
    np.testing.assert_array_equal([v for _, v in got], values.astype(np.float64).mean(axis=0).astype(np.float32))


def test_aggregate_json_lists_members_and_leaves_out_the_diverged_seed(sweep):
    write_seed_aggregates(sweep)
    info = json.loads((sweep / "regime=bgd" / AGGREGATE_DIR / "aggregate.json").read_text())
    assert info["group"] == "regime=bgd"
    assert info["seeds"] == [0, 1]
    assert info["excluded"] == [{"run": "seed=7", "status": "diverged"}]
    assert info["tags"]["loss/train_full"] == {"points": 3, "first_step": 0, "last_step": 2, "aligned_by": "step"}
    assert info["tags"]["vs_time_ms/loss/train_full"]["aligned_by"].startswith("position")


def test_aggregate_json_holds_the_final_metrics_over_seeds(sweep):
    from scipy import stats

    write_seed_aggregates(sweep)
    written = json.loads((sweep / "batch_size=8" / AGGREGATE_DIR / "aggregate.json").read_text())
    assert written["std"] == "sample (ddof=1), as report.md"  # the bands and the report's tables agree
    final = written["final"]
    losses = [json.loads((sweep / "batch_size=8" / f"seed={k}" / "summary.json").read_text())["val_loss"] for k in range(3)]
    assert final["val_loss"]["values"] == losses and final["val_loss"]["n"] == 3
    assert final["val_loss"]["std"] == pytest.approx(np.std(losses, ddof=1), rel=1e-12)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(losses), scale=stats.sem(losses))
    assert final["val_loss"]["ci"] == pytest.approx([low, high], rel=1e-12)
    assert {"train_loss", "val_acc", "gap_loss", "gap_acc"} <= set(final)


def test_regenerating_replaces_the_aggregate(sweep):
    write_seed_aggregates(sweep)
    tb = sweep / "batch_size=8" / AGGREGATE_DIR
    first = read_scalars(tb)
    write_seed_aggregates(sweep)
    assert len(_event_files(tb)) == 1
    assert read_scalars(tb) == first


def test_a_group_left_with_one_finished_seed_loses_its_aggregate(tmp_path):
    for seed in (0, 1):
        _train(tmp_path / "cfg" / f"seed={seed}", "regime=bgd", f"seed={seed}")
    assert write_seed_aggregates(tmp_path) == [tmp_path / "cfg" / AGGREGATE_DIR]
    summary_path = tmp_path / "cfg" / "seed=1" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "status": "failed"}))
    assert write_seed_aggregates(tmp_path) == []
    assert not (tmp_path / "cfg" / AGGREGATE_DIR).exists()
    # The aggregate is not itself a run.
    assert all(AGGREGATE_DIR not in run.parts for run in find_runs(tmp_path))


# --------------------------------------------------------------------------- layout
def _read_layout(run_dir: Path) -> layout_pb2.Layout:
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("custom_scalars__config__")
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


def test_layout_has_the_categories_and_anchored_regexes(tmp_path):
    with EventWriter(tmp_path) as writer:
        writer.add_summary(layout_summary(), step=0)
    layout = _read_layout(tmp_path)
    categories = {c.title: c for c in layout.category}
    assert list(categories) == [
        "Loss by iteration",
        "Loss by epoch",
        "Loss by samples seen",
        "Loss by wall time",
        "Validation",
        "Overfitting",
        "Seed bands",
    ]

    def regexes(category: str) -> list[str]:
        return [r for chart in categories[category].chart for r in chart.multiline.tag]

    assert regexes("Loss by iteration") == ["^loss/train_iter$"]
    assert regexes("Loss by epoch") == ["^loss/train_full$", "^loss/train_epoch$"]
    assert regexes("Loss by samples seen") == ["^vs_samples/loss/train_full$"]
    assert regexes("Loss by wall time") == ["^vs_time_ms/loss/train_full$"]
    assert regexes("Validation") == ["^loss/val$", "^metric/acc/val$"]
    assert regexes("Overfitting") == ["^loss/train_full$", "^loss/val$", "^overfit_gap/loss$", "^overfit_gap/acc$"]
    train_full = re.compile(regexes("Loss by epoch")[0])
    assert train_full.search("loss/train_full")
    for other in ("vs_samples/loss/train_full", "loss/train_full/min", "vs_iteration/loss/train_full"):
        assert not train_full.search(other)

    bands = [(s.value, s.lower, s.upper) for chart in categories["Seed bands"].chart for s in chart.margin.series]
    assert bands == [
        ("loss/train_full", "loss/train_full/min", "loss/train_full/max"),
        ("loss/val", "loss/val/min", "loss/val/max"),
    ]


def test_every_run_and_aggregate_carries_the_same_layout_and_no_layout_directory_exists(sweep, tmp_path):
    write_seed_aggregates(sweep)
    with EventWriter(tmp_path) as writer:
        writer.add_summary(layout_summary(), step=0)
    reference = _read_layout(tmp_path)
    carriers = [run for run in find_runs(sweep)] + [sweep / "batch_size=8" / AGGREGATE_DIR, sweep / "regime=bgd" / AGGREGATE_DIR]
    assert len(carriers) == 8
    for run in carriers:
        assert _read_layout(run) == reference, run
    assert not (sweep / "_layout").exists()


def test_layout_rejects_a_margin_chart_without_three_tags():
    with pytest.raises(ValueError, match="value, lower, upper"):
        layout_summary(tags={"Bands": {"bad": ("Margin", ["loss/val", "loss/val/min"])}})


# --------------------------------------------------------------------------- the reader
def _as_lists(series) -> dict[str, list[tuple[int, float]]]:
    return {tag: list(zip(s.steps.tolist(), s.values.tolist())) for tag, s in series.items()}


def test_reader_matches_event_accumulator_on_a_real_run(sweep):
    for run in (sweep / "batch_size=8" / "seed=0", sweep / "regime=bgd" / "seed=7"):
        expected = read_scalars(run)
        got = _as_lists(read_scalar_series(run))
        assert set(got) == set(expected)
        for tag in expected:
            np.testing.assert_array_equal(np.array(got[tag]), np.array(expected[tag]), err_msg=tag)


def test_reader_handles_other_writers_events_and_odd_steps(tmp_path):
    with SummaryWriter(str(tmp_path)) as writer:
        for step in (0, 1, 300, -3, 2**40, 0):
            writer.add_scalar("a", step * 0.5, step)
            writer.add_text("note", "text between scalars", step)
            writer.add_scalar("new_style", float(step), step, new_style=True)
    got = _as_lists(read_scalar_series(tmp_path))
    steps = [0, 1, 300, -3, 2**40, 0]
    assert got["a"] == read_scalars(tmp_path)["a"] == [(s, float(np.float32(s * 0.5))) for s in steps]
    # Tensor-style scalars (what TensorBoard's Scalars tab also shows) are read too.
    assert got["new_style"] == [(s, float(np.float32(s))) for s in steps]


def test_reader_skips_a_half_written_last_record(tmp_path):
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(5):
            writer.add_scalar("a", float(step), step)
    (path,) = _event_files(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    assert [s for s, _ in _as_lists(read_scalar_series(tmp_path))["a"]] == [0, 1, 2, 3]


def _walk(buf: bytes) -> tuple[list[int], list[int]]:
    """Every whole record's data start and length, one header at a time."""
    starts, lengths, offset = [], [], 0
    while offset + 12 <= len(buf):
        length = int.from_bytes(buf[offset : offset + 8], "little")
        if offset + 16 + length > len(buf):
            break
        starts.append(offset + 12)
        lengths.append(length)
        offset += 16 + length
    return starts, lengths


@settings(max_examples=150, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 60)), min_size=0, max_size=25),
    cut=st.integers(0, 30),
)
def test_record_bounds_are_every_record_in_order(runs, cut):
    """Runs of equal lengths of any size (jumped over once long) mixed with single records,
    and a file cut anywhere in its last record: the same records a header-by-header walk finds."""
    buf = b"".join(
        (length).to_bytes(8, "little") + b"\x00" * 4 + bytes([i % 251]) * length + b"\x00" * 4
        for i, (length, count) in enumerate(runs)
        for _ in range(count)
    )
    buf = buf[: max(0, len(buf) - cut)]
    starts, lengths = _record_bounds(buf)
    assert (starts.tolist(), lengths.tolist()) == _walk(buf)
