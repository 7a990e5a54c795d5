"""The undo log: a secondary stays crash-consistent while a resync writes into it (issue 4).

A resync sends extents in address order, not write order, so a half-finished resync leaves a
mix of old and new data. Before the first write to each extent during a resync pass, the extent's
old content (once every earlier write to it has landed: SecondaryCore) is appended here and made
durable (with the journal's group commit) before the write lands. If the pass never finishes (the resync source dies), the site rolls every saved extent
back on restart or on promote, which restores the image from before the pass: consistent, just
older. The rolled-back extents are then reported as stale so the next resync covers them.

Layout, byte by byte (big-endian):
    header (16 bytes): 8s magic b"FSUNDO02", 8s reserved zeros
    entry: u32 extent, u32 length N, u32 CRC32C, N bytes of old data
The CRC covers the entry's first 8 bytes (extent and length) and its data: a flipped extent
number must not restore old data into the wrong extent. Format 1 (magic b"FSUNDO01", written
before issue 12) has the CRC over the data only; it is still read.

Torn tail or damage (issue 12), as for the record journal (``journal.format``): writes wait for
the commit that makes their undo entry durable, so a torn tail (the last appends cut short, or
not all written back) protects no write that happened, and is ignored. Anything else is damage
and the rollback cannot be trusted: a header that is neither a header nor a crash's leftover
(empty, a prefix of one, or zeros), an entry that passes its CRC but names an extent outside the
volume or the wrong length, one changed byte that explains a CRC failure, or a whole, valid
entry after the bad one. The caller then keeps the image marked inconsistent and treats every
extent as possibly different.

So the file must never hold a partial entry with whole ones after it: an append the disk refuses
(full) is cut off again, and a failed fdatasync cuts the file back to what the last good one
covered (the writes waiting on those entries are dropped, and their extents saved again before a
later write: SecondaryCore). Files are reached through ``journal.durable.Files``, as the record
journal's are, so the simulator runs this code over its faulty file layer.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import google_crc32c

from foresync.errors import StorageError, invariant
from foresync.journal.durable import OS_FILES, Files, write_all
from foresync.journal.format import one_byte_explains

log = logging.getLogger(__name__)

WriteFn = Callable[[int, bytes], None]
FlushFn = Callable[[], None]

MAGIC = b"FSUNDO02"
MAGIC_V1 = b"FSUNDO01"
HEADER = MAGIC + bytes(8)
ENTRY = struct.Struct(">III")
FIELDS = struct.Struct(">II")
invariant(ENTRY.size == 12 and len(HEADER) == 16, "undo log layout")


def entry_crc(extent: int, old: bytes) -> int:
    value: int = google_crc32c.extend(google_crc32c.value(FIELDS.pack(extent, len(old))), old)
    return value


def encode_entry(extent: int, old: bytes) -> bytes:
    return ENTRY.pack(extent, len(old), entry_crc(extent, old)) + old


@dataclass(frozen=True, slots=True)
class UndoReplay:
    entries: list[tuple[int, bytes]]  # (extent, old data), the whole valid entries in order
    torn_reason: str | None  # the bytes after the last entry are a torn tail (ignored)
    damage: str | None  # the log cannot be trusted, and why (with the byte position)


class _Layout:
    """What a valid entry looks like in a log of one volume: format, extent count, lengths."""

    def __init__(self, version: int, extent_size: int, size: int) -> None:
        self.version = version
        self.extent_size = extent_size
        self.count = -(-size // extent_size)
        self.last_length = size - (self.count - 1) * extent_size
        self.lengths = sorted({extent_size, self.last_length})

    def length_of(self, extent: int) -> int:
        return self.last_length if extent == self.count - 1 else self.extent_size

    def crc_of(self, extent: int, old: bytes) -> int:
        if self.version == 1:
            value: int = google_crc32c.value(old)
            return value
        return entry_crc(extent, old)

    def valid_at(self, data: bytes, pos: int) -> bool:
        if pos + ENTRY.size > len(data):
            return False
        extent, length, crc = ENTRY.unpack_from(data, pos)
        end = pos + ENTRY.size + length
        return bool(extent < self.count and length == self.length_of(extent) and end <= len(data)
                    and self.crc_of(extent, bytes(data[pos + ENTRY.size : end])) == crc)

    def damage_at(self, data: bytes, pos: int) -> str | None:
        """Replay stopped at ``pos``: None for a torn tail, else why it is damage."""
        if pos + ENTRY.size > len(data):
            return None  # an entry header cut short: only the end of the file
        extent, length, crc = ENTRY.unpack_from(data, pos)
        for candidate in sorted(set(self.lengths) | {length}, key=lambda n: n != length):
            end = pos + ENTRY.size + candidate
            if candidate not in self.lengths or end > len(data):
                continue
            old = bytes(data[pos + ENTRY.size : end])
            if self.crc_of(extent, old) == crc:
                if candidate != length:
                    return f"its length field says {length} bytes, but a whole, valid entry is there"
                return (f"it passes its CRC32C but names extent {extent} with {length} bytes, which "
                        f"this volume ({self.count} extents) does not have")
            covered = bytes(data[pos : pos + FIELDS.size]) + old if self.version == 2 else old
            if one_byte_explains(covered, crc):
                return "one changed byte explains its CRC32C failure (a flipped byte, not a torn write)"
            if self.valid_at(data, end):
                return f"a whole, valid entry follows it at byte {end}"
        return None


def parse(data: bytes, extent_size: int, size: int) -> UndoReplay:
    """The undo log's whole, valid entries, and whether what follows is a torn tail or damage."""
    if len(data) < len(HEADER) or not any(data):
        if HEADER.startswith(bytes(data)) or MAGIC_V1.startswith(bytes(data[:8])) or not any(data):
            return UndoReplay([], "header not (all) written" if data else None, None)
        return UndoReplay([], None, "the header is damaged (at byte 0)")
    if data[:8] not in (MAGIC, MAGIC_V1) or any(data[8:16]):
        return UndoReplay([], None, f"the header is damaged (magic {bytes(data[:8])!r}, at byte 0)")
    layout = _Layout(1 if data[:8] == MAGIC_V1 else 2, extent_size, size)
    entries: list[tuple[int, bytes]] = []
    pos = len(HEADER)
    while pos < len(data):
        if not layout.valid_at(data, pos):
            break
        extent, length, _ = ENTRY.unpack_from(data, pos)
        entries.append((extent, bytes(data[pos + ENTRY.size : pos + ENTRY.size + length])))
        pos += ENTRY.size + length
    if pos == len(data):
        return UndoReplay(entries, None, None)
    why = layout.damage_at(data, pos)
    if why is None:
        return UndoReplay(entries, f"torn tail at byte {pos}", None)
    return UndoReplay(entries, None, f"entry at byte {pos} is bad: {why}")


