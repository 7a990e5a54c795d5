"""The secondary's record of objects on disk, and the primary's may-differ names (issue 18).

The record journal is append-only, one entry per change, each with its CRC32C; an entry is
durable (``update`` returns) only after ``durable.sync_data``. Replay applies every whole entry in
order; a torn or damaged tail (an entry cut short or failing its check, at the end) is copied
aside (``durable.move_aside``) and cut off, never used. When the file outgrows ``COMPACT_FACTOR``
times what the live record needs, it is rewritten whole (``durable.write_atomic``): its size is
bounded by the record's bounds.

Layout, integers big-endian::

    0   8s   MAGIC b"FSOREC1\\n"
    then entries:
    0   u32  CRC32C of bytes 4.. of the entry
    4   u32  body length L
    8   u8   kind: 1 add, 2 remove
    9   L-1  names, each a u16 length and that many UTF-8 bytes

The primary's may-differ names (replication/objects.py) are a JSON list written whole with
``durable.write_atomic``: they change rarely (link down, failed commits, resync ends).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable

import google_crc32c

from foresync.errors import ConfigError, StorageError
from foresync.journal import durable

log = logging.getLogger(__name__)

MAGIC = b"FSOREC1\n"
ENTRY = struct.Struct(">II")
NAME_LEN = struct.Struct(">H")
ADD, REMOVE = 1, 2
COMPACT_FACTOR = 4
COMPACT_MIN_BYTES = 1024 * 1024
assert ENTRY.size == 8 and len(MAGIC) == 8


def _entry(kind: int, names: Iterable[str]) -> bytes:
    body = bytes((kind,)) + b"".join(NAME_LEN.pack(len(raw)) + raw
                                     for raw in (n.encode("utf-8") for n in names))
    rest = ENTRY.pack(0, len(body))[4:] + body
    return struct.pack(">I", google_crc32c.value(rest)) + rest


def _replay(data: bytes, path: str) -> tuple[OrderedDict[str, None], int]:
    """The record and the length of the whole entries; a damaged tail is cut by the caller."""
    if data[:8] != MAGIC:
        raise ConfigError(f"{path}: not an object record journal (bad magic)")
    record: OrderedDict[str, None] = OrderedDict()
    pos = 8
    while pos + ENTRY.size <= len(data):
        crc, length = ENTRY.unpack_from(data, pos)
        end = pos + ENTRY.size + length
        if end > len(data) or length < 1 or google_crc32c.value(data[pos + 4:end]) != crc:
            break
        kind, at, names = data[pos + 8], pos + 9, []
        while at < end:
            (size,) = NAME_LEN.unpack_from(data, at)
            names.append(data[at + 2:at + 2 + size].decode("utf-8"))
            at += 2 + size
        for name in names:
            if kind == ADD:
                record[name] = None
            else:
                record.pop(name, None)
        pos = end
    return record, pos


class ObjectRecordJournal:
    def __init__(self, path: str, fd: int, size: int, record: OrderedDict[str, None]) -> None:
        self.path, self._fd, self._size = path, fd, size
        self.record = record  # the names, as of the last durable entry
        self._bytes = sum(len(n.encode("utf-8")) + 2 for n in record)

    @staticmethod
    def open(path: str) -> ObjectRecordJournal:
        """Open (creating an empty one if missing) and replay it."""
        if not os.path.exists(path):
            durable.write_atomic(path, MAGIC)
        with open(path, "rb") as f:
            data = f.read()
        record, whole = _replay(data, path)
        if whole != len(data):
            kept = durable.move_aside(path, "torn")
            log.warning("object record journal %s: a torn tail of %d bytes was cut off (the whole "
                        "file is kept as %s)", path, len(data) - whole, kept)
            durable.write_atomic(path, data[:whole])
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return ObjectRecordJournal(path, fd, whole, record)

    def update(self, added: Iterable[str], removed: Iterable[str]) -> None:
        """Durably add and remove names (removals first); raises StorageError."""
        added, removed = tuple(added), tuple(removed)
        if not added and not removed:
            return
        raw = b"".join(_entry(kind, names) for kind, names in ((REMOVE, removed), (ADD, added)) if names)
        try:
            os.write(self._fd, raw)
            durable.sync_data(self._fd)
        except OSError as exc:
            raise StorageError(f"object record journal {self.path}: {exc.strerror}", exc.errno or 0) from exc
        self._size += len(raw)
        for name in removed:
            if self.record.pop(name, 0) is None:
                self._bytes -= len(name.encode("utf-8")) + 2
        for name in added:
            if name not in self.record:
                self.record[name] = None
                self._bytes += len(name.encode("utf-8")) + 2
        if self._size > max(COMPACT_FACTOR * self._bytes, COMPACT_MIN_BYTES):
            self._compact()

    def replace(self, names: Iterable[str]) -> None:
        """Durably make the record exactly ``names``."""
        record: OrderedDict[str, None] = OrderedDict((n, None) for n in names)
        self.record = record
        self._bytes = sum(len(n.encode("utf-8")) + 2 for n in record)
        self._compact()

    def _compact(self) -> None:
        data = MAGIC + (_entry(ADD, self.record) if self.record else b"")
        try:
            durable.write_atomic(self.path, data)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"object record journal {self.path}: {exc.strerror}", exc.errno or 0) from exc
        self._size = len(data)

    def close(self) -> None:
        os.close(self._fd)


def load_may_differ(path: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        if not isinstance(doc, list) or not all(isinstance(n, str) for n in doc):
            raise ValueError("not a list of names")
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: damaged object may-differ file ({exc}); move it aside and "
                          "start with --assume-all-out-of-sync") from None
    return set(doc)


def store_may_differ(path: str, names: Iterable[str]) -> None:
    durable.write_atomic(path, json.dumps(sorted(names)).encode("utf-8"))
