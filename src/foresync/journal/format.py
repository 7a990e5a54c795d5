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
        RESYNC_SHRINK (8) u32 n, n x (u32 first, u32 count): runs of extents leaving the resync
                       set: the pass's data for them is durable here (an interrupted pass resumes
                       without them, issue 19)
A checkpoint is the whole record; a journal is rewritten as header + one checkpoint (followed by
one RESYNC_SET when a pass is running) when it grows.

Replay applies entries in order and stops at the first entry that is incomplete, fails its CRC
or does not parse. Then it decides what the bad bytes are (``classify_stop``):

- A torn tail: the last appends, cut short by a crash before their fdatasync. Appends are
  sequential and only whole, committed entries are ever relied on, so a tear can only be the
  end of the file: an entry cut short, or a whole final entry whose bytes were not all written
  (a page the crash did not write back reads as zeros), with nothing valid after it. Nothing
  after the stop is used; the caller preserves those bytes aside before truncating, so nothing is
  destroyed silently.
- Damage: anything a crash mid-append cannot produce. The first entry is bad (it is the
  checkpoint, written whole with the header before an atomic rename); a whole, valid entry
  follows the bad one; the bad entry is whole and its length field alone, or one byte of its
  body or CRC, explains the mismatch (bit rot, not a tear); or the body passes its CRC but does
  not parse. A damaged journal cannot say which extents may differ: the caller must widen
  (every extent may differ), never use the prefix as if it were the record.

``assess`` is the policy both the daemon and the simulator apply to a journal file, including a
missing one (a site with a volume identity always has a journal): the record it may trust, or
why it may trust none.

Known limits, by construction: damage confined to the final entry that changes more than one
byte, without any valid entry after it, looks exactly like a torn append and is treated as one;
and a crash that writes back pages of un-synced appends out of order can look like damage (the
site then widens: safe, it only costs a full compare).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import google_crc32c

from foresync.errors import JournalCorruption, invariant
from foresync.faults import NO_FAULTS, Faults
from foresync.record.runs import Runs, difference, normalise, union

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
    RESYNC_SHRINK = 8


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


def encode_resync_shrink(runs: Runs) -> bytes:
    flat = [value for run in runs for value in run]
    return _entry(bytes([EntryKind.RESYNC_SHRINK]) + U32.pack(len(runs)) + struct.pack(f">{len(flat)}I", *flat))


def encode_resync_clear() -> bytes:
    return _entry(bytes([EntryKind.RESYNC_CLEAR]))


def encode_checkpoint(state: RecordState) -> bytes:
    """The whole state: one CHECKPOINT entry, then the resync set (if any) as a RESYNC_SET."""
    ranges = sorted(state.ranges.items())
    body = bytes([EntryKind.CHECKPOINT]) + _u32_list(sorted(state.extents)) + U32.pack(len(ranges))
    body += b"".join(RANGE.pack(seq, off, length) for seq, (off, length) in ranges)
    return _entry(body) + (encode_resync_set(state.resync) if state.resync else b"")


def _read_list(body: bytes, pos: int, per_item: int = 1) -> tuple[list[int], int]:
    """A u32 count of items, then each item's ``per_item`` u32 values, flattened."""
    (count,) = U32.unpack_from(body, pos)
    values = per_item * count
    end = pos + 4 + 4 * values
    if end > len(body):
        raise ValueError(("extent" if per_item == 1 else "run") + " list runs past the entry")
    return list(struct.unpack_from(f">{values}I", body, pos + 4)), end


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
        flat, _ = _read_list(body, 1, 2)
        state.resync = union(state.resync, normalise(zip(flat[::2], flat[1::2], strict=True)))
    elif kind == EntryKind.RESYNC_CLEAR:
        state.resync = ()
    elif kind == EntryKind.RESYNC_SHRINK:
        flat, _ = _read_list(body, 1, 2)
        state.resync = difference(state.resync, normalise(zip(flat[::2], flat[1::2], strict=True)))
    else:
        raise ValueError(f"unknown journal entry kind {kind}")


@dataclass(frozen=True, slots=True)
class Replay:
    volume_id: bytes
    state: RecordState
    entries: int
    valid_end: int  # byte offset just past the last whole, valid entry
    torn_reason: str | None  # why replay stopped before the end of the data, if it was a torn tail
    damage: str | None = None  # why the journal cannot be trusted, if it stopped on damage there


