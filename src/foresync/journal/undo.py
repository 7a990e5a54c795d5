"""The undo log: a secondary stays crash-consistent while a resync writes into it (issue 4).

A resync sends extents in address order, not write order, so a half-finished resync leaves a
mix of old and new data. Before the first write to each extent during a resync pass, the extent's
old content is appended here and made durable (with the journal's group commit) before the write
lands. If the pass never finishes (the resync source dies), the site rolls every saved extent
back on restart or on promote, which restores the image from before the pass: consistent, just
older. The rolled-back extents are then reported as stale so the next resync covers them.

Layout, byte by byte (big-endian):
    header (16 bytes): 8s magic b"FSUNDO01", 8s reserved zeros
    entry: u32 extent, u32 length N, u32 CRC32C of the data, N bytes of old data
Replay stops at the first incomplete or corrupt entry: its write never happened, because writes
wait for the commit that makes their undo entry durable. So the file must never hold a partial
entry with whole ones after it: an append the disk refuses (full) is cut off again, and a failed
fdatasync cuts the file back to what the last good one covered (the writes waiting on those
entries are dropped, and their extents saved again before a later write: SecondaryCore).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable

import google_crc32c

from foresync.errors import StorageError, invariant
from foresync.journal.journal import fsync_dir

log = logging.getLogger(__name__)

WriteFn = Callable[[int, bytes], None]
FlushFn = Callable[[], None]

MAGIC = b"FSUNDO01"
HEADER = MAGIC + bytes(8)
ENTRY = struct.Struct(">III")
invariant(ENTRY.size == 12 and len(HEADER) == 16, "undo log layout")


def read_entries(path: str) -> list[tuple[int, bytes]]:
    """The whole, valid entries of an undo log, in order (a torn tail is ignored)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(MAGIC):
        log.warning("undo log %s has no valid header; ignoring it", path)
        return []
    entries: list[tuple[int, bytes]] = []
    pos = len(HEADER)
    while pos + ENTRY.size <= len(data):
        extent, length, crc = ENTRY.unpack_from(data, pos)
        end = pos + ENTRY.size + length
        if end > len(data):
            break
        old = bytes(data[pos + ENTRY.size : end])
        if google_crc32c.value(old) != crc:
            break
        entries.append((extent, old))
        pos = end
    return entries


class UndoLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self.unsynced = False
        self.saved = 0
        # sync() runs in a worker thread while the event loop appends (see journal.py).
        self._lock = threading.Lock()
        self._end = self._synced_end = 0  # file length: whole entries; what the last sync covered
        self._synced_saved = 0
        self._cut = False  # the file may hold bytes past _end: cut them off before the next entry

    def append(self, extent: int, old: bytes) -> None:
        with self._lock:
            try:
                if self._fd < 0:
                    self._open()
                record = ENTRY.pack(extent, len(old), google_crc32c.value(old)) + old
                self._write(record)
            except OSError as exc:
                raise StorageError.from_os(f"undo log {self.path}: append failed", exc) from exc
            self.unsynced = True
            self.saved += 1

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, HEADER)
            fsync_dir(self.path)
        except OSError:
            os.close(fd)
            os.unlink(self.path)  # empty or a partial header: nothing to keep
            raise
        self._fd = fd
        self._end = self._synced_end = len(HEADER)

    def _write(self, record: bytes) -> None:
        if self._cut:  # never a partial or lost entry before whole ones
            os.ftruncate(self._fd, self._end)
            os.lseek(self._fd, self._end, os.SEEK_SET)  # not O_APPEND: write where it now ends
            self._cut = False
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            self._cut = len(view) < len(record)
            raise
        self._end += len(record)

    def sync(self) -> None:
        with self._lock:
            if self._fd < 0 or not self.unsynced:
                return
            self.unsynced = False
            end, saved = self._end, self.saved
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            with self._lock:  # those entries may be gone: cut back to what is known durable
                self._end, self.saved, self._cut = self._synced_end, self._synced_saved, True
            raise StorageError.from_os(f"undo log {self.path}: fdatasync failed", exc) from exc
        with self._lock:
            self._synced_end, self._synced_saved = end, saved

    def discard(self) -> None:
        """The pass finished: the image is consistent again; forget the old contents."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if os.path.exists(self.path):
            os.unlink(self.path)
            fsync_dir(self.path)
        self.saved = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def roll_back(path: str, write: WriteFn, flush: FlushFn, extent_size: int) -> set[int]:
    """Restore every saved extent (its first saved content, from before the pass) and make it
    durable. Returns the extents restored; the caller marks them stale and deletes the log."""
    restored: set[int] = set()
    for extent, old in read_entries(path):
        if extent in restored:
            continue
        write(extent * extent_size, old)
        restored.add(extent)
    flush()
    return restored
