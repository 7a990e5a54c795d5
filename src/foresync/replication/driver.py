"""The one place a core's actions are carried out: for the daemon, the simulator and the tests.

Theory of operation. A core (``PrimaryCore``, ``SecondaryCore``) queues actions; a driver takes
them with ``actions()`` and dispatches each to an effects object, a small interface of plain
methods (``send``, ``apply_local``, ``journal_append`` ...) that each adapter implements over its
own I/O: the daemon over files and sockets, the simulator over its seeded disks and queues, the
core tests over bytearrays. The rules that make the order right live here, once:

* Actions are carried out in the order the core gave them, until it has none left. A call made
  while the driver is already running (an effect fed the core again, and the adapter asked for
  another pump) returns at once: the running loop picks up whatever that produced, so actions
  stay in order and the stack stays flat.
* The hot paths (``PrimaryDriver.write_hit``, ``SecondaryDriver.write_now``) are refused while a
  batch is being carried out: the rest of that batch (a resync WRITE with a lower seq, say) must
  reach the link or the image first.
* On the secondary, an effect that fails to write (``StorageError``, or an ``OSError`` from
  site metadata: a full disk) stops the batch: none of the actions after it is carried out, and
  the core hears of them, the failed one first (``SecondaryCore.storage_failed``), so that it
  drops them for good and ends the session. The primary's effects report failures as results
  (an errno from ``apply_local``), never by raising.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from foresync.errors import StorageError
from foresync.link import wire
from foresync.replication.actions import (
    AckHost,
    ApplyLocal,
    BecomeSecondary,
    CloseLink,
    FlushLocal,
    HashExtents,
    JournalAppend,
    LinkFailed,
    PersistGeneration,
    PersistOutOfSync,
    ResumeLater,
    ResyncFinished,
    ResyncStarted,
    SaveUndo,
    SecondaryAction,
    Send,
    SyncData,
    WriteData,
    WriteRun,
    ZeroData,
)
from foresync.replication.epochs import Lineage
from foresync.replication.primary import PrimaryCore
from foresync.replication.secondary import SecondaryCore
from foresync.replication.write_runs import as_action

# What a failing secondary action was writing, for STORAGE_FAILED and the log.
AREA_OF: dict[type, wire.StorageArea] = {
    JournalAppend: wire.StorageArea.JOURNAL,
    SaveUndo: wire.StorageArea.UNDO,
    ResyncStarted: wire.StorageArea.METADATA,
    ResyncFinished: wire.StorageArea.METADATA,
}


class PrimaryEffects(Protocol):
    """What a primary adapter does for its core. Results go back to the core as inputs."""

    def send(self, message: wire.Message) -> None:
        """Queue a message on the link to the secondary (dropped when there is none)."""

    def apply_local(self, seq: int, offset: int, length: int, data: bytes | None, punch: bool) -> int | None:
        """Write (or zero, ``data`` None) the local image. Return the errno now (0: done), or
        None to report it later through ``PrimaryCore.local_applied``."""

    def apply_hit(self, seq: int, offset: int, data: bytes) -> int:
        """The hot path's write to the local image, at once: the errno (0: done)."""

    def ack_host(self, op_id: int, errno: int) -> None:
        """Answer the host's request ``op_id``."""

    def flush_local(self, through: int) -> None:
        """fdatasync the local image, then call ``local_flushed`` (or ``local_flush_failed``)."""

    def persist_out_of_sync(self, token: int, extents: tuple[int, ...], everything: bool) -> None:
        """Durably replace the stored out-of-sync set, then call ``out_of_sync_persisted``."""

    def link_failed(self, reason: str) -> None:
        """End the link to the secondary."""

    def resume_later(self) -> None:
        """Call ``PrimaryCore.resume`` soon, after other ready work, not from this pump."""

    def persist_generation(self, token: int, lineage: Lineage) -> None:
        """Durably store ``lineage`` (a new data generation, epochs.py) as this site's, then
        call ``generation_persisted(token)``."""

    def become_secondary(self, lineage: Lineage) -> None:
        """A newer primary exists: step down, adopting its lineage."""


