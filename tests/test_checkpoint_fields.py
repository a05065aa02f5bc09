"""A checkpoint is input: every field of a real one, mutated, is refused or harmless.

The invariant, for any field of ``last.ckpt``, ``prev.ckpt`` or both, set to any value:
either the rerun is refused with one line (a :class:`RunnerError`) and the run directory is
byte for byte as it was, or it resumes (from ``prev`` when only ``last`` is impossible) to a
``done`` run with exactly the counts of the unmodified one. Never a traceback.

The fields are listed from a real checkpoint, so a new field is mutated without touching
this file. The default run draws a few dozen examples in this process; ``-m fuzz`` draws 300.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.checkpoint import LAST, PREV, CheckpointWriter
from runner.checkpoint_check import ImpossibleCheckpoint, check_checkpoint
from runner.errors import RunnerError
from runner.train import build_run, train

from conftest import FUZZ_EXAMPLES, compose_cfg

# iris, 8 batches of 16 an epoch, a checkpoint every 3 updates: prev.ckpt is inside epoch 2
# (iteration 15: an order, losses, batch sizes, a best epoch), last.ckpt at its end.
RUN = ("dataset=iris", "batch_size=16", "epochs=2", "checkpoint_every=3", "optimizer=adam", "scheduler=step")
COUNTS = ("status", "iterations", "samples_seen", "epochs")
FEW = settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
# -m fuzz: FUZZ_EXAMPLES mutations, each a resume in this process.
MANY = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def interrupted(out: Path) -> None:
    """A finished run made to look killed after its last checkpoint.

    Each checkpoint is written before training goes on, so ``prev.ckpt`` is always the
    mid-epoch one before the end (the writer otherwise drops a checkpoint still queued when a
    newer one arrives, as it may on a loaded machine)."""
    submit = CheckpointWriter.submit

    def submit_and_wait(self, payload, snapshot=False):
        submit(self, payload, snapshot)
        self.wait()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CheckpointWriter, "submit", submit_and_wait)
        train(compose_cfg(RUN, out))
    for name in ("summary.json", "model.pt"):
        (out / name).unlink()


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    interrupted(out)
    reference = tmp_path_factory.mktemp("ref") / "run"
    shutil.copytree(out, reference)
    summary = train(compose_cfg(RUN, reference))
    assert summary["status"] == "done" and summary["iterations"] == 16
    return out, {k: summary[k] for k in COUNTS}


def leaves(node: Any, path: tuple = ()) -> list[tuple]:
    """The path of every field: dict keys and list items, down to tensors and scalars
    (long lists, such as a random state's 625 words, by their first, middle and last item)."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += leaves(value, (*path, key))
    elif isinstance(node, (list, tuple)):
        picks = range(len(node)) if len(node) <= 8 else (0, len(node) // 2, len(node) - 1)
        for i in picks:
            found += leaves(node[i], (*path, i))
    return found


def get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def put(node: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    """``node`` with the field at ``path`` replaced by ``value`` (or deleted); tuples rebuilt."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, tuple):
        items = list(node)
        items[head] = put(items[head], rest, value, delete)
        return tuple(items)
    if delete and not rest:
        if isinstance(node, dict):
            node.pop(head)
        else:
            node.pop(head)
        return node
    node[head] = put(node[head], rest, value, delete)
    return node


def other_values(value: Any) -> st.SearchStrategy:
    """Values a field could be set to: near its own, of its type, of other types, impossible ones."""
    anything = st.one_of(st.none(), st.booleans(), st.integers(-(10**13), 10**13), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
    if isinstance(value, torch.Tensor):
        variants = [st.just(value[:-1] if value.dim() and len(value) else value.reshape(1, *value.shape)), st.just(value.float() if not value.is_floating_point() else value.double())]
        if value.is_floating_point() and value.numel():
            variants += [st.just(value.flatten().clone().index_fill_(0, torch.tensor([0]), math.nan).reshape(value.shape)), st.just(value * 2)]
        if value.dtype == torch.int64 and value.dim() == 1 and len(value) > 1:
            variants += [st.just(value.flip(0)), st.just(torch.cat([value[:1], value[:-1]])), st.just(value + 1)]
        return st.one_of(*variants, anything)
    if isinstance(value, bool):
        return st.one_of(st.just(not value), anything)
    if isinstance(value, int):
        return st.one_of(st.sampled_from([value - 1, value + 1, -value - 1, 10**12, -1, 0]), st.just(float(value)), anything)
    if isinstance(value, float):
        return st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -value, value * 2, 0.0]), anything)
    if isinstance(value, (list, tuple)):
        return st.one_of(st.just(type(value)(list(value)[:-1])), st.just(type(value)([*value, *value[-1:]])), anything)
    if isinstance(value, dict):
        return st.one_of(st.just({**value, "extra": 1}), anything)
    return anything


@st.composite
def mutations(draw, payloads: dict[str, dict]) -> tuple[tuple[str, ...], tuple, str, Any]:
    files = draw(st.sampled_from([(LAST,), (PREV,), (LAST, PREV)]))
    paths = sorted({p for p in leaves(payloads[files[0]]) if p}, key=repr)
    path = draw(st.sampled_from(paths))
    if draw(st.integers(0, 9)) == 0:
        return files, path, "delete", None
    current = get(payloads[files[0]], path)
    return files, path, "set", draw(other_values(current))


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def check_invariant(original: tuple[Path, dict], mutation) -> None:
    source, counts = original
    files, path, how, value = mutation
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        shutil.copytree(source, out)
        for name in files:
            payload = torch.load(out / "checkpoints" / name, weights_only=True)
            try:
                payload = put(payload, path, value, delete=how == "delete")
            except (KeyError, IndexError, TypeError):
                return  # the path does not exist in this file (prev and last differ)
            torch.save(payload, out / "checkpoints" / name)
        before = snapshot(out)
        try:
            summary = train(compose_cfg(RUN, out))
        except RunnerError as err:
            assert "\n" not in str(err), str(err)
            assert snapshot(out) == before, f"{path}: refused, but the run directory changed"
            return
        got = {k: summary[k] for k in COUNTS}
        assert got == counts, f"{files} {path} {how} {value!r:.80}: resumed to {got}, not {counts}"
        assert json.loads((out / "summary.json").read_text())["status"] == "done"


@pytest.fixture(scope="module")
def payloads(original) -> dict[str, dict]:
    return {name: torch.load(original[0] / "checkpoints" / name, weights_only=True) for name in (LAST, PREV)}


def test_the_checkpoints_this_runner_writes_pass_the_check(original, payloads):
    run = build_run(compose_cfg(RUN, original[0]))
    for payload in payloads.values():
        check_checkpoint(run, payload)
    assert payloads[PREV]["state"]["position"] > 0 and payloads[PREV]["state"]["order"] is not None


@pytest.mark.parametrize(
    "field, value, named",
    [
        (("state", "position"), 10**12, "state.position"),
        (("state", "position"), -1, "state.position"),
        (("state", "iteration"), 14, "state.iteration"),
        (("state", "samples"), 1, "state.samples"),
        (("state", "order"), torch.arange(120, dtype=torch.float32), "state.order"),
        (("state", "order"), torch.zeros(120, dtype=torch.int64), "state.order"),
        (("state", "train_seconds"), math.nan, "state.train_seconds"),
        (("state", "epoch_losses", 0), math.inf, "state.epoch_losses[0]"),
        (("model",), {}, "model"),
        (("optimizer", "param_groups", 0, "lr"), -1.0, "lr"),
    ],
)
def test_an_impossible_field_is_named(original, payloads, field, value, named):
    run = build_run(compose_cfg(RUN, original[0]))
    payload = put(torch.load(original[0] / "checkpoints" / PREV, weights_only=True), field, value)
    with pytest.raises(ImpossibleCheckpoint, match=named.replace("[", r"\[").replace("]", r"\]")):
        check_checkpoint(run, payload)


def test_an_impossible_last_falls_back_to_prev_and_resumes_exactly(original, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(original[0], out)
    payload = torch.load(out / "checkpoints" / LAST, weights_only=True)
    payload["state"]["position"] = 10**12  # the example: 182 of 240 iterations, "done"
    torch.save(payload, out / "checkpoints" / LAST)
    summary = train(compose_cfg(RUN, out))
    assert {k: summary[k] for k in COUNTS} == original[1]
    assert "state.position=1000000000000" in caplog.text and "trying the previous one" in caplog.text


def test_both_impossible_is_one_line_and_nothing_written(original, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(original[0], out)
    for name in (LAST, PREV):
        payload = torch.load(out / "checkpoints" / name, weights_only=True)
        payload["state"]["position"] = -1
        torch.save(payload, out / "checkpoints" / name)
    before = snapshot(out)
    with pytest.raises(RunnerError, match="no checkpoint here can be loaded.*state.position=-1") as err:
        train(compose_cfg(RUN, out))
    assert "\n" not in str(err.value) and snapshot(out) == before


def test_any_field_mutated_is_refused_or_resumes_to_the_same_counts(original, payloads):
    @FEW
    @given(mutations(payloads))
    def check(mutation):
        check_invariant(original, mutation)

    check()


@pytest.mark.fuzz
def test_any_field_mutated_is_refused_or_resumes_to_the_same_counts_many(original, payloads):
    @MANY
    @given(mutations(payloads))
    def check(mutation):
        check_invariant(original, mutation)

    check()
