"""The output folder (--out): one xfw at a time, checked writable before anything runs, and space kept back so
that summary.json can still be written when the disk fills.

The lock is an flock on `.xfw.lock` in the folder, held for the whole command: the operating system releases it
when the process ends, however it ends, so a lock is never stale. The file names its holder for the refusal.
Behind the holder's line the file keeps a reserve of disk space, given back when summary.json needs it."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xfw.common.errors import UserError
from xfw.common.worker.loop import write_json_atomic

LOCK_NAME = ".xfw.lock"
# Kept back for summary.json: twice its last size (the new copy is written beside the old one) plus this.
RESERVE_MARGIN = 64 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class OutputError(Exception):
    """A write into the output folder failed after the runs began: one line, exit status 1 (not bad input)."""


def _holder_line() -> str:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return f"pid {os.getpid()}, `{command}`, since {dt.datetime.now().strftime('%H:%M:%S')}\n"


class OutputFolder:
    def __init__(self, path: Path, fd: int, header: int):
        self.path = path
        self._fd = fd
        self._header = header  # bytes of the holder's line; the reserve follows it
        self.full: str | None = None  # set once summary.json needed the reserve: the disk is full

    def grow_reserve(self, size: int) -> None:
        """Best effort: as much of `size` bytes as the disk has (a full disk fails the runs, not the summary)."""
        want = self._header + size
        have = os.fstat(self._fd).st_size
        if have >= want:
            return
        try:
            os.posix_fallocate(self._fd, have, want - have)
        except OSError:  # no room for all of it, or a file system without fallocate: what fits, in zeros
            chunk = bytes(16 * 1024)
            with contextlib.suppress(OSError):
                while have < want:
                    have += os.pwrite(self._fd, chunk[: want - have], have)

    def release_reserve(self) -> bool:
        """Give the reserve back to the disk; True if there was one."""
        if os.fstat(self._fd).st_size <= self._header:
            return False
        os.ftruncate(self._fd, self._header)
        return True

    def write_json(self, path: Path, data: Any) -> None:
        """write_json_atomic, with the reserve given up when the disk is full; OutputError if it still fails,
        with the file on disk as it was."""
        try:
            try:
                write_json_atomic(path, data)
            except OSError as exc:
                if exc.errno not in _NO_SPACE or not self.release_reserve():
                    raise
                self.full = f"{self.path}: {exc.strerror}"
                write_json_atomic(path, data)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        if self.full is None:
            self.grow_reserve(2 * path.stat().st_size + RESERVE_MARGIN)


def _check_writable(path: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=path, prefix=".xfw-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write there: {exc.strerror}") from None


@contextlib.contextmanager
def claim(path: Path) -> Iterator[OutputFolder]:
    """Hold `path` for this command: created if needed, checked writable, locked against any other xfw
    (refused in one line naming the holder). A folder this call created is removed again if the command
    fails before writing anything into it."""
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {path}: exists and is not a folder") from None
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create the folder: {exc.strerror}") from None
    _check_writable(path)
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write there: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).split(b"\n")[0].decode(errors="replace") or "starting"
        os.close(fd)
        raise UserError(
            f"--out {path} is in use by another xfw ({holder}): wait for it, or use another folder"
        ) from None
    finished = False
    try:
        header = _holder_line().encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, header, 0)
        except OSError as exc:
            raise UserError(f"--out {path}: cannot write there: {exc.strerror}") from None
        yield OutputFolder(path, fd, len(header))
        finished = True
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the reserve back, and no holder named once the lock is free
        if created and not finished and [p.name for p in path.iterdir()] == [LOCK_NAME]:
            with contextlib.suppress(OSError):
                lock.unlink()
                path.rmdir()
        os.close(fd)
