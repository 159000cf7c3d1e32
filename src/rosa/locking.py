"""One writer per directory: an OS advisory lock beside each run, evaluation and sweep directory.

``rosa train`` (its run directory), ``rosa eval`` (its output directory) and ``rosa sweep`` (its sweep
directory) hold ``flock`` on a lock file *beside* the directory, ``PARENT/.NAME.lock``: beside rather
than inside, because ``rosa train --overwrite`` moves the directory itself aside. A second writer is
refused at once with the holder's process id; nothing waits. The kernel drops the lock when its
process ends, however it ends (SIGKILL, OOM killer), so a killed run can be resumed at once: there
is no stale lock to clean up. The file is removed when the lock is released normally; a file left by
a killed process is harmless and reused.

Sweep shards share a sweep directory, so :func:`directory_lock` also offers a shared lock: any number
of shared holders, or one exclusive holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from rosa.errors import RoSAError

_HELD: set[Path] = set()  # lock files held by this process (flock would refuse a second fd here too)


class DirectoryLockedError(RoSAError):
    """Another process is writing the directory."""


def lock_path(directory: str | os.PathLike) -> Path:
    """The lock file of ``directory``: ``.NAME.lock`` in its parent (symlinks resolved, so every path
    to one directory names one lock)."""
    resolved = Path(directory).resolve()
    return resolved.parent / f".{resolved.name}.lock"


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, what: str, fix: str, shared: bool = False) -> Iterator[Path]:
    """Hold the lock of ``directory`` for the block, or raise :class:`DirectoryLockedError` saying
    ``"{what} {directory} is in use by another rosa process (pid N); {fix}"``.

    ``shared=True`` takes a shared lock (refused only while an exclusive holder exists). Missing parent
    directories are created for the lock file and removed again on release when they are still empty.
    """
    path = lock_path(directory)
    if path in _HELD:
        raise DirectoryLockedError(f"{what} {directory} is already in use by this process; {fix}")
    created = _make_parents(path.parent)
    try:
        fd = _acquire(path, shared, lambda holder: DirectoryLockedError(
            f"{what} {directory} is in use by another rosa process{holder}; {fix}"))
    except BaseException:
        _remove_empty(created)
        raise
    _HELD.add(path)
    try:
        yield path
    finally:
        _HELD.discard(path)
        _release(path, fd)
        _remove_empty(created)


def _acquire(path: Path, shared: bool, refused) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise RoSAError(f"cannot create the lock file {path}: {err.strerror}. Choose a writable location.") from err
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise refused(f" (pid {holder})" if holder else "") from None
            raise
        # The holder before us may have removed the file between our open and our flock; the lock on
        # a removed file guards nothing, so start again on the file that is there now.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def _holder(fd: int) -> str:
    """The process id an exclusive holder wrote into the lock file ("" when unknown: shared holders)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _release(path: Path, fd: int) -> None:
    try:
        # Remove the file only as its sole holder (a shared holder first checks that it is alone);
        # whoever opened it meanwhile notices the removal and starts again on a new file.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and its missing ancestors; returns those created, deepest first."""
    missing = []
    for directory in (parent, *parent.parents):
        if directory.exists():
            break
        missing.append(directory)
    if missing:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RoSAError(f"cannot create {parent} for the lock file: {err.strerror}. Choose a writable location.") from err
    return missing


def _remove_empty(created: list[Path]) -> None:
    for directory in created:
        try:
            directory.rmdir()
        except OSError:
            return
