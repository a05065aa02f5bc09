"""Small pieces of wording shared by every message the program prints."""

from __future__ import annotations

import os
import sys


def plural(count: float, noun: str, plural_noun: str | None = None) -> str:
    """``count`` and ``noun``, agreeing: ``1 epoch``, ``2 epochs``, ``0 epochs``, ``1.5 seconds``.

    Args:
        count: an integer, or a float (printed with ``:g``).
        noun: the singular form.
        plural_noun: the plural form when it is not ``noun + "s"``.
    """
    number = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{number} {noun if count == 1 else plural_noun or noun + 's'}"



def duration(seconds: float) -> str:
    """A wall time a reader takes in at a glance: ``1.2 ms`` below a second, ``3.40 s`` above
    (an epoch-end evaluation of a small set takes a millisecond; ``0.00s`` says nothing)."""
    ms = seconds * 1000
    if ms < 10:
        return f"{ms:.2g} ms"
    if round(ms) < 1000:
        return f"{ms:.0f} ms"
    return f"{seconds:.2f} s"

def program_name(argv0: str | None = None) -> str:
    """How the user started the program, for usage lines: ``hpr`` or ``python -m runner``.

    ``python -m runner`` sets ``sys.argv[0]`` to the path of ``runner/__main__.py``; a
    console script sets it to the script's path (``.../bin/hpr``).
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0)
    if name in ("__main__.py", "") or name.endswith(".py"):
        return "python -m runner"
    return name.removesuffix(".exe")
