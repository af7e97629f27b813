"""One writer per run folder: an exclusive flock(2) lock on ``RUN/.lock``."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import RunBusy


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

    def holder(self) -> dict | None:
        """Who holds the lock now (pid, host, what, since), or None where nobody does; takes nothing."""
        if not self.path.is_file():
            return None
        with open(self.path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                try:
                    return json.loads(f.read() or "{}")
                except ValueError:
                    return {}
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return None

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
