"""``python -m runner`` and the ``hpr`` script: ``board [DIR]`` opens the dashboard, anything
else is a training command for Hydra.

``board`` is taken off before Hydra parses the command line, which would read it as an
override; training's imports (torch, Hydra) are not loaded for it.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["board"]:
        from runner.board import main as board

        raise SystemExit(board(sys.argv[2:]))
    from runner.cli import main as train

    train()


if __name__ == "__main__":
    main()
