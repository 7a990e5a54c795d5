"""The secondary's side of a resync pass: its journaled resync set, its progress and its end,
and the undo log that protects a consistent image meanwhile (claims 11-19).

These are ``SecondaryCore``'s methods (secondary.py), kept here as the mixin ``SecondaryResync``
(each takes the core as ``self``): they act on the core's journal appends, its effects waiting
in order (``_pending``) and its actions, as the rest of the core does. Pure, as the core is.

Resync (issue 19): a pass starts with RESYNC_SET, the extents it may change here outside the
record. They are journaled as one entry (runs, not one record slot each), and RESYNC_SET_DURABLE
goes back only once that entry is durable: only then may the primary stop counting them in its
own out-of-sync set. Every effect after it waits for the same commit, so no resync data lands
before the set that covers it is durable. The set is cleared at RESYNC_DONE, which the primary
sends once every extent of the pass is durable on both sites. RESYNC_DONE_ACK answers it once
the end is durable here: behind ``ResyncFinished`` (the adapter flushes the image and stores
the copy as consistent, so a restart no longer rolls the pass back) and the commit of the
clear. The primary reports in sync only at that answer. Meanwhile RESYNC_PROGRESS names
extents the pass is done with as of a seq; once that seq is durable here they leave the set
(RESYNC_SHRINK), so a WELCOME after a cut (RESUME) offers only what is left: the pass resumes
instead of comparing every extent again.

Undo (``protect_image``): before a pass's first change to an extent, SaveUndo has the adapter
append its old content to the undo log, durable with the next commit, which the change waits for.
SaveUndo goes out at once, unless an earlier write to that extent still waits in ``_pending``:
then it waits in order behind that write, and ``journal_target`` stops short of its count until
it has gone out, so no commit claims it before it was appended.

Resuming (``resumable``): a site offers the runs of its journaled resync set still to do (WELCOME
RESUME) only while its metadata is not in doubt and the primary does not say every extent may
differ on its side.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from foresync.errors import RemoteProtocolError
from foresync.faults import Faults
from foresync.journal import format as jfmt
from foresync.journal.format import RecordState
from foresync.link import wire
from foresync.record import runs as extent_runs
from foresync.record.predict import extents_of
from foresync.replication.actions import (
    ResyncFinished,
    SaveUndo,
    SecondaryAction,
    Send,
    WriteData,
    ZeroData,
)
from foresync.replication.set_progress import SetProgress


def resumable(hello: wire.Hello, metadata_in_doubt: bool) -> bool:
    """Whether this site may offer to resume an interrupted pass (SessionFacts.resume): not
    while its metadata is in doubt, nor when the primary's HELLO says every extent may differ
    on its side (it then compares every extent, and wants every checksum)."""
    return not metadata_in_doubt and not hello.flags & wire.HelloFlag.EVERYTHING_OUT_OF_SYNC


class _Core(Protocol):
    """What the resync handling uses of ``SecondaryCore`` (mypy checks the core against it)."""

    faults: Faults
    state: RecordState
    extent_count: int
    extent_size: int
    applied_seq: int
    durable_seq: int
    failed: bool
    resyncing: bool
    protect_image: bool
    failed_extents: set[int]
    _appended: int
    _actions: list[SecondaryAction]
    _pending: deque[tuple[int, int, SecondaryAction | None]]
    _deferred_saves: deque[int]
    _undo_saved: dict[int, int]
    _progress: SetProgress
    _generations: tuple[int, ...]

    def _append(self, entry: bytes) -> None: ...
    def _effect(self, needs: int, seq: int, effect: SecondaryAction) -> None: ...
    def _reply_after(self, needs: int, seq: int, reply: wire.Message) -> None: ...
    def _synced_or_pending(self) -> int: ...
    def _want_sync(self, seq: int) -> None: ...
    def _check_runs(self, runs: extent_runs.Runs, what: str) -> None: ...
    def _shrink_durable(self) -> None: ...
    def _pending_touches(self, extent: int) -> bool: ...


class SecondaryResync:
    """``SecondaryCore``'s resync and undo handling (see the module notes)."""

    def _on_resync_set(self: _Core, set_id: int, runs: tuple[tuple[int, int], ...]) -> None:
        self._check_runs(runs, "RESYNC_SET")
        added = extent_runs.normalise(runs)
        self._progress.readded(added)  # an earlier progress must not take them out again
        self.state.resync = extent_runs.union(self.state.resync, added)
        self._append(jfmt.encode_resync_set(added))
        self._reply_after(self._appended, self.applied_seq + 1, wire.ResyncSetDurable(set_id))

    def _on_resync_progress(self: _Core, seq: int, runs: extent_runs.Runs) -> None:
        self._check_runs(runs, "RESYNC_PROGRESS")
        if self.state.resync:
            self._progress.add(seq, runs)
            self._shrink_durable()

    def _on_resync_done(self: _Core, seq: int) -> None:
        # In order behind every effect before it, and reported once a data sync
        # covers seq (the adapter waits for that before marking the image consistent).
        # The primary sends it once the whole pass is durable on both sites, so the
        # resync set may go (a lost clear only leaves it larger).
        self._progress.clear()
        if self.state.resync:
            self.state.resync = ()
            self._append(jfmt.encode_resync_clear())
        self._effect(self._synced_or_pending(), seq, ResyncFinished(seq, self._generations))
        # The end is durable here once ResyncFinished is carried out (in order before
        # this) and the clear is committed: only then may the primary say in sync.
        self._effect(self._appended, self.applied_seq + 1, Send(wire.ResyncDoneAck(seq)))
        self.resyncing = False
        self._undo_saved.clear()
        self.failed_extents.clear()  # the pass rewrote them, and a failure ends it early
        self._want_sync(seq)

    def _check_runs(self: _Core, runs: extent_runs.Runs, what: str) -> None:
        for first, count in runs:
            if count < 1 or first + count > self.extent_count:
                raise RemoteProtocolError(f"{what} run of extents {first}+{count} is outside the volume")

    def _shrink_durable(self: _Core) -> None:
        """RESYNC_PROGRESS whose seq is durable here: those extents hold the primary's data
        durably, so they leave the journaled resync set (not forcing a commit: a lost shrink only
        leaves the set larger). An interrupted pass then resumes without them."""
        done = self._progress.durable(self.durable_seq)
        if not done or self.failed:
            return
        left = extent_runs.difference(self.state.resync, done)
        if left != self.state.resync:
            self.state.resync = left
            self._append(jfmt.encode_resync_shrink(done))

    def _save_undo(self: _Core, offset: int, length: int, seq: int) -> int:
        """During a resync pass, save each extent's old content before its first change.

        The save reads the image as it is when carried out, so it must not overtake an earlier
        write to that extent still waiting for a commit (one that came before the pass's first
        resync write, or behind its RESYNC_SET): the rollback would then take that write back
        too, and leave an image that is no prefix of the primary's, missing a write that may
        have been acknowledged. Such a save waits in order behind it (``_deferred_saves``)."""
        if not (self.resyncing and self.protect_image):
            return 0
        for extent in extents_of(offset, length, self.extent_size):
            if extent not in self._undo_saved:
                self._appended += 1
                self._undo_saved[extent] = self._appended
                if self._pending_touches(extent) and not self.faults.undo_saved_before_earlier_write:
                    # the seq of the write it protects: the watermark (_start_sync) stops short
                    self._pending.append((self._pending[-1][0], seq, SaveUndo(extent)))
                    self._deferred_saves.append(self._appended)
                else:
                    self._actions.append(SaveUndo(extent))
        if self.faults.undo_not_synced_before_write:
            return 0  # deliberately wrong: see faults.py
        return self._appended

    def _pending_touches(self: _Core, extent: int) -> bool:
        """Whether an image effect waiting in ``_pending`` writes to ``extent``."""
        es = self.extent_size
        for _, _, effect in self._pending:
            if isinstance(effect, WriteData):
                first, end = effect.offset, effect.offset + len(effect.data)
            elif isinstance(effect, ZeroData):
                first, end = effect.offset, effect.offset + effect.length
            else:
                continue
            if first < (extent + 1) * es and end > extent * es:
                return True
        return False
