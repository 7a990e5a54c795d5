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
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path


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


def move_aside(path: str, label: str) -> str:
    """Rename a metadata file that cannot be trusted to ``<path>.<label>-<n>`` (the first
    free n), durably: its bytes are kept for a post-mortem, never destroyed."""
    for suffix in itertools.count(1):
        aside = f"{path}.{label}-{suffix}"
        if os.path.exists(aside):
            continue
        os.rename(path, aside)
        sync_dir(aside)
        return aside
    raise AssertionError("unreachable")
