"""End the process once a command's work is written, without the interpreter's teardown.

With torch loaded, Python's own shutdown spends about 1.2 s after the last line of a run has
been written (here, on 2 cores; the torch floor of ``bench/startup.py`` pays it too): it
finalizes every module and collects the objects of torch, ``torch._dynamo`` and sympy one by
one, none of which writes anything. :func:`exit_now` does what that shutdown does that
matters, in the interpreter's own order, and then ends the process with ``os._exit``:

1. ``threading._shutdown``: the threading module's exit hooks (a thread pool's workers told to
   stop), then every non-daemon thread joined;
2. the ``atexit`` handlers (logging's flush and close of its files, multiprocessing's and a
   launcher's clean-up);
3. standard output and error flushed.

What it skips is what CPython itself does not promise to run at exit (``__del__`` of objects
still alive). A torchrun worker ends with ``os._exit`` too, for another reason (an abort from
gloo's C++ threads at that shutdown: :func:`runner.launchers.distributed.exit_worker`).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """End the process with exit status ``code`` after the steps above."""
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or vanished reader: nothing more can be said
            pass
    os._exit(code)
