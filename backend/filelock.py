"""One writer per output: a run holds an exclusive lock on ``<output>.lock`` while it writes, so a
second run into the same file is refused with a clear message instead of answering every photo twice.

The lock is the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows): it is released
when the process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from .errors import GeoCLIPError


class OutputBusyError(GeoCLIPError):
    """Another run is writing the same output."""


class OutputLock:
    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".lock")
        self._handle = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # held until release()
        try:
            _lock(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputBusyError(
                f"another GeoCLIP run is writing {self.output} ({holder}); wait for it to finish or choose "
                "another output file"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}, since {datetime.now():%Y-%m-%d %H:%M:%S}")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking, so no other run locks a file about to vanish
        except OSError:
            pass
        _unlock(self._handle)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


if os.name == "nt":
    import msvcrt

    def _lock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(handle) -> None:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass

else:
    import fcntl

    def _lock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
