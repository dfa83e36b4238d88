"""One run per directory: an exclusive lock held for the run's lifetime.

Two processes training into one directory (a job started twice, a second run launched into a
live directory) would overwrite each other's checkpoints and metrics. The lock is an
`fcntl.flock` on `run_dir/.lock`, which the kernel releases when its process dies however it
dies, so a lock file left by a dead process is simply taken over; the file records who holds
it (host, pid, start time) for the message a second run gets. In a multi-host run only
process 0 locks (the directory is shared).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_FILE = ".lock"
_held: dict[Path, list] = {}  # lock path -> [fd, depth]: re-entrant within one process


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """`with RunLock(run_dir):` holds the directory's lock (re-entrant in one process)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = (Path(run_dir) / LOCK_FILE).absolute()

    def __enter__(self) -> RunLock:
        if self.path in _held:
            _held[self.path][1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another run ({holder}); wait for it to end, "
                "or use another directory") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[self.path] = [fd, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        entry = _held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.path]
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['start']}"
    except (ValueError, KeyError):
        return "holder unknown"