class SecondaryEffects(Protocol):
    """What a secondary adapter does for its core. A write that fails raises ``StorageError``
    (or ``OSError``); the driver then tells the core."""

    def send(self, message: wire.Message) -> None:
        """Queue a message on the link to the primary (dropped when there is none)."""

    def journal_append(self, entry: bytes) -> None:
        """Append to the record journal; durable with the next group commit."""

    def write_data(self, offset: int, data: bytes, seq: int) -> None: ...

    def write_run(self, writes: tuple[wire.Write, ...]) -> None:
        """Write adjacent WRITEs back to back from the first one's offset, as one call
        (``os.pwritev``; replication/write_runs.py)."""

    def zero_data(self, offset: int, length: int, punch: bool, seq: int) -> None: ...

    def sync_data(self, through: int) -> None:
        """fdatasync the image, then call ``data_synced(through)``."""

    def resync_started(self) -> None:
        """Persist that this image is inconsistent until the pass ends, before going on."""

    def resync_finished(self, seq: int, generations: tuple[int, ...]) -> None:
        """The pass is complete and durable: the image is consistent again, and holds the data
        of ``generations`` (store them; epochs.py)."""

    def hash_extents(self, request: int, first: int, count: int) -> None:
        """Hash these extents of the image as it is now and send HASHES for ``request``."""

    def save_undo(self, extent: int) -> None:
        """Append the extent's current content to the undo log."""

    def close_link(self, reason: str) -> None:
        """End the connection to the primary once what was sent on it has gone out."""

    def link_failed(self, reason: str) -> None:
        """Abort the connection to the primary: it was silent for the link timeout."""

    def storage_failed(self, area: wire.StorageArea, error: StorageError) -> None:
        """Writing ``area`` failed: note it (log, status); the driver then tells the core."""


# Every action type of both cores -> (the effect that carries it out, the action's fields, passed
# in order). The dispatch, as data; the Protocols above give each effect's signature.
EFFECTS: dict[type, tuple[str, tuple[str, ...]]] = {
    cls: (name, tuple(field.name for field in dataclasses.fields(cls))) for cls, name in (
        (Send, "send"),
        # the primary's
        (ApplyLocal, "apply_local"),  # an errno back (not None) is passed to local_applied
        (AckHost, "ack_host"),
        (FlushLocal, "flush_local"),
        (PersistOutOfSync, "persist_out_of_sync"),
        (PersistGeneration, "persist_generation"),
        (LinkFailed, "link_failed"),  # both cores'
        (ResumeLater, "resume_later"),
        (BecomeSecondary, "become_secondary"),
        # the secondary's
        (JournalAppend, "journal_append"),
        (WriteData, "write_data"),
        (WriteRun, "write_run"),
        (ZeroData, "zero_data"),
        (SyncData, "sync_data"),
        (ResyncStarted, "resync_started"),
        (ResyncFinished, "resync_finished"),
        (HashExtents, "hash_extents"),
        (SaveUndo, "save_undo"),
        (CloseLink, "close_link"),
    )
}

_Core = TypeVar("_Core", bound=PrimaryCore | SecondaryCore)
_Effects = TypeVar("_Effects")


class _Driver(Generic[_Core, _Effects]):
    """The loop both drivers share: carry out the core's actions in order until it has none
    left, with re-entrant calls returning at once (see the module notes)."""

    def __init__(self, core: _Core, effects: _Effects) -> None:
        self.core: _Core = core
        self._effects: _Effects = effects
        self._running = False

    @property
    def running(self) -> bool:
        """Actions taken from the core are being carried out: anything sent or written now
        would overtake those of them still to come."""
        return self._running

    def __call__(self) -> bool:
        """Carry out actions until the core has none left; whether any was taken."""
        if self._running:
            return False
        self._running = True
        carried = False
        try:
            while actions := self.core.actions():
                carried = True
                self._carry_out(actions)
        finally:
            self._running = False
        return carried

    def _carry_out(self, actions: Sequence[Any]) -> None:
        raise NotImplementedError

    def _local_applied(self, seq: int, errno: int) -> None:
        raise NotImplementedError

    def _do(self, action: object) -> None:
        """Hand the action's fields, in order, to the effect ``EFFECTS`` names for its type."""
        try:
            name, fields = EFFECTS[type(action)]
        except KeyError:
            raise AssertionError(f"unknown action {action!r}") from None
        result = getattr(self._effects, name)(*[getattr(action, field) for field in fields])
        if result is not None and type(action) is ApplyLocal:
            self._local_applied(action.seq, result)


