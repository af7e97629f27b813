"""Faults that come from the machine rather than from the input: a full or read-only disk, a run folder that
vanished, memory that runs out, a second process on the same run folder. Each becomes one line and an exit code
a script can act on (docs/reliability.md):

    0 done; 1 the run itself failed (non-finite loss, a lost torchrun peer); 2 bad input (options, data, checkpoint);
    3 out of memory; 4 a file could not be written or read; 5 the run folder is busy; 130 interrupted.

Anything else, a Python traceback included, is a bug in convae (``CONVAE_DEBUG=1`` shows the traceback of the
expected faults too).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_FILESYSTEM = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130
EXIT_CODES = {0, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_OUT_OF_MEMORY, EXIT_FILESYSTEM, EXIT_BUSY, EXIT_INTERRUPTED}

ADVICE = {
    errno.ENOSPC: "free some space on that disk",
    errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "no permission: choose a folder you can write to",
    errno.EPERM: "no permission: choose a folder you can write to",
    errno.ENOENT: "the folder is gone (was it removed while convae ran?)",
}


def debug() -> bool:
    return os.environ.get("CONVAE_DEBUG", "") not in ("", "0")


class FileSystemFault(Exception):
    """A file convae needed to write (or read) could not be; the message names it, says why and what next."""


class OutOfMemory(Exception):
    """An allocation failed, or a setting was refused because it could not fit; the message names the options."""


class RunBusy(Exception):
    """Another live process is writing this run folder."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), cut at ``limit``."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def describe_os_error(e: OSError) -> str:
    """'PATH: reason (advice)' for an OSError raised by a file operation."""
    where = e.filename or "a file"
    reason = e.strerror or str(e)
    advice = ADVICE.get(e.errno)
    return f"cannot write {where}: {reason}" + (f"; {advice}" if advice else "")


# -- memory -------------------------------------------------------------------------------------------------

MEMORY_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "DefaultCPUAllocator")


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    oom = getattr(__import__("torch"), "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e) for m in MEMORY_MARKERS)


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on ``device`` (CUDA: free memory; CPU: MemAvailable), or None."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# -- one writer per run folder ------------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run folder (``RUN/.lock``), held while a process writes it.

    It is an flock(2) lock, which the kernel releases when its holder dies, so a crashed run leaves nothing stuck:
    the next process takes it over and says whose it was. The file holds who holds it (pid, host, command, since),
    for the message a second writer gets.
    """

    NAME = ".lock"

    def __init__(self, run_dir: str | Path, what: str):
        self.path = Path(run_dir) / self.NAME
        self.what = what
        self.file = None
        self.previous: dict | None = None

    def acquire(self) -> "RunLock":
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read()
            self.file.close()
            self.file = None
            who = (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('what')}, since "
                   f"{holder.get('since')})" if holder else "another process")
            raise RunBusy(f"{self.path.parent}: in use by {who}; wait for it to end or stop it "
                          "(one process writes a run folder at a time)") from None
        self.previous = self._read() or None  # a holder that died: its lock went with it
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self.file.flush()
        return self

    def _read(self) -> dict:
        try:
            self.file.seek(0)
            return json.loads(self.file.read() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Empty the file (a lock file with content was left by a holder that died) and release the lock."""
        if self.file is not None:
            try:
                self.file.seek(0)
                self.file.truncate()
            except OSError:
                pass
            self.file.close()  # closing releases the flock
            self.file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
