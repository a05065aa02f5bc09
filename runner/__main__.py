"""``python -m runner`` and the ``hpr`` script: ``board [DIR]`` opens the dashboard, anything
else is a training command for Hydra.

``board`` is taken off before Hydra parses the command line, which would read it as an
override; training's imports (torch, Hydra) are not loaded for it.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    try:
        if sys.argv[1:2] == ["board"]:
            try:
                from runner.board import main as board
            except KeyboardInterrupt:  # Ctrl-C while loading: as quiet as once started
                raise SystemExit(130) from None
            raise SystemExit(board(sys.argv[2:]))
        from runner.cli import main as train

        train()
    except BrokenPipeError:
        # The reader went away (`hpr --help | head`): not an error worth a traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
