"""One writer per output, and the files beside an output made safely.

A run holds an exclusive lock on ``<output>.lock`` while it writes, so a second run into the same file is
refused with a clear message instead of answering every photo twice. The lock is the operating
system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows): it is released when the process ends,
however it ends, so a killed run never leaves a held lock behind.

Outputs often land in folders that came from elsewhere (a case folder received from a colleague), so
nothing already at a side file's name is trusted:

- the lock file is opened without following a symbolic link (``O_NOFOLLOW``) and must be a plain file
  with one name that holds nothing but a lock's text; anything else there (a link, a hard link, a pipe,
  another program's file) is refused with :class:`.errors.ForeignFileError` and left as it is;
- a file written whole and then put in place is written inside a fresh private folder beside its target
  (:func:`staged`), created exclusively by this process, so no name it writes can already be a link;
  it is renamed over the target at the end, and a rename replaces a directory entry, never writing
  through a link;
- a symbolic link at an output's own name is refused (:func:`refuse_link`): GeoCLIP never makes one.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .errors import ForeignFileError, GeoCLIPError, WriteError

LOCK_TEXT = re.compile(r"\Aprocess \d+, since [\d :-]+\Z")  # what acquire() writes, and nothing else
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT
for _name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):
    _LOCK_FLAGS |= getattr(os, _name, 0)


class OutputBusyError(GeoCLIPError):
    """Another run is writing the same output."""


def refuse_link(path: str | os.PathLike, what: str = "") -> None:
    """Raise :class:`ForeignFileError` when ``path`` is a symbolic link (GeoCLIP never makes one, so it
    is not GeoCLIP's to replace or to write through)."""
    path = Path(path)
    if path.is_symlink():
        raise ForeignFileError(
            f"{path} is a symbolic link{f' ({what})' if what else ''}; GeoCLIP neither follows nor replaces "
            "links it did not make: remove it or choose another name"
        )


def refuse_non_file(path: str | os.PathLike, what: str = "") -> None:
    """A link, a folder, a pipe or a device where a file of ours would go is refused."""
    path = Path(path)
    refuse_link(path, what)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
        raise ForeignFileError(f"{path} is {kind}, not a file GeoCLIP wrote; choose another name")


@contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """Where to write ``path`` before it is complete: ``<fresh private folder beside it>/<its name>``
    (same folder, so the final rename stays on one disk; same name and extension, so GDAL picks the same
    driver and its side files, such as ``.aux.xml`` or a SQLite journal, land in that folder too). The
    folder and whatever is left in it are removed on leaving; call :func:`put_in_place` to keep the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name[:40]}.", suffix=".partial", dir=path.parent))
    except OSError as exc:
        raise WriteError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    try:
        yield folder / path.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def put_in_place(staged_file: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename a finished file over ``path`` (which must not be a link: see :func:`refuse_link`)."""
    path = Path(path)
    refuse_link(path)
    try:
        os.replace(staged_file, path)
    except OSError as exc:
        raise WriteError(f"cannot put {path} in place: {exc.strerror or exc}") from None
    return path


class OutputLock:
    def __init__(self, output: str | os.PathLike):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".lock")
        self._handle = None

    def _foreign(self, why: str) -> ForeignFileError:
        return ForeignFileError(
            f"{self.path} is in the way of the lock file of {self.output.name} ({why}); GeoCLIP leaves it "
            "as it is: remove it, or choose another output file"
        )

    def _open(self) -> int:
        refuse_link(self.path, f"where the lock file of {self.output.name} goes")
        try:
            fd = os.open(self.path, _LOCK_FLAGS, 0o644)
        except OSError as exc:
            if self.path.is_symlink():
                raise self._foreign("a symbolic link") from None
            raise GeoCLIPError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._foreign("not a plain file")
            if info.st_nlink > 1:
                raise self._foreign("a file with another name too (a hard link)")
            if info.st_size:
                text = os.read(fd, 200)
                if info.st_size > 200 or not LOCK_TEXT.match(text.decode("utf-8", "replace").strip()):
                    raise self._foreign("another program's file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def acquire(self) -> OutputLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeoCLIPError(f"cannot create the folder {self.path.parent}: {exc.strerror or exc}") from None
        fd = self._open()
        if hasattr(os, "O_NONBLOCK"):  # opened non-blocking only so a pipe there could not hang the open
            os.set_blocking(fd, True)
        handle = open(fd, "r+", encoding="utf-8")  # held until release()
        try:
            _lock(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read(200).strip() or "another process"
            handle.close()
            raise OutputBusyError(
                f"another GeoCLIP run is writing {self.output} ({holder}); wait for it to finish or choose "
                "another output file"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}, since {datetime.now():%Y-%m-%d %H:%M:%S}")
            handle.flush()
        except OSError as exc:
            _unlock(handle)
            handle.close()
            raise GeoCLIPError(f"cannot write the lock file {self.path}: {exc.strerror or exc}") from None
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            # Before unlocking, so no other run locks a file about to vanish. Only our own file: a link
            # or another file put there since is left alone.
            ours = os.fstat(self._handle.fileno())
            there = os.lstat(self.path)
            if (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino):
                self.path.unlink()
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
