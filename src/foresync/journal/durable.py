"""The one place foresync asks the kernel to make bytes durable.

Theory of operation: a write is not on disk until an fsync or fdatasync of its file has returned,
and a new name (a created or renamed file) is not on disk until an fsync of its directory has.
Every module that needs either goes through this one: the record journal and the undo log
(``sync_data`` after appends), the site metadata, the out-of-sync set and the clean-stop marker
(``write_atomic``), the volume image (``FileBackend.flush``), and files kept aside for a
post-mortem (``move_aside``). So a test, or a simulator's faulty file layer, breaks durability by
replacing one function here, and a grep for ``os.fsync`` finds nothing else under ``src/``.

Callers refer to these as ``durable.sync_data(...)``, never ``from ... import sync_data``, so that
a replacement installed on this module reaches all of them. Errors are the ``OSError`` the kernel
gave: each caller knows which file it was and what a failure means (StorageError, a retry, a
cut-back journal), so it translates them itself.

The file layer. ``RecordJournal`` and ``UndoLog`` (and ``move_aside``) do every file operation
through a ``Files`` object, so the same code runs over the real filesystem in the daemon
(``OS_FILES``, whose syncs are the functions above) and over the seeded simulator's faulty
in-memory layer (``testing/sim/files.py``: torn writes, lost unsynced writes, a full disk). The
operations are the few those files need, each with the meaning of the system call beneath it:

- ``write`` may write only a prefix of its bytes and return how many (a full disk): callers
  loop, and treat an OSError after a short write as "part of it landed";
- nothing written is durable before ``fsync``/``fdatasync`` of its descriptor, and a new,
  renamed or deleted name not before ``fsync_dir`` of its directory;
- ``truncate`` cuts a file and moves the descriptor's position there, so the next ``write``
  lands at the new end whether or not it was opened for appending.

Each method of ``OsFiles`` looks its call up at call time (``os.write``, ``durable.sync_data``),
so a test that replaces one still reaches it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Protocol


def sync_data(fd: int) -> None:
    """fdatasync: the file's data (and its size) are durable; other metadata may not be."""
    os.fdatasync(fd)


def sync_file(fd: int) -> None:
    """fsync: the file's data and all its metadata are durable."""
    os.fsync(fd)


def sync_dir(path: str | Path) -> None:
    """Make the directory entries in the directory holding ``path`` durable (a create, a rename
    or an unlink of ``path`` survives a crash only after this)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, durably: a temporary ``<path>.tmp`` is written and synced,
    renamed over ``path``, and the directory synced. A crash leaves the old file or the new one,
    never a mix. On failure (a full or read-only disk, no file descriptors left) the old file is
    as it was, the partial temporary file is removed (it would only hold space the disk lacks),
    and the OSError is raised."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            sync_file(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_dir(path)


class Files(Protocol):
    def read(self, path: str) -> bytes:
        """The whole file; FileNotFoundError if there is none."""

    def exists(self, path: str) -> bool: ...

    def open_append(self, path: str) -> int:
        """An existing file, for writing at its end."""

    def create(self, path: str, exclusive: bool = False, mode: int = 0o666) -> int:
        """A new empty file for writing (an existing one is truncated, or FileExistsError if
        ``exclusive``)."""

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Write at the position; returns how many bytes landed (maybe fewer), or OSError."""

    def truncate(self, fd: int, length: int) -> None: ...

    def size(self, fd: int) -> int: ...

    def fsync(self, fd: int) -> None: ...

    def fdatasync(self, fd: int) -> None: ...

    def close(self, fd: int) -> None: ...

    def replace(self, src: str, dst: str) -> None: ...

    def unlink(self, path: str) -> None: ...

    def fsync_dir(self, path: str) -> None:
        """Make the directory entries of ``path``'s directory durable."""



def write_all(files: Files, fd: int, data: bytes) -> None:
    """Write every byte (looping over short writes), or raise the OSError that stopped it."""
    view = memoryview(data)
    while view:
        view = view[files.write(fd, view) :]


class OsFiles:
    """The real filesystem."""

    def read(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def open_append(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def create(self, path: str, exclusive: bool = False, mode: int = 0o666) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)
        os.lseek(fd, length, os.SEEK_SET)  # a descriptor without O_APPEND writes there next

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def fsync(self, fd: int) -> None:
        sync_file(fd)

    def fdatasync(self, fd: int) -> None:
        sync_data(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        sync_dir(path)


OS_FILES: Files = OsFiles()


def move_aside(path: str, label: str, files: Files = OS_FILES) -> str:
    """Rename a metadata file that cannot be trusted to ``<path>.<label>-<n>`` (the first
    free n), durably: its bytes are kept for a post-mortem, never destroyed."""
    for suffix in itertools.count(1):
        aside = f"{path}.{label}-{suffix}"
        if files.exists(aside):
            continue
        files.replace(path, aside)
        files.fsync_dir(aside)
        return aside
    raise AssertionError("unreachable")
