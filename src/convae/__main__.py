"""The program: the ``convae`` script and ``python -m convae`` both call ``run``.

Its module top imports only ``convae.errors`` and ``convae.signals``, and ``import convae`` is the version alone,
so that a Ctrl-C while Python imports the command line (the options of every command, the registry of models) is
one line and exit 130 too, as it is once ``convae.cli.main`` runs (which defers it past any import of its own).
"""

import os
import sys

from .errors import EXIT_INTERRUPTED
from .signals import interrupted_line, take_interrupts

take_interrupts()  # the program's first act: Ctrl-C stops it however it was started


def run(argv: list[str] | None = None, hooks=None) -> None:
    """``convae.cli.main``, then exit with its code.

    A worker of a launcher (torchrun sets ``RANK`` and ``WORLD_SIZE``) leaves by ``os._exit`` once its output is
    flushed, skipping the interpreter's teardown: a process group that a DistributedDataParallel model ever wrapped
    outlives ``destroy_process_group`` (torch keeps it, with its gloo threads, to the end of the process), and when
    one of those threads releases its last piece of work while the interpreter is finalizing, it takes the GIL, is
    ended by Python, and its C++ unwinding calls std::terminate: SIGABRT, "terminate called without an active
    exception", a finished run reported as failed (issue 34; the backtrace and the counts are in
    docs/distributed.md). Every file of ours is written atomically and closed by then; nothing is lost.
    """
    try:
        from .cli import main

        code = main(argv, hooks)
    except KeyboardInterrupt:  # while the command line was being imported (main answers its own)
        print(interrupted_line(sys.argv[1:] if argv is None else argv), file=sys.stderr)
        code = EXIT_INTERRUPTED
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # runtime.launched_by_torchrun, without importing torch
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a console gone away or closed: nothing left to say there
                pass
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
