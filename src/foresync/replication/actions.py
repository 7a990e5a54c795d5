"""What the pure cores ask their adapter to do: the actions, and nothing else.

A core never does I/O. Each input (a host request, a link message, a completion, a timer) may
queue actions; the adapter takes them with ``actions()`` and carries them out in order. Results
come back as further inputs (``local_applied``, ``data_synced`` ...). The same actions are carried
out by the daemon, the simulator and the core tests, each over its own I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from foresync.link import wire
from foresync.replication.epochs import Lineage

# -- both cores ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    message: wire.Message


# -- the primary's ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApplyLocal:
    """Apply an op to the local image, then call ``local_applied(seq, errno)``."""

    seq: int
    offset: int
    length: int
    data: bytes | None  # None: a zero/trim
    punch: bool


@dataclass(frozen=True, slots=True)
class AckHost:
    op_id: int
    errno: int


@dataclass(frozen=True, slots=True)
class FlushLocal:
    """fdatasync the local image, then call ``local_flushed(through)``."""

    through: int


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """End the link now (abort it): the peer broke the protocol, refused us, or went silent
    for the link timeout (liveness.py). Both cores use it."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResumeLater:
    """The resync did its share of work for this pump: call ``resume()`` from the event loop
    soon (after other ready callbacks), not from inside this pump."""


@dataclass(frozen=True, slots=True)
class BecomeSecondary:
    """A newer primary exists (claim 8's failback): step down, adopting its lineage."""

    lineage: Lineage


@dataclass(frozen=True, slots=True)
class PersistGeneration:
    """Durably store ``lineage`` (site.json) as this site's, then call
    ``generation_persisted(token)``. Writes taken while cut off wait for it (epochs.py)."""

    token: int
    lineage: Lineage


@dataclass(frozen=True, slots=True)
class PersistOutOfSync:
    """Durably replace the stored out-of-sync set, then call ``out_of_sync_persisted(token)``."""

    token: int
    extents: tuple[int, ...]
    everything: bool = False  # full_resync_pending: every extent may differ besides these


PrimaryAction = (Send | ApplyLocal | AckHost | FlushLocal | LinkFailed | PersistOutOfSync | BecomeSecondary
          | ResumeLater | PersistGeneration)


# -- the secondary's ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalAppend:
    entry: bytes


@dataclass(frozen=True, slots=True)
class WriteData:
    offset: int
    data: bytes
    seq: int = 0


@dataclass(frozen=True, slots=True)
class WriteRun:
    """Adjacent WRITEs, back to back from the first one's offset, written as one
    (``os.pwritev``; replication/write_runs.py): two or more, in seq order."""

    writes: tuple[wire.Write, ...]


@dataclass(frozen=True, slots=True)
class ZeroData:
    offset: int
    length: int
    punch: bool
    seq: int = 0


@dataclass(frozen=True, slots=True)
class SyncData:
    """fdatasync the image, then call ``data_synced(through)``."""

    through: int


@dataclass(frozen=True, slots=True)
class ResyncStarted:
    """The first resync write of a pass is about to land: until RESYNC_DONE this image is not
    a consistent copy. Persist that (durably) before carrying out the actions after this one."""


@dataclass(frozen=True, slots=True)
class ResyncFinished:
    """The primary's resync pass is complete and durable here: the image is consistent again,
    and holds the data of ``generations`` (its primary's, from the HELLO; epochs.py): store them."""

    seq: int
    generations: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class HashExtents:
    """Online verify: hash these extents of the image as it is now (every earlier write has
    been carried out) and send HASHES for ``request``."""

    request: int
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class SaveUndo:
    """Append this extent's current content to the undo log; durable with the next journal
    commit, which every later write to the extent waits for (see journal/undo.py)."""

    extent: int


@dataclass(frozen=True, slots=True)
class CloseLink:
    """End the connection to the primary once what was sent on it has gone out."""

    reason: str


SecondaryAction = (Send | JournalAppend | WriteData | WriteRun | ZeroData | SyncData | ResyncStarted | ResyncFinished
          | HashExtents | SaveUndo | CloseLink | LinkFailed)
