"""End of a sweep (or a run): aggregates, TensorBoard layout and HParams experiment, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from runner.loggers import hparams_pb
from runner.tbwriter import EventWriter

log = logging.getLogger(__name__)

HPARAMS_DIR = "_hparams"
# The final values the HParams tab lists for each run (the last point of each series).
METRIC_TAGS = ("loss/train_full", "loss/val", "acc/train", "acc/val", "loss/train_epoch")


def write_hparams_experiment(root: Path) -> Path | None:
    """One HParams experiment for the whole sweep, at ``root/_hparams``.

    TensorBoard uses the first experiment summary it finds, so there is exactly one, listing
    every hyperparameter with the values the runs took (discrete domains make the table
    filterable) and the metric tags above. Rewritten from the runs' summary.json each time.
    """
    from runner.aggregate import find_runs

    values: dict[str, set[Any]] = {}
    for run in find_runs(root):
        summary = json.loads((run / "summary.json").read_text())
        for name, value in (summary.get("hparams") or {}).items():
            values.setdefault(name, set()).add(value)
    if not values:
        return None
    experiment = api_pb2.Experiment()
    for name in sorted(values):
        info = experiment.hparam_infos.add(name=name)
        seen = values[name]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_discrete.extend(sorted(float(v) for v in seen))
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(sorted(str(v) for v in seen))
    for tag in METRIC_TAGS:
        experiment.metric_infos.add(name=api_pb2.MetricName(tag=tag))
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)

    folder = root / HPARAMS_DIR
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    with EventWriter(folder) as writer:
        writer.add_summary(hparams_pb(metadata.EXPERIMENT_TAG, data), step=0)
    return folder


def finish(root: Path) -> Path:
    """Seed aggregates, TensorBoard layout, HParams experiment and report for ``root``."""
    from runner.aggregate import write_layout, write_seed_aggregates
    from runner.report import write_report

    write_seed_aggregates(root)
    write_layout(root)
    write_hparams_experiment(root)
    return write_report(root)


class ReportCallback(Callback):
    """Hydra callback: after every run and every multirun, write the report next to the results.

    A failure here is logged, never raised: it must not turn a finished sweep into an error.
    """

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(Path(config.hydra.sweep.dir))

    @staticmethod
    def _finish(root: Path) -> None:
        if not root.is_dir() or not any(root.rglob("summary.json")):
            return
        try:
            report = finish(root)
        except Exception:
            log.exception("Could not write the report for %s (the results themselves are complete).", root)
            return
        log.info("Report: %s", report)
        log.info("TensorBoard: tensorboard --logdir %s --host 127.0.0.1", root)
