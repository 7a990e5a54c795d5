"""The record journal's on-disk format, and its pure encode/replay logic.

File layout, byte by byte (all integers big-endian):

Header (32 bytes):
    0   8s   magic b"FSJOURN1"
    8   u32  format version (1)
    12  16s  volume identity
    28  u32  CRC32C of bytes 0..27
Entries follow, back to back:
    0   u32  body length N (at most MAX_ENTRY_BYTES)
    4   u32  CRC32C of the body
    8   N    body: u8 kind, then by kind
        ADD (1)        u32 n, n x u32 extents now in the record
        REMOVE (2)     u32 n, n x u32 extents no longer in the record
        RANGE (3)      u64 seq, u64 offset, u64 length: a large zero/trim that may differ until done
        RANGE_DONE (4) u64 seq
        CHECKPOINT (5) u32 n, n x u32 extents, u32 m, m x (u64 seq, u64 offset, u64 length)
        RESYNC_SET (6) u32 n, n x (u32 first, u32 count): runs of extents joining the resync set,
                       extents a resync pass may change here, outside the record (issue 19)
        RESYNC_CLEAR (7) (no body) the resync pass is complete and durable: the set is empty
A checkpoint is the whole record; a journal is rewritten as header + one checkpoint (followed by
one RESYNC_SET when a pass is running) when it grows.

Replay applies entries in order and stops at the first entry that is incomplete or fails its
CRC: that is a torn tail (a crash in the middle of an append). Nothing after it is used; the
caller preserves those bytes aside before truncating, so nothing is destroyed silently.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import google_crc32c

from foresync.errors import JournalCorruption, invariant
from foresync.record.runs import Runs, normalise, union

MAGIC = b"FSJOURN1"
VERSION = 1
HEADER = struct.Struct(">8sI16sI")
ENTRY_HEADER = struct.Struct(">II")
RANGE = struct.Struct(">QQQ")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
MAX_ENTRY_BYTES = 64 * 1024 * 1024

invariant(HEADER.size == 32 and ENTRY_HEADER.size == 8 and RANGE.size == 24, "journal layout")


class EntryKind(IntEnum):
    ADD = 1
    REMOVE = 2
    RANGE = 3
    RANGE_DONE = 4
    CHECKPOINT = 5
    RESYNC_SET = 6
    RESYNC_CLEAR = 7


@dataclass
class RecordState:
    """What a journal replays to: the record's extents and the large ranges still pending."""

    extents: set[int] = field(default_factory=set)
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (offset, length)
    resync: Runs = ()  # the running resync pass's set, as runs (record/runs.py)


def crc32c(data: bytes) -> int:
    value: int = google_crc32c.value(data)
    return value


def encode_header(volume_id: bytes) -> bytes:
    invariant(len(volume_id) == 16, "volume id is 16 bytes")
    head = struct.pack(">8sI16s", MAGIC, VERSION, volume_id)
    return head + U32.pack(crc32c(head))


def decode_header(data: bytes) -> bytes:
    """The volume id from a journal header, or JournalCorruption."""
    if len(data) < HEADER.size:
        raise JournalCorruption("journal header is incomplete", 0)
    magic, version, volume_id, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise JournalCorruption(f"not a foresync journal (magic {magic!r})", 0)
    if crc != crc32c(bytes(data[:28])):
        raise JournalCorruption("journal header fails its CRC32C", 0)
    if version != VERSION:
        raise JournalCorruption(f"journal format version {version} is not supported", 8)
    return bytes(volume_id)


def _entry(body: bytes) -> bytes:
    return ENTRY_HEADER.pack(len(body), crc32c(body)) + body


def _u32_list(values: list[int] | tuple[int, ...]) -> bytes:
    return U32.pack(len(values)) + struct.pack(f">{len(values)}I", *values)


def encode_add(extents: list[int] | tuple[int, ...]) -> bytes:
    return _entry(bytes([EntryKind.ADD]) + _u32_list(extents))


def encode_remove(extents: list[int] | tuple[int, ...]) -> bytes:
    return _entry(bytes([EntryKind.REMOVE]) + _u32_list(extents))


def encode_range(seq: int, offset: int, length: int) -> bytes:
    return _entry(bytes([EntryKind.RANGE]) + RANGE.pack(seq, offset, length))


def encode_range_done(seq: int) -> bytes:
    return _entry(bytes([EntryKind.RANGE_DONE]) + U64.pack(seq))


def encode_resync_set(runs: Runs) -> bytes:
    flat = [value for run in runs for value in run]
    return _entry(bytes([EntryKind.RESYNC_SET]) + U32.pack(len(runs)) + struct.pack(f">{len(flat)}I", *flat))


