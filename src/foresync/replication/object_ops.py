"""The object cores' vocabulary (issue 18): configuration, ports, actions, op states, statistics.

``ObjectPrimaryCore`` (replication/objects.py) decides; these are the words it decides in. The
adapter (daemon/objects.py) carries out the actions in order, and gives the core its local
store through ``LocalIndex``. Pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from foresync.link.object_wire import ObjectMessage
from foresync.replication.primary import Mode


@dataclass(frozen=True, slots=True)
class ObjectConfig:
    mode: Mode
    capacity: int = 4096  # names the record covers
    capacity_bytes: int = 1024 * 1024  # bytes of the names it covers
    budget: int = 8  # predicted names a miss may add
    prefix_names_max: int = 64  # names one prefix entry may cover (0: no prefix entries)
    window_bytes: int = 64 * 1024 * 1024  # object data sent and not yet durable there


class LocalIndex(Protocol):
    """The primary's own objects, as the core needs them for prefix entries (the adapter's)."""

    def weigh(self, directory: str, limit: int) -> tuple[int, int] | None:
        """How many names the primary holds under ``directory`` and their UTF-8 bytes (as
        ``bucket/key``); None if more than ``limit``."""

    def names_under(self, directory: str) -> list[str]:
        """Every name the primary holds under ``directory``."""

    def has(self, name: str) -> bool:
        """Whether the primary holds ``name``."""


# -- actions (the primary adapter carries them out in order) ---------------------------------------

@dataclass(frozen=True, slots=True)
class SendObject:
    message: ObjectMessage


@dataclass(frozen=True, slots=True)
class CommitLocal:
    op_id: int  # make the op's change visible locally now, then call ``committed``


@dataclass(frozen=True, slots=True)
class AnswerClient:
    op_id: int


@dataclass(frozen=True, slots=True)
class PersistMayDiffer:
    names: frozenset[str]  # the whole set, durably, before any later action


@dataclass(frozen=True, slots=True)
class ReadForResync:
    op_id: int  # read the name's current local state and call ``resync_read``
    name: str


ObjectAction = SendObject | CommitLocal | AnswerClient | PersistMayDiffer | ReadForResync


class OpState(Enum):
    QUEUED = "queued"  # behind an earlier op on its name
    WAIT_WINDOW = "wait_window"  # at the head of its name, waiting for room in the window
    WAIT_ROOM = "wait_room"  # a miss waiting for a clean name to evict
    WAIT_PARTS = "wait_parts"  # a COMPLETE waiting for its parts' resyncs to be durable there
    AWAIT_ADDED = "await_added"  # a miss sent; the secondary has not yet recorded the name
    READING = "reading"  # a resync op: the adapter reads the local state
    COMMITTING = "committing"  # CommitLocal given; waiting for ``committed``
    AWAIT_DURABLE = "await_durable"  # committed (or a resync sent); waiting for OBJ_DURABLE
    DONE = "done"


@dataclass(slots=True)
class Op:
    op_id: int
    kind: int
    name: str
    meta: bytes
    data: bytes
    resync: bool = False
    seq: int = 0
    state: OpState = OpState.QUEUED
    need_durable: bool = False
    mark: int = 0  # the may-differ mark a resync read saw
    reserved: tuple[int, int] = (0, 0)  # a miss's room in the record (names, bytes) until ADDED
    cover: str = ""  # a resync op's prefix entry (``_expand``), if it came from one
    windowed: bool = False  # let through the window: it may send
    charged: int = 0  # its bytes in the window
    parts: tuple[str, ...] = ()  # a COMPLETE's chosen parts (objects/parts.py names)
    resync_after: bool = False  # a COMPLETE committed unsent: its name is resynced after it


@dataclass(frozen=True, slots=True)
class ObjectStatistics:
    link: str
    record_entries: int
    record_bytes: int
    record_names: int  # names the entries cover (a prefix entry covers many)
    record_prefixes: int
    may_differ: int
    hits: int
    misses: int
    ops_in_flight: int
    last_seq: int
    durable_seq: int
    resyncs: int
    verify_mismatches: tuple[str, ...] | None  # None: no verify has finished
    window_used_bytes: int = 0
    waiting_window: int = 0  # ops waiting for room in the window


@dataclass(slots=True)
class Counters:
    hits: int = 0
    misses: int = 0
    resyncs: int = 0