def parse_for_inspect(data: bytes) -> UndoReplay:
    """``parse`` without the site's config (`foresync inspect --meta`): the extent size is taken
    from the first entry, and any extent number is accepted."""
    extent_size = 4096
    if len(data) >= len(HEADER) + ENTRY.size:
        _, first_length, _ = ENTRY.unpack_from(data, len(HEADER))
        if first_length >= 4096 and not first_length & (first_length - 1):
            extent_size = first_length
    return parse(data, extent_size, extent_size << 32)


def read_entries(path: str, extent_size: int, size: int, files: Files = OS_FILES) -> UndoReplay:
    return parse(files.read(path), extent_size, size)


class UndoLog:
    def __init__(self, path: str, files: Files = OS_FILES) -> None:
        self.path = path
        self.files = files
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
                record = encode_entry(extent, old)
                self._write(record)
            except OSError as exc:
                raise StorageError.from_os(f"undo log {self.path}: append failed", exc) from exc
            self.unsynced = True
            self.saved += 1

    def _open(self) -> None:
        files = self.files
        fd = files.create(self.path, mode=0o600)
        try:
            write_all(files, fd, HEADER)
            files.fsync_dir(self.path)
        except OSError:
            files.close(fd)
            files.unlink(self.path)  # empty or a partial header: nothing to keep
            raise
        self._fd = fd
        self._end = self._synced_end = len(HEADER)

    def _write(self, record: bytes) -> None:
        if self._cut:  # never a partial or lost entry before whole ones
            self.files.truncate(self._fd, self._end)  # and write where it now ends
            self._cut = False
        view = memoryview(record)
        try:
            while view:
                view = view[self.files.write(self._fd, view) :]
        except OSError:
            self._cut = len(view) < len(record)
            raise
        self._end += len(record)

    def in_use(self) -> bool:
        """Open for a resync pass: its entries must be synced before the writes they protect."""
        return self._fd >= 0

    def sync(self) -> None:
        with self._lock:
            if self._fd < 0 or not self.unsynced:
                return
            self.unsynced = False
            end, saved = self._end, self.saved
        try:
            self._fsync()
        except OSError as exc:
            with self._lock:  # those entries may be gone: cut back to what is known durable
                self._end, self.saved, self._cut = self._synced_end, self._synced_saved, True
            raise StorageError.from_os(f"undo log {self.path}: fdatasync failed", exc) from exc
        with self._lock:
            self._synced_end, self._synced_saved = end, saved

    def _fsync(self) -> None:
        self.files.fdatasync(self._fd)

    def discard(self) -> None:
        """The pass finished: the image is consistent again; forget the old contents."""
        self.close()
        if self.files.exists(self.path):
            self.files.unlink(self.path)
            self.files.fsync_dir(self.path)
        self.saved = 0

    def close(self) -> None:
        if self._fd >= 0:
            self.files.close(self._fd)
            self._fd = -1



@dataclass(frozen=True, slots=True)
class RollBack:
    restored: set[int]  # extents written back to their content from before the pass
    damage: str | None  # the log is damaged: the rollback is incomplete and cannot be trusted


def roll_back(path: str, write: WriteFn, flush: FlushFn, extent_size: int, size: int,
              files: Files = OS_FILES) -> RollBack:
    """Restore every saved extent (its first saved content, from before the pass) and make it
    durable. The caller marks the restored extents stale and deletes the log, or, if the log is
    damaged (the valid entries before the damage are still restored), keeps the site
    inconsistent with every extent in doubt and moves the log aside."""
    replayed = read_entries(path, extent_size, size, files)
    restored: set[int] = set()
    for extent, old in replayed.entries:
        if extent in restored:
            continue
        write(extent * extent_size, old)
        restored.add(extent)
    flush()
    return RollBack(restored, replayed.damage)
