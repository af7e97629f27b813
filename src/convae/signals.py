"""Ctrl-C and SIGTERM, handled where it is safe.

* ``interrupts_deferred_during_imports``: for a whole command, SIGINT raises KeyboardInterrupt as usual, except while
  Python is importing a module (torch and its submodules are imported lazily, some of them deep inside the first
  optimizer or TensorBoard call): an import cut in the middle leaves a half-made module behind, and what runs next
  can fail with a traceback (seen: numpy's lazy ``linalg`` recursing). There the interrupt waits, re-checked every
  20 ms, until the import is done.
* ``StopSignals``: inside the training loop, SIGINT and SIGTERM only set a flag the loop reads between steps, so the
  step in flight finishes and a checkpoint is written. An interrupt not yet answered counts: one still waiting for
  an import, and one raised as KeyboardInterrupt that never reached the command's own handler (a library on the way
  caught and dropped it; CI once saw a run started with Ctrl-C go on training for two minutes).
* ``take_interrupts``: the program's first act. A process started with SIGINT ignored (a background job of a
  non-interactive shell, a supervisor's child) would otherwise ignore Ctrl-C until the command installs its own
  handler, and always after; convae answers it the same way however it was started.
"""

from __future__ import annotations

import contextlib
import signal

RETRY_SECONDS = 0.02
_pending = False  # a SIGINT received and not yet answered: waiting for an import to end, or raised and dropped


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum, frame) -> None:
    global _pending
    _pending = True  # until the command ends (it has answered) or the training loop takes it as its stop
    if _importing(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    raise KeyboardInterrupt


def take_interrupts() -> None:
    """SIGINT raises KeyboardInterrupt (Python's own answer) even where the process was started with it ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _retry(signum, frame) -> None:
    if _pending:
        _interrupt(signal.SIGINT, frame)


@contextlib.contextmanager
def interrupts_deferred_during_imports():
    """SIGINT -> KeyboardInterrupt, but never in the middle of an import (the main thread only)."""
    global _pending
    try:
        previous = signal.signal(signal.SIGINT, _interrupt), signal.signal(signal.SIGALRM, _retry)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
        _pending = False


class StopSignals:
    """Turns SIGINT / SIGTERM into a flag the loop reads between steps (the step in flight always finishes)."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __enter__(self):
        global _pending
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
            if _pending:  # an interrupt that waited for an import, or was dropped: the run stops at its first step
                _pending = False
                self.received = "SIGINT"
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def interrupted_line(argv: list[str]) -> str:
    """What a Ctrl-C before a command began says: ``convae train: interrupted`` for ``convae --plugin m train ...``
    (the command is the first word that is neither an option nor the value of ``--plugin``)."""
    words = iter(argv)
    for word in words:
        if word == "--plugin":
            next(words, None)
        elif not word.startswith("-"):
            return f"convae {word}: interrupted"
    return "convae: interrupted"