def encode_resync_clear() -> bytes:
    return _entry(bytes([EntryKind.RESYNC_CLEAR]))


def encode_checkpoint(state: RecordState) -> bytes:
    """The whole state: one CHECKPOINT entry, then the resync set (if any) as a RESYNC_SET."""
    ranges = sorted(state.ranges.items())
    body = bytes([EntryKind.CHECKPOINT]) + _u32_list(sorted(state.extents)) + U32.pack(len(ranges))
    body += b"".join(RANGE.pack(seq, off, length) for seq, (off, length) in ranges)
    return _entry(body) + (encode_resync_set(state.resync) if state.resync else b"")


def _read_list(body: bytes, pos: int) -> tuple[list[int], int]:
    (count,) = U32.unpack_from(body, pos)
    end = pos + 4 + 4 * count
    if end > len(body):
        raise ValueError("extent list runs past the entry")
    return list(struct.unpack_from(f">{count}I", body, pos + 4)), end


def _read_list2(body: bytes, pos: int) -> tuple[list[int], int]:
    """A u32 count of pairs, then the pairs' u32 values, flattened."""
    (count,) = U32.unpack_from(body, pos)
    end = pos + 4 + 8 * count
    if end > len(body):
        raise ValueError("run list runs past the entry")
    return list(struct.unpack_from(f">{2 * count}I", body, pos + 4)), end


def apply_entry(state: RecordState, body: bytes) -> None:
    """Apply one CRC-checked entry body to ``state``; a malformed body raises ValueError."""
    kind = body[0]
    if kind == EntryKind.ADD:
        extents, _ = _read_list(body, 1)
        state.extents.update(extents)
    elif kind == EntryKind.REMOVE:
        extents, _ = _read_list(body, 1)
        state.extents.difference_update(extents)
    elif kind == EntryKind.RANGE:
        seq, offset, length = RANGE.unpack_from(body, 1)
        state.ranges[seq] = (offset, length)
    elif kind == EntryKind.RANGE_DONE:
        state.ranges.pop(U64.unpack_from(body, 1)[0], None)
    elif kind == EntryKind.CHECKPOINT:
        extents, pos = _read_list(body, 1)
        (count,) = U32.unpack_from(body, pos)
        ranges = {}
        for index in range(count):
            seq, offset, length = RANGE.unpack_from(body, pos + 4 + index * RANGE.size)
            ranges[seq] = (offset, length)
        state.extents = set(extents)
        state.ranges = ranges
        state.resync = ()  # a RESYNC_SET follows the checkpoint when a pass was running
    elif kind == EntryKind.RESYNC_SET:
        flat, _ = _read_list2(body, 1)
        state.resync = union(state.resync, normalise(zip(flat[::2], flat[1::2], strict=True)))
    elif kind == EntryKind.RESYNC_CLEAR:
        state.resync = ()
    else:
        raise ValueError(f"unknown journal entry kind {kind}")


@dataclass(frozen=True, slots=True)
class Replay:
    volume_id: bytes
    state: RecordState
    entries: int
    valid_end: int  # byte offset just past the last whole, valid entry
    torn_reason: str | None  # why replay stopped before the end of the data, if it did


def replay(data: bytes, on_entry: Callable[[int, bytes, RecordState], None] | None = None) -> Replay:
    """Replay a whole journal image. Header damage is JournalCorruption (nothing is usable);
    damage after the header ends replay there and is reported as a torn tail. ``on_entry``
    sees each applied entry (its byte position, body, and the state after it): `inspect`."""
    volume_id = decode_header(data)
    state = RecordState()
    pos = HEADER.size
    entries = 0
    torn: str | None = None
    while pos < len(data):
        if len(data) - pos < ENTRY_HEADER.size:
            torn = "entry header cut short"
            break
        length, crc = ENTRY_HEADER.unpack_from(data, pos)
        if length == 0 or length > MAX_ENTRY_BYTES:
            torn = f"entry length {length} is impossible"
            break
        end = pos + ENTRY_HEADER.size + length
        if end > len(data):
            torn = f"entry of {length} bytes cut short"
            break
        body = bytes(data[pos + ENTRY_HEADER.size : end])
        if crc32c(body) != crc:
            torn = "entry fails its CRC32C"
            break
        try:
            apply_entry(state, body)
        except (ValueError, struct.error, IndexError) as exc:
            torn = f"entry body malformed: {exc}"
            break
        if on_entry is not None:
            on_entry(pos, body, state)
        entries += 1
        pos = end
    return Replay(volume_id, state, entries, pos, torn)
