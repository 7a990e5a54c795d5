"""The link's object frames (issue 18): objects ride the block volume's link, in its one stream.

They share the frame header, CRC and limits of link/wire.py (which dispatches their type numbers
here); only the payloads are laid out here. Object ops have their own sequence numbers (``oseq``),
in the same TCP stream as the block frames, so the secondary's object store is always a prefix of
the primary's object history. STR is a u16 length then that many UTF-8 bytes; a name is
``bucket/key``, or a multipart part's ``bucket NUL upload_id NUL NNNNN`` (objects/parts.py).
Integers are big-endian.

    OBJ_OP      u64 oseq, u8 kind (ObjectKind), u8 flags (ObjectFlag), u16 budget, u32 n,
                n x STR removed names, STR name, u32 m, m bytes of metadata (the ObjectInfo JSON of
                objects/store.py: etag, content type, user metadata), then the data (the rest)
    OBJ_CHUNK   u64 oseq, u64 offset, then data: a piece of a large object's data, sent ahead of
                its OBJ_OP (flag CHUNKED, empty data) so that no frame exceeds the link's limit
    OBJ_ADDED   u64 oseq, u32 n, n x STR names now durably in the secondary's record
    OBJ_DURABLE u64 oseq: every object op through oseq is applied and fsynced
    OBJ_REMOVE  u32 n, n x STR names evicted from the record (when no op carries them)
    OBJ_LIST_REQUEST  u64 request, u8 what (ListWhat), STR directory (UNDER; else empty)
    OBJ_LIST    u64 request, u8 what, u8 more, u32 n, n x (STR entry, STR etag; "" = no such
                object, or a record entry); a long listing is split across frames of at most
                ``LIST_FRAME_BYTES``, each but the last with more = 1

A record entry is a name or a prefix entry (objects/entries.py: a directory then a NUL).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from foresync.errors import RemoteProtocolError, invariant

# Type numbers, near the end of the range: other frames are added below them (wire.MessageType).
OBJ_OP, OBJ_CHUNK, OBJ_ADDED, OBJ_DURABLE, OBJ_REMOVE, OBJ_LIST_REQUEST, OBJ_LIST = range(200, 207)
OBJECT_TYPES = frozenset(range(200, 207))

OP = struct.Struct(">QBBHI")
CHUNK = struct.Struct(">QQ")
SEQ = struct.Struct(">Q")
COUNT = struct.Struct(">I")
STR_LEN = struct.Struct(">H")
LIST_REQUEST = struct.Struct(">QB")
LIST_HEAD = struct.Struct(">QBB")
invariant(OP.size == 16 and CHUNK.size == 16 and LIST_REQUEST.size == 9 and LIST_HEAD.size == 10,
          "object frame layout")
NAME_BYTES_MAX = 65535
# An OBJ_LIST frame's entries stop past this many bytes (the link's frame limit is 33 MiB): a
# listing of any length crosses in frames, and no frame holds the loop for long to encode.
LIST_FRAME_BYTES = 1024 * 1024


class ObjectKind(IntEnum):
    PUT = 1  # the object's data and metadata replace the name
    DELETE = 2  # the name is deleted (a no-op if absent)
    BUCKET_CREATE = 3  # name is the bucket
    BUCKET_DELETE = 4
    PART = 5  # one part of a multipart upload (name: objects/parts.py); meta: the part's
    #           ObjectInfo JSON and the upload's document, data: the part
    COMPLETE = 6  # the object assembled from its durable parts there (meta: parts.completion_meta)


class ObjectFlag(IntFlag):
    MISS = 1  # durably add the name (and predicted names, within budget) first; reply OBJ_ADDED
    DURABLE = 2  # sync mode: the primary waits for this op's OBJ_DURABLE
    RESYNC = 4  # a resync copy of the primary's current state, not a client op
    CHUNKED = 8  # the data came in OBJ_CHUNK frames before this op
    PREFIX = 16  # a miss: the primary made room for the name's directory as a prefix entry


class ListWhat(IntEnum):
    RECORD = 1  # the names in the secondary's durable record (etags empty)
    ALL = 2  # every object the secondary holds, with its etag (a full compare, or verify)
    UNDER = 3  # every object the secondary holds under ``directory`` (a prefix entry's resync)


@dataclass(frozen=True, slots=True)
class ObjectOp:
    seq: int
    kind: int
    flags: int
    budget: int
    name: str
    removals: tuple[str, ...] = ()
    meta: bytes = b""
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ObjectChunk:
    seq: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ObjectAdded:
    seq: int
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ObjectDurable:
    seq: int


@dataclass(frozen=True, slots=True)
class ObjectRemove:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ObjectListRequest:
    request: int
    what: int
    directory: str = ""


@dataclass(frozen=True, slots=True)
class ObjectList:
    request: int
    what: int
    entries: tuple[tuple[str, str], ...]
    more: bool = False  # more frames of this listing follow (``list_frames``)


ObjectMessage = (ObjectOp | ObjectChunk | ObjectAdded | ObjectDurable | ObjectRemove
                 | ObjectListRequest | ObjectList)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    invariant(len(raw) <= NAME_BYTES_MAX, "object name too long for the link")
    return STR_LEN.pack(len(raw)) + raw


def _strs(texts: tuple[str, ...]) -> bytes:
    return COUNT.pack(len(texts)) + b"".join(_str(t) for t in texts)


def encode(message: ObjectMessage) -> tuple[int, bytes, bytes]:
    """(type, payload head, data kept apart so that large data is not copied)."""
    match message:
        case ObjectOp(seq, kind, flags, budget, name, removals, meta, data):
            head = OP.pack(seq, kind, flags, budget, len(removals)) + b"".join(_str(r) for r in removals)
            return OBJ_OP, head + _str(name) + COUNT.pack(len(meta)) + meta, data
        case ObjectChunk(seq, offset, data):
            return OBJ_CHUNK, CHUNK.pack(seq, offset), data
        case ObjectAdded(seq, names):
            return OBJ_ADDED, SEQ.pack(seq) + _strs(names), b""
        case ObjectDurable(seq):
            return OBJ_DURABLE, SEQ.pack(seq), b""
        case ObjectRemove(names):
            return OBJ_REMOVE, _strs(names), b""
        case ObjectListRequest(request, what, directory):
            return OBJ_LIST_REQUEST, LIST_REQUEST.pack(request, what) + _str(directory), b""
        case ObjectList(request, what, entries, more):
            body = b"".join(_str(n) + _str(e) for n, e in entries)
            head = LIST_HEAD.pack(request, what, int(more)) + COUNT.pack(len(entries))
            return OBJ_LIST, head + body, b""
    raise AssertionError(f"unknown object message {message!r}")


class _Reader:
    def __init__(self, payload: bytes, what: str) -> None:
        self.payload, self.pos, self.what = payload, 0, what

    def fixed(self, layout: struct.Struct) -> tuple[int, ...]:
        if self.pos + layout.size > len(self.payload):
            raise RemoteProtocolError(f"{self.what} payload shorter than its fixed part")
        values = layout.unpack_from(self.payload, self.pos)
        self.pos += layout.size
        return tuple(values)

    def text(self) -> str:
        (length,) = self.fixed(STR_LEN)
        end = self.pos + length
        if end > len(self.payload):
            raise RemoteProtocolError(f"{self.what}: a name runs past the frame")
        try:
            value = self.payload[self.pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"{self.what}: a name is not UTF-8") from None
        self.pos = end
        return value

    def texts(self, count: int | None = None) -> tuple[str, ...]:
        if count is None:
            (count,) = self.fixed(COUNT)
        if count > len(self.payload):  # each name takes at least 2 bytes: a lie, not a list
            raise RemoteProtocolError(f"{self.what}: a list of {count} names runs past the frame")
        return tuple(self.text() for _ in range(count))

    def rest(self) -> bytes:
        data = self.payload[self.pos:]
        self.pos = len(self.payload)
        return data

    def finish(self) -> None:
        if self.pos != len(self.payload):
            raise RemoteProtocolError(f"{self.what}: {len(self.payload) - self.pos} unexpected trailing bytes")


def decode(kind: int, payload: bytes) -> ObjectMessage:
    """Decode one checked object frame; malformed content is a RemoteProtocolError."""
    if kind == OBJ_OP:
        r = _Reader(payload, "OBJ_OP")
        seq, op_kind, flags, budget, count = r.fixed(OP)
        removals = r.texts(count)
        name = r.text()
        (meta_len,) = r.fixed(COUNT)
        if r.pos + meta_len > len(payload):
            raise RemoteProtocolError("OBJ_OP: metadata runs past the frame")
        meta = payload[r.pos:r.pos + meta_len]
        r.pos += meta_len
        return ObjectOp(seq, op_kind, flags, budget, name, removals, meta, r.rest())
    if kind == OBJ_CHUNK:
        r = _Reader(payload, "OBJ_CHUNK")
        seq, offset = r.fixed(CHUNK)
        return ObjectChunk(seq, offset, r.rest())
    if kind == OBJ_ADDED:
        r = _Reader(payload, "OBJ_ADDED")
        (seq,) = r.fixed(SEQ)
        added = ObjectAdded(seq, r.texts())
        r.finish()
        return added
    if kind == OBJ_DURABLE:
        r = _Reader(payload, "OBJ_DURABLE")
        (seq,) = r.fixed(SEQ)
        r.finish()
        return ObjectDurable(seq)
    if kind == OBJ_REMOVE:
        r = _Reader(payload, "OBJ_REMOVE")
        removed = ObjectRemove(r.texts())
        r.finish()
        return removed
    if kind == OBJ_LIST_REQUEST:
        r = _Reader(payload, "OBJ_LIST_REQUEST")
        request, what = r.fixed(LIST_REQUEST)
        directory = r.text()
        r.finish()
        return ObjectListRequest(request, what, directory)
    if kind == OBJ_LIST:
        r = _Reader(payload, "OBJ_LIST")
        request, what, more = r.fixed(LIST_HEAD)
        (count,) = r.fixed(COUNT)
        if count > len(payload) or more > 1:
            raise RemoteProtocolError("OBJ_LIST: a list runs past the frame, or a bad 'more'")
        entries = tuple((r.text(), r.text()) for _ in range(count))
        r.finish()
        return ObjectList(request, what, entries, bool(more))
    raise RemoteProtocolError(f"unknown link message type {kind}")


def list_frames(request: int, what: int, entries: Iterable[tuple[str, str]],
                frame_bytes: int = LIST_FRAME_BYTES) -> Iterator[ObjectList]:
    """A listing as OBJ_LIST frames of at most about ``frame_bytes`` of entries each (one entry
    always fits: a name is at most 64 KiB), the last with ``more`` False; at least one frame."""
    batch: list[tuple[str, str]] = []
    size = 0
    for name, etag in entries:
        entry_bytes = 4 + len(name.encode("utf-8")) + len(etag.encode("utf-8"))
        if batch and size + entry_bytes > frame_bytes:
            yield ObjectList(request, what, tuple(batch), True)
            batch, size = [], 0
        batch.append((name, etag))
        size += entry_bytes
    yield ObjectList(request, what, tuple(batch), False)