class PrimaryDriver(_Driver[PrimaryCore, PrimaryEffects]):
    """Carries out a ``PrimaryCore``'s actions through ``PrimaryEffects``."""

    def _carry_out(self, actions: Sequence[Any]) -> None:
        for action in actions:
            self._do(action)

    def _local_applied(self, seq: int, errno: int) -> None:
        self.core.local_applied(seq, errno)

    def write_hit(self, offset: int, data: bytes, now: float | None = None) -> int | None:
        """The core's hot path for a plain (non-FUA) host write (``PrimaryCore.write_hit``):
        None if it does not apply now, so the write goes through ``PrimaryCore.write``.
        Otherwise send, apply and return the errno for the host, in the order the actions of
        ``write()`` would have been carried out."""
        if self._running:
            return None
        message = self.core.write_hit(offset, data, now=now)
        if message is None:
            return None
        self._effects.send(message)
        # On a failure the core marks the extents out of sync and resyncs them.
        return self._applied(message, self._effects.apply_hit(message.seq, offset, data))


    def write_hits(self, writes: Sequence[tuple[int, bytes]], start: int = 0,
                   now: float | None = None) -> list[int]:
        """A group of plain host writes (``PrimaryCore.write_hits``): the errnos for the host
        of the leading run of ``writes[start:]`` that went as one message, sent, then applied
        locally in order; [] when the first is not a hit now. The caller takes the writes after
        the run through ``write_hit`` or ``PrimaryCore.write``, in order, as single writes.
        Every write of the run is applied before the core hears of any result: a failure makes
        it resync extents from this image at once, which must then hold every write of the
        run already sent."""
        if self._running:
            return []
        message, _ = self.core.write_hits(writes, start, now=now)
        if message is None:
            return []
        self._effects.send(message)
        apply = self._effects.apply_hit
        if not isinstance(message, wire.WriteBatch):
            return [self._applied(message, apply(message.seq, message.offset, message.data))]
        taken = message.writes
        errnos = [apply(w.seq, w.offset, w.data) for w in taken]
        if any(errnos):
            for write, errno in zip(taken, errnos, strict=True):
                self.core.hit_applied(write.seq, errno, write.offset, len(write.data))
            self()
        else:
            self.core.hits_applied(taken[0].seq, taken[-1].seq)
        return errnos

    def _applied(self, message: wire.Write, errno: int) -> int:
        """``write_hit``'s end: tell the core, and carry out what a failure leaves."""
        if errno:
            self.core.hit_applied(message.seq, errno, message.offset, len(message.data))
            self()
        else:
            self.core.hit_applied(message.seq)
        return errno


class SecondaryDriver(_Driver[SecondaryCore, SecondaryEffects]):
    """Carries out a ``SecondaryCore``'s actions through ``SecondaryEffects``."""

    def write_now(self, message: wire.Write, now: float | None = None) -> bool:
        """The secondary's hot path (``SecondaryCore.write_now``): a WRITE with nothing queued
        before it is taken at once (the frame counts for the link timeout as of ``now``),
        held by the core in a run of adjacent writes; when it ends the run before it, that run
        is written now. False: hand the message to ``SecondaryCore.receive``, which counts it."""
        if self._running:
            return False
        ended = self.core.write_now(message, now=now)
        if ended is True or ended is False:
            return ended
        if len(ended) == 1:  # most zipf writes: no neighbour in the pass (``_write_run``, inline)
            write = ended[0]
            try:
                self._effects.write_data(write.offset, write.data, write.seq)
            except StorageError as exc:
                self.storage_failed(wire.StorageArea.IMAGE, exc, (as_action(ended),))
        else:
            self._write_run(ended)
        return True

    def end_of_batch(self) -> None:
        """The adapter fed the core everything one read brought: the run it holds is written
        now, straight from here as in ``write_now`` rather than as an action, ahead of the
        APPLIED the core queues (``SecondaryCore.end_of_batch_run``)."""
        if self._running:
            self.core.end_of_batch()
            return
        if ended := self.core.end_of_batch_run():
            self._write_run(ended)

    def _write_run(self, ended: list[wire.Write]) -> None:
        """Write a run that left the core (counted applied), as its actions would."""
        try:
            if len(ended) == 1:
                write = ended[0]
                self._effects.write_data(write.offset, write.data, write.seq)
            else:
                self._effects.write_run(tuple(ended))
        except StorageError as exc:
            self.storage_failed(wire.StorageArea.IMAGE, exc, (as_action(ended),))

    def storage_failed(self, area: wire.StorageArea, error: StorageError,
                       unfinished: Sequence[SecondaryAction] = ()) -> None:
        """Writing ``area`` failed (an action, a journal commit, an image sync): the core drops
        what was not carried out and ends the session. The caller pumps afterwards."""
        self._effects.storage_failed(area, error)
        self.core.storage_failed(area, error.errno, str(error), unfinished)

    def _carry_out(self, actions: Sequence[SecondaryAction]) -> None:
        for index, action in enumerate(actions):
            try:
                self._do(action)
            except (StorageError, OSError) as exc:
                area = AREA_OF.get(type(action), wire.StorageArea.IMAGE)
                error = (exc if isinstance(exc, StorageError)
                         else StorageError.from_os(f"writing the {area.label} failed", exc))
                self.storage_failed(area, error, actions[index:])
                return
