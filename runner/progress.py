"""Progress display: a tqdm bar on a terminal, nothing per iteration otherwise.

Showing the current loss needs its value on the host, which on a GPU means waiting for
the device. The bar therefore reads the loss only when it redraws (a few times a second),
never once per iteration.

While the bar is on screen, console log lines go through ``tqdm.write``, which clears the
bar, prints the line and redraws the bar below it: written directly, a line would land on
the end of the bar's line (the bar has no newline until it closes).
"""

from __future__ import annotations

import sys
import time

from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

REFRESH_SECONDS = 0.25


class NoProgress:
    """Used when stderr is not a terminal: per-epoch log lines say everything instead."""

    def start_epoch(self, epoch: int, epochs: int | None) -> None:
        pass

    def iteration(self, loss: Tensor) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressBar:
    """One bar over all iterations of the run, labelled with the epoch and the latest loss."""

    def __init__(self, total_iterations: int | None):
        self._bar = tqdm(total=total_iterations, unit="it", dynamic_ncols=True, leave=True)
        self._pending = 0
        self._last_refresh = 0.0
        # Undone in close(), which the epoch loop calls in a `finally`.
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()

    def start_epoch(self, epoch: int, epochs: int | None) -> None:
        self._bar.set_description(f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}", refresh=False)

    def iteration(self, loss: Tensor) -> None:
        self._pending += 1
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_SECONDS:
            self._bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)
            self._bar.update(self._pending)
            self._pending, self._last_refresh = 0, now

    def close(self) -> None:
        try:
            self._bar.update(self._pending)
            self._bar.close()
        finally:
            self._redirect.__exit__(None, None, None)


def make_progress(mode: str, total_iterations: int | None) -> NoProgress | ProgressBar:
    """``auto`` shows a bar only when stderr is a terminal; ``true``/``false`` force it."""
    show = sys.stderr.isatty() if mode == "auto" else mode == "true"
    return ProgressBar(total_iterations) if show else NoProgress()
