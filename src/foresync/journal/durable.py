"""The file layer under the metadata files: the one seam between the journal, the undo log and
the operating system.

``RecordJournal`` and ``UndoLog`` (and ``move_aside``) do every file operation through a
``Files`` object, so the same code runs over the real filesystem in the daemon (``OS_FILES``)
and over the seeded simulator's faulty in-memory layer (``testing/sim/files.py``: torn writes,
lost unsynced writes, a full disk). The operations are the few those files need, each with the
meaning of the system call beneath it:

- ``write`` may write only a prefix of its bytes and return how many (a full disk): callers
  loop, and treat an OSError after a short write as "part of it landed";
- nothing written is durable before ``fsync``/``fdatasync`` of its descriptor, and a new,
  renamed or deleted name not before ``fsync_dir`` of its directory;
- ``truncate`` cuts a file and moves the descriptor's position there, so the next ``write``
  lands at the new end whether or not it was opened for appending.

Each method of ``OsFiles`` looks its system call up at call time (``os.write``, not a bound
copy), so a test that replaces ``os.write`` or ``os.fdatasync`` still reaches it.
"""

from __future__ import annotations

import os
from typing import Protocol


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


def fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fsync_dir(path)


OS_FILES: Files = OsFiles()
