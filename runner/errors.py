"""Errors the user can fix: printed as one clear message, never as a traceback."""

from __future__ import annotations

import sys
from typing import Any


def print_error(message: str) -> None:
    """``Error: <message>`` on stderr in one write. Under torchrun every rank prints into the
    same pipe; ``print`` writes the newline separately, so two ranks' lines could splice into one."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``: an exception from the user's code, fit for one ``Error:`` line."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


class RunnerError(Exception):
    """Base class for every error caused by the user's config or data, not by a bug."""


class ConfigError(RunnerError):
    """A config value that is out of range, of the wrong kind, or incompatible with another.

    Args:
        key: the dotted config key, as the user would type it on the command line.
        value: the offending value.
        allowed: what would have been accepted, in words.
    """

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class DataError(RunnerError):
    """A data file (or directory) that is missing, unreadable or malformed.

    Args:
        path: the file or directory, as the user gave it (or every path that was tried).
        problem: what is wrong and, where possible, what was expected.
    """

    def __init__(self, path: Any, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")
