"""The replication link's messages: their types and flags, the payload layouts, and the
message dataclasses. A frame (link/frames.py) carries one message's payload; link/payloads.py
encodes and decodes the payloads; link/wire.py re-exports all three for callers.

Payloads (after the 16-byte frame header, link/frames.py):
    HELLO       u16 version, u8 role, u8 flags (HelloFlag), 16s volume id, u64 size, u32 extent size,
                u64 epoch, then LIST(u64) epoch history, LIST(u32) the sender's out-of-sync extents,
                LIST(u64) data generations (replication/epochs.py), then for a consistency group
                only, LIST(u64) its members' sizes in bytes, in the group's order, and u32 n,
                n x (u16 length, UTF-8) its members' volume names in the same order (absent for
                a volume, so a volume's HELLO is unchanged: admission.member_problems)
    WELCOME     16s volume id, u64 epoch, u64 applied seq, u8 flags (WelcomeFlag), then
                LIST(u32) record extents, LIST(u64 seq, u64 offset, u64 length) pending ranges,
                LIST(u32) stale extents (may differ outside the record: rolled back, or
                discarded after a split brain), LIST(u32 first, u32 count) the runs of the
                resync set of an interrupted pass still to do (WelcomeFlag.RESUME); with
                WelcomeFlag.CHECKSUMS, CHECKSUMS frames follow it, in extent order, for every
                extent (a full sync) or for those runs only (a resumed pass)
    DEMOTE      LIST(u64) the epoch history, then LIST(u64) the data generations, of the newer
                primary: "you are outdated"
    VERIFY      u64 request id, u32 first extent, u32 count: hash these extents, in stream order
    HASHES      u64 request id, u32 first extent, LIST(u64) xxh3 of each extent
LIST(x) is a u32 count followed by that many x.
    REFUSE      u8 code (RefuseCode), then the UTF-8 reason for a person (the rest)
    WRITE       u64 seq, u64 offset, u8 flags, u16 budget, u32 n, n x u32 removed extents, data
    WRITES      u32 n (1 to WRITES_MAX_COUNT), n x (u64 seq, u64 offset, u32 length), then the n
                writes' data back to back, in that order: plain writes (no flags, budget or
                removals) that the secondary's record covers, one frame and one CRC32C for a
                group of host writes (issue 15). At most WRITES_MAX_BYTES of payload, far below
                the frame limit a single large WRITE already has. The decoder hands them on as
                ordinary WRITE messages, one per write, in order
    ZERO        u64 seq, u64 offset, u64 length, u8 flags, u16 budget, u32 n, n x u32 removed
    ADDED       u64 seq, then u32 extents added to the record (the rest)
    APPLIED     u64 seq: every message through seq has been applied (not necessarily durable)
    DURABLE     u64 seq: every message through seq is fdatasynced (the durable watermark)
    SYNC        u64 seq: please make everything through seq durable and report DURABLE
    REMOVE      u32 n, n x u32 removed extents, then u64 range seqs done (the rest)
    PING, PONG  u64 sender timestamp in nanoseconds (echoed back)
    RESYNC_DONE u64 seq: the resync pass that ends at seq is complete
    RESYNC_DONE_ACK u64 seq (the RESYNC_DONE's): the secondary has durably recorded the end of
                that pass (its image flushed, its site metadata says consistent, the clear of
                its resync set committed): only now may the primary report in sync
    AUTH_CHALLENGE  32s nonce (the dialler's), before anything else when a secret is configured
    AUTH_RESPONSE   32s nonce (the listener's), 32s HMAC-SHA256 proving the listener knows it
    AUTH_PROOF      32s HMAC-SHA256 proving the dialler knows it (see link/auth.py)
    STORAGE_FAILED  u8 area (StorageArea), u32 errno (Linux numbering), UTF-8 detail (the rest):
                the secondary could not write its image or metadata; it acknowledges nothing
                more on this connection and closes it (the primary treats the link as lost)
    RESYNC_SET      u64 set id, u32 n, n x (u32 first extent, u32 count): extents a resync pass may
                    change outside the record; journal them, then answer RESYNC_SET_DURABLE
    RESYNC_SET_DURABLE  u64 set id: that resync set is durable in the secondary's journal
    RESYNC_PROGRESS u64 seq, u32 n, n x (u32 first, u32 count): these extents of the pass hold
                the primary's data once everything through seq is durable: the secondary then
                journals them out of its resync set (an interrupted pass resumes without them)
    ROUTE       UTF-8 volume name (the whole payload, at most MAX_ROUTE_BYTES): the dialler's
                first message to a daemon with [[volume]] tables, before HELLO; the listener
                hands the connection to that volume (daemon/link_router.py) or REFUSEs it
    CHECKSUMS   u32 first extent, LIST(u64) xxh3 of each extent from it: the next chunk (at most
                CHECKSUM_CHUNK_EXTENTS) of a full sync's checksums, streamed after a WELCOME with
                WelcomeFlag.CHECKSUMS, in order and without gaps (issue 19: one WELCOME carrying a
                4 TiB volume's 4M checksums was a 32 MiB frame and 0.45 s on the primary's loop)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from foresync.errors import invariant
from foresync.link.object_wire import ObjectMessage

# 2: RESYNC_SET and RESYNC_SET_DURABLE (issue 19); 3: data generations in HELLO and DEMOTE and a
# code in REFUSE (issue 13); 4: full-sync checksums streamed in CHECKSUMS chunks after the
# WELCOME instead of inside it, RESYNC_PROGRESS and a resumable pass in WELCOME (issue 19);
# 5: the object frames, types 200-206 (issue 18, link/object_wire.py); 6: ROUTE, a volume's name
# before HELLO for a daemon serving many volumes on one link listener (issue 16); 7: prefix
# entries of the record of objects (flag PREFIX, OBJ_LIST_REQUEST UNDER) and OBJ_LIST split
# across frames (issue 18); 8: multipart parts mirrored (OBJ_OP kinds PART and COMPLETE, issue
# 18); 9: WRITES, a group of plain writes in one frame (issue 15); 10: RESYNC_DONE_ACK, the
# secondary's answer once the end of a pass is durable there (the primary reports in sync only
# then). A peer of another version is refused by name.
PROTOCOL_VERSION = 10
# Extents per CHECKSUMS chunk: a 64 KiB frame, about 1 ms to decode, so a heartbeat is never
# queued behind much of it; 4 TiB of 1 MiB extents is 512 chunks.
CHECKSUM_CHUNK_EXTENTS = 8192

HELLO = struct.Struct(">HBB16sQIQ")
WELCOME = struct.Struct(">16sQQB")
WRITE = struct.Struct(">QQBHI")
ZERO = struct.Struct(">QQQBHI")
SEQ = struct.Struct(">Q")
RANGE = struct.Struct(">QQQ")
VERIFY = struct.Struct(">QII")
RUN = struct.Struct(">II")
COUNT = struct.Struct(">I")
WRITES_ENTRY = struct.Struct(">QQI")  # seq, offset, length of one write of a WRITES frame
WRITES_MAX_COUNT = 1024
# A WRITES frame's payload at most: a group of small writes, where one frame per write costs the
# most (a large write goes as its own WRITE, received straight into its payload).
WRITES_MAX_BYTES = 1024 * 1024
WRITES_MEMBER_MAX_BYTES = 64 * 1024  # a write this big or bigger goes as its own WRITE
NONCE_BYTES = MAC_BYTES = 32
AUTH_CHALLENGE = struct.Struct(">32s")
AUTH_RESPONSE = struct.Struct(">32s32s")
STORAGE_FAILED = struct.Struct(">BI")
NAME_LENGTH = struct.Struct(">H")  # a group member's name: u16 length, then UTF-8 bytes

invariant(HELLO.size == 40 and WELCOME.size == 33, "link hello layout")
invariant(WRITE.size == 23 and ZERO.size == 31, "link write layout")
invariant(STORAGE_FAILED.size == 5, "link storage failure layout")
invariant(WRITES_ENTRY.size == 20, "link write group layout")


class MessageType(IntEnum):
    HELLO = 1
    WELCOME = 2
    REFUSE = 3
    WRITE = 4
    ZERO = 5
    ADDED = 6
    APPLIED = 7
    DURABLE = 8
    SYNC = 9
    REMOVE = 10
    PING = 11
    PONG = 12
    RESYNC_DONE = 13
    DEMOTE = 14
    VERIFY = 15
    HASHES = 16
    AUTH_CHALLENGE = 17
    AUTH_RESPONSE = 18
    AUTH_PROOF = 19
    STORAGE_FAILED = 20
    RESYNC_SET = 21
    RESYNC_SET_DURABLE = 22
    CHECKSUMS = 23
    RESYNC_PROGRESS = 24
    ROUTE = 25
    WRITES = 26
    RESYNC_DONE_ACK = 27

MAX_ROUTE_BYTES = 255  # a volume name, within the 4 KiB frames allowed before setup


class HelloFlag(IntFlag):
    EVERYTHING_OUT_OF_SYNC = 1  # the sender's out-of-sync set is every extent (its store was lost)
    # The sender takes a RANGE's ADDED once the range is journaled there, before it is zeroed
    # (it puts DURABLE on a sync-mode RANGE, which is still answered once durable). issue 14
    EARLY_RANGES = 2


class WelcomeFlag(IntFlag):
    NEW = 1  # the secondary has no image of this volume yet (or lost its metadata): full sync
    INCONSISTENT = 2  # a resync into it did not finish: it is not a usable copy until one does
    CHECKSUMS = 4  # CHECKSUMS chunks of every extent follow: compare before sending (full sync)
    RESUME = 8  # an interrupted pass: its runs still to do (``resync``), record, stale and ranges
    #             bound what may differ here; resume over them instead of every extent


class WriteFlag(IntFlag):
    MISS = 1  # add the touched extents (plus predictions, within budget) before applying; reply ADDED
    DURABLE = 2  # sync mode: reply DURABLE once this write is fdatasynced
    RESYNC = 4  # resync data, not a host write
    PUNCH = 8  # ZERO only: the range may be deallocated
    RANGE = 16  # ZERO only: too large for the record; journal it as a pending range until REMOVE


class StorageArea(IntEnum):
    """What a site failed to write (STORAGE_FAILED)."""

    IMAGE = 1  # the volume's data file
    JOURNAL = 2  # the record journal
    UNDO = 3  # the undo log kept during a resync
    METADATA = 4  # site.json

    @property
    def label(self) -> str:
        return _AREA_LABELS[self]


_AREA_LABELS = {StorageArea.IMAGE: "image", StorageArea.JOURNAL: "record journal",
                StorageArea.UNDO: "undo log", StorageArea.METADATA: "site metadata"}


class RefuseCode(IntEnum):
    """Why a site refused its peer (REFUSE): a site acts on this, never on the text."""

    OTHER = 0  # anything else (the text says what)
    MISMATCH = 1  # protocol version, volume size or extent size differ
    STRANGER = 2  # another volume identity
    OUTDATED = 3  # the peer's lineage is older: it is an old primary and must step down
    SPLIT_BRAIN = 4  # the lineages diverged: both sites took writes (epochs.py)
    TWO_PRIMARIES = 5  # two primaries with one lineage
    AUTH = 6  # link authentication failed (link/auth.py)


class Role(IntEnum):
    PRIMARY = 0
    SECONDARY = 1


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    role: int
    flags: int
    volume_id: bytes
    size: int
    extent_size: int
    epoch: int
    history: tuple[int, ...] = ()
    out_of_sync: tuple[int, ...] = ()
    generations: tuple[int, ...] = ()
    member_sizes: tuple[int, ...] = ()  # a consistency group's members' sizes; () for a volume
    member_names: tuple[str, ...] = ()  # and their volume names, in the same order


@dataclass(frozen=True, slots=True)
class Welcome:
    volume_id: bytes
    epoch: int
    applied_seq: int
    record: tuple[int, ...]
    ranges: tuple[tuple[int, int, int], ...] = ()  # (seq, offset, length) still pending
    flags: int = 0
    stale: tuple[int, ...] = ()
    resync: tuple[tuple[int, int], ...] = ()  # runs still to do of an interrupted pass (RESUME)


@dataclass(frozen=True, slots=True)
class Demote:
    history: tuple[int, ...]
    generations: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Verify:
    request: int
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Hashes:
    request: int
    first: int
    hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Checksums:
    first: int
    hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str
    code: int = RefuseCode.OTHER


@dataclass(slots=True, eq=True)
class Write:
    """Not frozen, unlike the other messages: one is made per host write on each site, and a
    frozen dataclass's ``__init__`` costs 0.76 us against 0.17 us (measured). Never changed
    after it is made."""

    seq: int
    offset: int
    flags: int
    budget: int
    removals: tuple[int, ...]
    data: bytes


@dataclass(slots=True)
class WriteBatch:
    """Plain WRITEs (flags 0, budget 0, no removals) in seq order, sent as one WRITES frame.
    Only the primary makes one (``PrimaryCore.write_hits``); a receiver's ``FrameDecoder``
    hands its writes on one by one, as ``Write`` messages."""

    writes: list[Write]


@dataclass(frozen=True, slots=True)
class Zero:
    seq: int
    offset: int
    length: int
    flags: int
    budget: int
    removals: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Added:
    seq: int
    extents: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Applied:
    seq: int


@dataclass(frozen=True, slots=True)
class Durable:
    seq: int


@dataclass(frozen=True, slots=True)
class Sync:
    seq: int


@dataclass(frozen=True, slots=True)
class Remove:
    extents: tuple[int, ...]
    ranges_done: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Ping:
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class Pong:
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class ResyncDone:
    seq: int


@dataclass(frozen=True, slots=True)
class ResyncDoneAck:
    seq: int  # the RESYNC_DONE's


@dataclass(frozen=True, slots=True)
class StorageFailed:
    area: int  # a StorageArea; kept an int so that a newer peer's area still decodes
    errno: int
    detail: str


@dataclass(frozen=True, slots=True)
class ResyncSet:
    set_id: int
    runs: tuple[tuple[int, int], ...]  # (first extent, count), normalised (record/runs.py)


@dataclass(frozen=True, slots=True)
class ResyncProgress:
    seq: int
    runs: tuple[tuple[int, int], ...]  # (first extent, count), normalised (record/runs.py)


@dataclass(frozen=True, slots=True)
class ResyncSetDurable:
    set_id: int


@dataclass(frozen=True, slots=True)
class Route:
    volume: str


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class AuthResponse:
    nonce: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class AuthProof:
    mac: bytes


Message = (Hello | Welcome | Refuse | Write | Zero | Added | Applied | Durable | Sync | Remove
           | Ping | Pong | ResyncDone | ResyncDoneAck | Demote | Verify | Hashes | AuthChallenge | AuthResponse
           | AuthProof | StorageFailed | ResyncSet | ResyncSetDurable | Checksums
           | ResyncProgress | Route | WriteBatch | ObjectMessage)


def may_wait(message: Message) -> bool:
    """Whether ``message`` may sit in the sender's queue for a moment (see ``link/transport.py``).

    Nothing waits for these: a WRITE or ZERO that the secondary's record already covers (no
    MISS, DURABLE or RANGE flag; the primary answered the host already) and APPLIED (it only
    frees window, which is at least 32 MiB). Every other message is awaited by someone (an
    ADDED, a sync-mode DURABLE, a SYNC, a PING) and goes out in the same pass of the event
    loop; it takes everything queued before it along, so the stream stays in order."""
    if type(message) is Write or type(message) is Zero:
        return not message.flags & _AWAITED
    return type(message) is Applied or type(message) is WriteBatch


_AWAITED = int(WriteFlag.MISS | WriteFlag.DURABLE | WriteFlag.RANGE)  # an int: no enum.py per call