# -- one changed byte: bit rot, not a torn write ---------------------------------------------------
#
# CRC32C is linear over GF(2): for two messages of one length, crc(a) ^ crc(b) depends only on
# a ^ b. So the syndrome crc(body) ^ stored names the error pattern. One changed byte v at
# position i of an n-byte body gives the syndrome Z^(n-1-i)(T[v]): T[v] is the register after
# the byte v from a zero register, Z shifts one zero byte through. Walking Z backwards from the
# syndrome n times and looking for a T value tests every position in O(n). The high bytes of T
# are all different, which is what makes Z invertible byte by byte (checked at import).

_T = tuple(crc32c(bytes([v])) ^ crc32c(b"\0") for v in range(256))
_T_NONZERO = frozenset(_T[1:])
_T_BY_TOP = {t >> 24: v for v, t in enumerate(_T)}
invariant(len(_T_BY_TOP) == 256, "CRC32C table high bytes are distinct")
ONE_BYTE_CHECK_MAX_BYTES = 16 * 1024 * 1024  # larger bodies are not searched (about 5 s in CPython)


def _unshift(reg: int) -> int:
    """Undo one zero byte of Z: reg = (prev >> 8) ^ T[prev & 0xFF]."""
    low = _T_BY_TOP[reg >> 24]
    return (((reg ^ _T[low]) << 8) | low) & 0xFFFFFFFF


def one_byte_explains(body: bytes, stored_crc: int, crc: int | None = None) -> bool:
    """Whether changing one byte of ``body``, or one byte of the stored CRC, explains why the
    body fails its CRC. A torn write replaces a run of bytes (a page not written back), almost
    never exactly one byte; a flipped bit or byte on the medium changes exactly one. ``crc`` is
    the body's CRC if the caller already has it."""
    syndrome = (crc32c(body) if crc is None else crc) ^ stored_crc
    if syndrome == 0:
        return False
    if any(syndrome & ~(0xFF << shift) & 0xFFFFFFFF == 0 for shift in (0, 8, 16, 24)):
        return True  # one byte of the stored CRC itself
    if len(body) > ONE_BYTE_CHECK_MAX_BYTES:
        return False
    reg = syndrome
    for _ in range(len(body)):
        if reg in _T_NONZERO:
            return True
        reg = _unshift(reg)
    return False


# -- where a bad entry came from -------------------------------------------------------------------


def _structural_length(data: bytes, start: int) -> int | None:
    """The body length an entry body starting at ``start`` must have, from its kind and counts
    (None if the bytes there cannot start a body): a second opinion beside the length field."""
    if start >= len(data):
        return None
    kind = data[start]
    try:
        if kind in (EntryKind.ADD, EntryKind.REMOVE):
            return 5 + 4 * int(U32.unpack_from(data, start + 1)[0])
        if kind == EntryKind.RANGE:
            return 1 + RANGE.size
        if kind == EntryKind.RANGE_DONE:
            return 1 + U64.size
        if kind == EntryKind.CHECKPOINT:
            count = int(U32.unpack_from(data, start + 1)[0])
            ranges = int(U32.unpack_from(data, start + 5 + 4 * count)[0])
            return 9 + 4 * count + RANGE.size * ranges
        if kind in (EntryKind.RESYNC_SET, EntryKind.RESYNC_SHRINK):
            return 5 + 8 * int(U32.unpack_from(data, start + 1)[0])
        if kind == EntryKind.RESYNC_CLEAR:
            return 1
    except struct.error:
        return None
    return None


def valid_entry_at(data: bytes, pos: int) -> bool:
    """Whether a whole entry that passes its CRC, with a length its body agrees with, starts at
    ``pos``. Random bytes pass this about once in 2**32 tries."""
    if pos + ENTRY_HEADER.size >= len(data):
        return False
    length, crc = ENTRY_HEADER.unpack_from(data, pos)
    if not 0 < length <= MAX_ENTRY_BYTES or pos + ENTRY_HEADER.size + length > len(data):
        return False
    if _structural_length(data, pos + ENTRY_HEADER.size) != length:
        return False
    return crc32c(bytes(data[pos + ENTRY_HEADER.size : pos + ENTRY_HEADER.size + length])) == int(crc)


