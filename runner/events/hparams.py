"""The HParams experiment every run writes: the swept keys first, the loss first among the metrics.

Without an experiment summary TensorBoard infers one from the sessions it finds: every
scalar tag becomes a metric (43 of them, each epoch tag again on three ``vs_*`` axes) and
it shows the first five in name order (``acc/...``, ``by_iteration/acc/...`` in older runs), so the loss
had to be ticked by hand. Its hparams backend instead takes the experiment from the first
run that holds one, so each job writes the same one into its own event file (no
pseudo-run): the same hyperparameters in the same order, the same short list of metrics.

The HParams tab prints every number with 5 significant digits (``seed 0.0000``,
``batch_size 1438.0``), so integer values are written as text (``8``), with the values of a
swept key as a discrete domain (its filter's check boxes).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Mapping

from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from runner import tags
from runner.events import summaries
from runner.boardview import MULTIRUN_FILE

# (tag, column title): what a comparison reads, the loss first. No ``vs_*`` duplicates:
# they end at the same values.
METRICS = tuple((tag, tag) for tag in (tags.LOSS_VAL, tags.LOSS_FULL, tags.ACC_VAL, tags.ACC_TRAIN, tags.TRAIN_SECONDS))
# Hyperparameters that follow from others, so they differ where those are swept.
DERIVED = {"batch_size": ("regime", "lr"), "lr_scaling": ("lr",), "optimizer.lr": ("lr",), "optimizer": ("lr",)}


def tb_value(value: Any) -> Any:
    """A hyperparameter as TensorBoard shows it: integers as text (``8``, not ``8.0000``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def sweep_of(log_dir: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The swept keys of the Hydra sweep writing ``log_dir`` (in the order given) and each
    one's values as the sweep lists them; nothing outside a sweep."""
    from hydra.types import RunMode

    from runner.rundir import hydra_job_of

    hydra_cfg = hydra_job_of(Path(log_dir))
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return [], {}
    master_file = Path(hydra_cfg.sweep.dir) / MULTIRUN_FILE
    if not master_file.is_file():
        return [], {}
    stat = master_file.stat()
    swept, values = _swept_values(str(master_file), stat.st_mtime_ns, stat.st_size)
    return list(swept), {key: list(listed) for key, listed in values.items()}  # the cached lists stay as read


@functools.lru_cache(maxsize=4)
def _swept_values(master_file: str, mtime_ns: int, size: int) -> tuple[list[str], dict[str, list[str]]]:
    """:func:`sweep_of` for one ``multirun.yaml`` as it is now (its time and size are part of
    the key): every job of a sweep run in one process reads the same file, once."""
    from omegaconf import OmegaConf

    from runner.sweep import split_sweep_keys, sweep_jobs

    master = OmegaConf.load(master_file)
    swept, _ = split_sweep_keys(master)
    values: dict[str, list[str]] = {key: [] for key in swept}
    try:
        for job in sweep_jobs(master):
            for override in job:
                key, _, value = override.partition("=")
                if key in values and value not in values[key]:
                    values[key].append(value)
    except Exception:  # noqa: BLE001 - a search space (Optuna) has no list of values: no domain
        values = {}
    return swept, values


def ordered_names(hparams: Mapping[str, Any], swept: list[str]) -> tuple[list[str], set[str]]:
    """The hyperparameters in display order (swept keys, those that follow from them, the
    rest as recorded) and the set of those that differ between the sweep's runs."""
    first = [key for key in swept if key in hparams]
    derived = [d for key in first for d in DERIVED.get(key, ()) if d in hparams and d not in first
               and not (key == "batch_size" and d == "lr" and hparams.get("lr_scaling") == "none")]
    derived = list(dict.fromkeys(derived))
    rest = [key for key in hparams if key not in first and key not in derived]
    return first + derived + rest, set(first + derived)


def _domain(info: api_pb2.HParamInfo, recorded: Any, listed: list[str] | None) -> None:
    """A discrete domain from the sweep's listed values, only where each is written exactly as
    a run records it (a run whose value is outside the domain would be filtered out)."""
    if not listed:
        return
    if isinstance(recorded, bool):
        return
    if isinstance(recorded, int):
        try:
            texts = [str(int(v)) for v in listed]
        except ValueError:
            return  # e.g. batch_size=full: recorded as the training set's size
        if str(recorded) in texts:
            info.domain_discrete.extend(texts)
    elif isinstance(recorded, float):
        try:
            numbers = [float(v) for v in listed]
        except ValueError:
            return
        if recorded in numbers:
            info.domain_discrete.extend(numbers)
    elif isinstance(recorded, str) and recorded in listed:
        info.domain_discrete.extend(listed)


def experiment_plugin_data(hparams: Mapping[str, Any], log_dir: Path) -> plugin_data_pb2.HParamsPluginData:
    """The experiment summary a run of the sweep writing ``log_dir`` logs (the same in every run)."""
    swept, values = sweep_of(log_dir)
    names, differs = ordered_names(hparams, swept)
    experiment = api_pb2.Experiment(time_created_secs=time.time())
    for name in names:
        value = hparams[name]
        if value is None:
            continue
        info = experiment.hparam_infos.add(name=name, differs=name in differs)
        shown = tb_value(value)
        info.type = (api_pb2.DATA_TYPE_BOOL if isinstance(shown, bool) else
                     api_pb2.DATA_TYPE_STRING if isinstance(shown, str) else api_pb2.DATA_TYPE_FLOAT64)
        _domain(info, value, values.get(name))
    for tag, title in METRICS:
        experiment.metric_infos.add(name=api_pb2.MetricName(tag=tag), display_name=title)
    return plugin_data_pb2.HParamsPluginData(experiment=experiment, version=summaries.HPARAMS_DATA_VERSION)
