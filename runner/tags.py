"""The TensorBoard tag names the runner writes and reads, and the names older runs used.

TensorBoard's Time Series shows one section per tag's first path part, ordered by its
tag comparison (letters in ASCII order, ``/`` before any letter), so the names are chosen
for that order: ``loss`` first, then ``lr``, ``metric``, ``noise``, ``overfit_gap``,
``time``, ``update`` and the three other x-axes ``vs_iteration``, ``vs_samples`` and
``vs_time_ms`` last, where they do not bury the loss. Runs written before this naming
(``acc/…``, ``gap/…``, ``grad_norm``, ``by_…/…``) are read under the present names by
:func:`current`, so the report, the seed aggregates and ``runner.api`` read old and new runs alike.
"""

from __future__ import annotations

LOSS_ITER = "loss/train_iter"  # the batch loss of every update
LOSS_EPOCH = "loss/train_epoch"  # the mean of an epoch's batch losses
LOSS_FULL = "loss/train_full"  # the whole training set's loss at each epoch end
LOSS_VAL = "loss/val"
ACC_TRAIN = "metric/acc/train"
ACC_VAL = "metric/acc/val"
GAP_LOSS = "overfit_gap/loss"  # validation − whole-training-set loss
GAP_ACC = "overfit_gap/acc"  # training − validation accuracy
LR = "lr"
GRAD_NORM = "update/grad_norm"
TRAIN_SECONDS = "time/train_s"

# x-axis name → the prefix of the epoch-level scalars logged against it.
AXIS_PREFIXES = {"iteration": "vs_iteration/", "samples": "vs_samples/", "time_ms": "vs_time_ms/"}
BY_ITERATION, BY_SAMPLES, BY_TIME_MS = AXIS_PREFIXES.values()


def loss_tag(split: str) -> str:
    """The epoch-end loss tag of a split (``train`` is the whole training set)."""
    return LOSS_FULL if split == "train" else LOSS_VAL


def acc_tag(split: str) -> str:
    return f"metric/acc/{split}"


def on_axes(tag: str) -> tuple[str, str, str]:
    """An epoch-level tag against iterations, samples and training milliseconds."""
    return BY_ITERATION + tag, BY_SAMPLES + tag, BY_TIME_MS + tag


# Each old first path part and what it is now; applied to an axis prefix's remainder too.
_LEGACY_HEADS = {
    "acc/": "metric/acc/",
    "gap/": "overfit_gap/",
    "by_iteration/": BY_ITERATION,
    "by_samples/": BY_SAMPLES,
    "by_time_ms/": BY_TIME_MS,
    "grad_norm/": GRAD_NORM + "/",  # a seed aggregate's grad_norm/min, …
}
_LEGACY_WHOLE = {"grad_norm": GRAD_NORM}


def current(tag: str) -> str:
    """A tag under its present name: old runs' ``by_samples/acc/val`` reads as
    ``vs_samples/metric/acc/val``; present names (and tags this runner never wrote) are
    returned unchanged."""
    if tag in _LEGACY_WHOLE:
        return _LEGACY_WHOLE[tag]
    for old, new in _LEGACY_HEADS.items():
        if tag.startswith(old):
            rest = tag[len(old) :]
            return new + (current(rest) if new in AXIS_PREFIXES.values() else rest)
    return tag
