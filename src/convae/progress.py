"""Progress of a long task (preparing images, an epoch, training a classifier, an IW bound) for a person to watch:
tqdm's bar on a terminal; where the output goes to a file or a pipe, a line every few seconds instead (how far,
how fast, how long left), so a redirected run is never silent for minutes."""

from __future__ import annotations

import errno
import os
import sys
import time


def duration(seconds: float) -> str:
    """3 s, 2 min 5 s, 1 h 04 min."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def console_lost(error: BaseException, stream) -> bool:
    """Whether ``error``, raised writing to ``stream``, means the reader went away (``convae train | head``, a closed
    terminal). If so, the stream's file descriptor is pointed at /dev/null, so that later writes (and Python's own
    flush at exit) go nowhere instead of failing: a closed console is not a failed run."""
    if not isinstance(error, (BrokenPipeError, ConnectionResetError)) and getattr(error, "errno", None) != errno.EPIPE:
        return False
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return True


class Progress:
    """``update(n)`` as work is done; ``close()`` at the end. ``show=False``: nothing at all. ``every``: seconds
    between lines when the stream is not a terminal (the first comes after ``first`` seconds)."""

    def __init__(self, total: int, what: str, unit: str = "it", *, show: bool = True, every: float = 15.0,
                 first: float = 5.0, initial: int = 0, stream=None):
        self.total, self.what, self.unit, self.every = total, what, unit, every
        self.stream = stream or sys.stderr
        self.done, self.started, self.note = initial, time.monotonic(), ""
        self.initial = initial
        self.bar = None
        self.show = show
        self.next_line = self.started + first
        if show and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=what, unit=unit, leave=False, dynamic_ncols=True,
                            file=self.stream)

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if postfix:
            self.note = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if self.bar is not None:
            try:
                self.bar.update(n)
                if postfix:
                    self.bar.set_postfix(postfix)
            except OSError as e:
                if not console_lost(e, self.stream):
                    raise
                self.bar = None
                self.show = False
        elif self.show and time.monotonic() >= self.next_line:
            self.line()

    def line(self) -> None:
        now = time.monotonic()
        elapsed = now - self.started
        rate = (self.done - self.initial) / max(elapsed, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        try:
            print(f"{self.what}: {self.done:,} of {self.total:,} {self.unit} "
                  f"({100 * self.done / max(self.total, 1):.0f} %), {rate:,.0f} {self.unit}/s"
                  + (f", {self.note}" if self.note else "")
                  + (f", about {duration(left)} left" if left != float("inf") else ""), file=self.stream, flush=True)
        except OSError as e:
            if not console_lost(e, self.stream):
                raise
            self.show = False  # the reader went away: the work goes on without lines
        self.next_line = now + self.every

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Stopwatch:
    """Seconds spent in named parts of a task (``with watch("decoder"): ...``), waiting for ``device`` at each end
    so that GPU time lands in the part that queued it."""

    def __init__(self, device=None):
        self.device, self.seconds = device, {}

    def __call__(self, part: str):
        return _Timed(self, part)

    def _sync(self) -> None:
        if self.device is not None and getattr(self.device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds


class _Timed:
    def __init__(self, watch: Stopwatch, part: str):
        self.watch, self.part = watch, part

    def __enter__(self):
        self.watch._sync()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.watch._sync()
        self.watch.add(self.part, time.perf_counter() - self.started)