def classify_stop(data: bytes, pos: int, first: bool, crc_ok: bool) -> str | None:
    """Replay stopped at ``pos``: None if the bytes from there are a torn tail, else why they
    are damage. ``first``: the bad entry is the first after the header; ``crc_ok``: it is whole
    and passes its CRC but does not parse."""
    if first:
        return "the first entry (the checkpoint, written whole with the header) is bad"
    if crc_ok:
        return "an entry passes its CRC32C but does not parse"
    rest = len(data) - pos
    if rest >= ENTRY_HEADER.size:
        length, crc = ENTRY_HEADER.unpack_from(data, pos)
        start = pos + ENTRY_HEADER.size
        shape = _structural_length(data, start)
        if shape is not None and shape != length and 0 < shape <= rest - ENTRY_HEADER.size \
                and crc32c(bytes(data[start : start + shape])) == crc:
            return f"its length field says {length} bytes, but a whole, valid {shape}-byte entry is there"
        if 0 < length <= rest - ENTRY_HEADER.size and one_byte_explains(bytes(data[start : start + length]), crc):
            return "one changed byte explains its CRC32C failure (a flipped byte, not a torn write)"
    for later in range(pos + 1, len(data) - ENTRY_HEADER.size):
        if valid_entry_at(data, later):
            return f"a whole, valid entry follows it at byte {later}"
    return None


def replay(data: bytes, on_entry: Callable[[int, bytes, RecordState], None] | None = None,
           faults: Faults = NO_FAULTS) -> Replay:
    """Replay a whole journal image. Header damage is JournalCorruption (nothing is usable);
    after the header, replay stops at the first bad entry and reports it as a torn tail or as
    damage (see the module docstring). ``on_entry`` sees each applied entry (its byte position,
    body, and the state after it): `inspect`."""
    volume_id = decode_header(data)
    state = RecordState()
    pos = HEADER.size
    entries = 0
    bad: str | None = None
    crc_ok = False
    while pos < len(data):
        if len(data) - pos < ENTRY_HEADER.size:
            bad = "entry header cut short"
            break
        length, crc = ENTRY_HEADER.unpack_from(data, pos)
        if length == 0 or length > MAX_ENTRY_BYTES:
            bad = f"entry length {length} is impossible"
            break
        end = pos + ENTRY_HEADER.size + length
        if end > len(data):
            bad = f"entry of {length} bytes cut short"
            break
        body = bytes(data[pos + ENTRY_HEADER.size : end])
        if crc32c(body) != crc:
            bad = "entry fails its CRC32C"
            break
        try:
            apply_entry(state, body)
        except (ValueError, struct.error, IndexError) as exc:
            bad, crc_ok = f"entry body malformed: {exc}", True
            break
        if on_entry is not None:
            on_entry(pos, body, state)
        entries += 1
        pos = end
    if bad is None:
        if entries == 0:
            return Replay(volume_id, state, 0, pos, None, "no checkpoint after the header")
        return Replay(volume_id, state, entries, pos, None)
    why = classify_stop(data, pos, entries == 0, crc_ok)
    if why is None or faults.damage_taken_for_torn_tail:
        return Replay(volume_id, state, entries, pos, bad)
    return Replay(volume_id, state, entries, pos, None, f"{bad}: {why}")


@dataclass(frozen=True, slots=True)
class Assessment:
    """What a site may believe from its journal file. ``doubt`` None: ``replay`` is the record
    (a torn tail, if any, is to be cut at ``replay.valid_end``). Otherwise every extent may
    differ, and ``doubt`` says why (for the log, /status and the refusal to promote)."""

    replay: Replay | None
    doubt: str | None

    @property
    def state(self) -> RecordState:
        return self.replay.state if self.replay is not None and self.doubt is None else RecordState()


def assess(data: bytes | None, volume_id: bytes, faults: Faults = NO_FAULTS) -> Assessment:
    """The policy for a secondary's journal, shared by the daemon and the simulator. ``data``
    None: the file is missing, though the site has a volume identity and so always has one."""
    if data is None:
        if faults.missing_metadata_taken_as_empty:
            return Assessment(Replay(volume_id, RecordState(), 1, 0, None), None)
        return Assessment(None, "is missing")
    try:
        replayed = replay(data, faults=faults)
    except JournalCorruption as exc:
        return Assessment(None, f"is damaged: {exc}")
    if replayed.damage is not None:
        return Assessment(replayed, f"is damaged at byte {replayed.valid_end}: {replayed.damage}")
    if replayed.volume_id != volume_id:
        return Assessment(replayed, f"belongs to volume {replayed.volume_id.hex()}, not to ours "
                                    f"({volume_id.hex()})")
    return Assessment(replayed, None)
