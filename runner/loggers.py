"""A small metric-logger interface, with TensorBoard behind it.

The loop never talks to TensorBoard directly: it hands scalars (and whole per-iteration
series, once per epoch) to a :class:`MetricLogger`. Another backend, or a logger that
fans one process's many fused runs out to many directories, only has to implement this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from runner.events import summaries
from runner.aggregate import layout_summary
from runner.events.hparams import experiment_plugin_data, tb_value
from runner.events.writer import EventWriter

SESSION_STATUS = {
    "done": api_pb2.STATUS_SUCCESS,
    "diverged": api_pb2.STATUS_FAILURE,
    "failed": api_pb2.STATUS_FAILURE,
    "oom": api_pb2.STATUS_FAILURE,
    "interrupted": api_pb2.STATUS_UNKNOWN,
}


class MetricLogger(ABC):
    """Where metrics go. ``step`` is whatever x-axis the tag is defined against."""

    @abstractmethod
    def log(self, name: str, value: float, step: int, wall_time: float | None = None) -> None:
        """One point of one scalar series."""

    def log_dict(self, values: Mapping[str, float], step: int, wall_time: float | None = None) -> None:
        """One point of each of several series, all at the same step."""
        for name, value in values.items():
            self.log(name, value, step, wall_time)

    @abstractmethod
    def log_series(self, name: str, steps: np.ndarray, values: np.ndarray, wall_times: np.ndarray | None = None) -> None:
        """Many points of one series at once (the per-iteration values of an epoch)."""

    @abstractmethod
    def log_text(self, name: str, text: str) -> None:
        """A text note, e.g. the resolved config."""

    def log_image(self, name: str, png: bytes, step: int) -> None:
        """A PNG image (an instrument's figure). A backend that cannot show images drops it."""

    @abstractmethod
    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        """The run's hyperparameters, once, when it starts."""

    @abstractmethod
    def log_status(self, status: str) -> None:
        """How the run ended: ``done``, ``diverged``, ``failed`` or ``interrupted``."""

    @abstractmethod
    def flush(self) -> None:
        """Make everything logged so far durable."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the backend; further calls are errors."""


class TensorBoardLogger(MetricLogger):
    """Writes one TensorBoard event file in ``log_dir`` through the fast :class:`EventWriter`.

    ``log_dir`` is the run directory itself, so TensorBoard's run name is the run's own
    name. A new file starts with the custom-scalars layout (a resumed one already has it).
    """

    def __init__(self, log_dir: str | Path, resume_from: tuple[str, int] | None = None):
        self.log_dir = Path(log_dir)
        self._writer = EventWriter(self.log_dir, resume_from=resume_from)
        if resume_from is None:
            self._writer.add_summary(layout_summary(), step=0)

    def position(self) -> tuple[str, int]:
        """Flush and say where the log ends, for a checkpoint to resume from."""
        path, size = self._writer.flush_position()
        return str(path), size

    def log(self, name: str, value: float, step: int, wall_time: float | None = None) -> None:
        self._writer.add_scalar(name, float(value), int(step), wall_time)

    def log_series(self, name: str, steps: np.ndarray, values: np.ndarray, wall_times: np.ndarray | None = None) -> None:
        self._writer.add_scalars(name, steps, values, wall_times)

    def log_text(self, name: str, text: str) -> None:
        self._writer.add_summary(summaries.text(name, text), step=0)

    def log_image(self, name: str, png: bytes, step: int) -> None:
        self._writer.add_summary(summaries.image(name, png), step=step)

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        # The experiment (hyperparameters in display order, the curated metrics; the same in
        # every run of a sweep: see runner.events.hparams), then this session's start. A metric's
        # value is the last point of the run's own series with that tag.
        self._write_hparams_plugin_data(summaries.EXPERIMENT_TAG, experiment_plugin_data(hparams, self.log_dir))
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in hparams.items():
            value = tb_value(value)
            if value is None:
                continue  # no value type in TensorBoard; an absent hparam shows as empty
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif isinstance(value, str):
                start.hparams[name].string_value = value
            elif isinstance(value, (int, float)):
                start.hparams[name].number_value = float(value)
            else:
                start.hparams[name].string_value = repr(value)
        self._write_hparams_plugin_data(summaries.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))

    def log_status(self, status: str) -> None:
        end = plugin_data_pb2.SessionEndInfo(status=SESSION_STATUS[status], end_time_secs=time.time())
        self._write_hparams_plugin_data(summaries.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))

    def _write_hparams_plugin_data(self, tag: str, data: plugin_data_pb2.HParamsPluginData) -> None:
        self._writer.add_summary(summaries.hparams(tag, data), step=0)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MemoryLogger(MetricLogger):
    """Keeps everything in memory: for tests, and for callers that aggregate runs themselves."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.texts: dict[str, str] = {}
        self.images: dict[str, tuple[int, bytes]] = {}
        self.hparams: dict[str, Any] = {}
        self.status: str | None = None
        self.closed = False

    def log(self, name: str, value: float, step: int, wall_time: float | None = None) -> None:
        self.scalars[name].append((int(step), float(value)))

    def log_series(self, name: str, steps: np.ndarray, values: np.ndarray, wall_times: np.ndarray | None = None) -> None:
        self.scalars[name].extend(zip(np.asarray(steps).tolist(), np.asarray(values, dtype=np.float64).tolist()))

    def log_text(self, name: str, text: str) -> None:
        self.texts[name] = text

    def log_image(self, name: str, png: bytes, step: int) -> None:
        self.images[name] = (int(step), png)

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.hparams = dict(hparams)

    def log_status(self, status: str) -> None:
        self.status = status

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
