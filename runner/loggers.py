"""A small metric-logger interface, with TensorBoard behind it.

The loop never talks to TensorBoard directly: it hands scalars (and whole per-iteration
series, once per epoch) to a :class:`MetricLogger`. Another backend, or a logger that
fans one process's many fused runs out to many directories, only has to implement this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.tensorboard import summary as tb_summary

from runner.tbwriter import EventWriter


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

    @abstractmethod
    def log_hparams(self, hparams: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
        """The run's hyperparameters, and the scalar tags that hold its final metrics."""

    @abstractmethod
    def flush(self) -> None:
        """Make everything logged so far durable."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the backend; further calls are errors."""


class TensorBoardLogger(MetricLogger):
    """Writes one TensorBoard event file in ``log_dir`` through the fast :class:`EventWriter`."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self._writer = EventWriter(self.log_dir)

    def log(self, name: str, value: float, step: int, wall_time: float | None = None) -> None:
        self._writer.add_scalar(name, float(value), int(step), wall_time)

    def log_series(self, name: str, steps: np.ndarray, values: np.ndarray, wall_times: np.ndarray | None = None) -> None:
        self._writer.add_scalars(name, steps, values, wall_times)

    def log_text(self, name: str, text: str) -> None:
        self._writer.add_summary(tb_summary.text(name, text), step=0)

    def log_hparams(self, hparams: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
        # The HParams plugin reads each metric's last value from the run's own scalar
        # series with that tag, so the metrics named here are real logged series.
        experiment, session_start, session_end = tb_summary.hparams(
            dict(hparams), {tag: 0.0 for tag in metric_tags}
        )
        for proto in (experiment, session_start, session_end):
            self._writer.add_summary(proto, step=0)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MemoryLogger(MetricLogger):
    """Keeps everything in memory: for tests, and for callers that aggregate runs themselves."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.texts: dict[str, str] = {}
        self.hparams: dict[str, Any] = {}
        self.closed = False

    def log(self, name: str, value: float, step: int, wall_time: float | None = None) -> None:
        self.scalars[name].append((int(step), float(value)))

    def log_series(self, name: str, steps: np.ndarray, values: np.ndarray, wall_times: np.ndarray | None = None) -> None:
        self.scalars[name].extend(zip(np.asarray(steps).tolist(), np.asarray(values, dtype=np.float64).tolist()))

    def log_text(self, name: str, text: str) -> None:
        self.texts[name] = text

    def log_hparams(self, hparams: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
        self.hparams = dict(hparams)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
