"""Faults that come from the machine rather than from the input: a full or read-only disk, memory that runs out.
Helpers that turn them into one line a user can act on (the error types and exit codes are in ``errors.py``; the
lock that keeps a second process off a run folder is ``convae.runs.lock``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

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


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none); a longer one than ``limit`` is
    cut at the last word that fits, and says so with "…"."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if len(line) <= limit:
        return line
    cut = line[:limit - 1]
    return (cut[:cut.rfind(" ")] if " " in cut else cut).rstrip(" ,;:") + "…"


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
