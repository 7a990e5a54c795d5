"""The secondary's side of a primary's session: from a HELLO admitted to the connection's end.

These are ``SecondaryCore``'s methods (secondary.py), kept here as the mixin ``SecondarySession``
(each takes the core as ``self``, typed by what it uses of it, ``_Core``). Pure, as the core is.

The site's own facts for a session (flags, stale extents, epoch, checksums, undo) come with
``session_started`` once the adapter admitted the HELLO. For a full sync the adapter then hashes
the image in chunks, while the session runs, and streams them (``send_checksums``) behind the
WELCOME. The primary's data generations (from the HELLO) go out with RESYNC_DONE's
``ResyncFinished``: only once a pass has brought their data may this copy claim them
(epochs.py), so a promotion before that is a split brain, not a failback.

A new connection (``session_reset``): replies meant for the old one never reach the new one,
but every image effect still happens, in order. What the old connection asked and was not yet
answered is forgotten (a SYNC ahead: the new one asks afresh; RESYNC_PROGRESS not yet durable:
the resync set stays larger; ranges answered early: they stay pending, and the next WELCOME
reports them), which only ever leaves more to do.

Liveness (liveness.py): from ``session_reset`` (a primary's HELLO admitted) to ``session_ended``
(the connection closed), every frame from the primary counts, the hot path's included; a primary
silent for ``timeout_s`` (it PINGs every heartbeat) is gone: ``handle_timer`` ends the link with
``LinkFailed`` ("no frame from the primary for 10 s").

A failed write (a full disk, an I/O error: ``storage_failed``) ends the session. The effects not
carried out are dropped, never half-acknowledged: no reply, APPLIED or DURABLE goes out after the
failure, the primary is told with STORAGE_FAILED and the link is closed, and what the dropped or
failed writes touched is reported as stale at the next WELCOME. Every such extent is also covered
without that: in the durable record (a hit, or a miss whose ADD was committed before its data),
or in the primary's out-of-sync set (a miss or range never answered, or anything not yet durable
here in async mode). Until the next connection nothing the primary sends is acted on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from foresync.faults import Faults
from foresync.journal.format import RecordState
from foresync.link import wire
from foresync.record import runs as extent_runs
from foresync.record.predict import extents_of
from foresync.replication.actions import (
    CloseLink,
    HashExtents,
    JournalAppend,
    SecondaryAction,
    Send,
    SyncData,
    WriteData,
    WriteRun,
    ZeroData,
)
from foresync.replication.liveness import Liveness
from foresync.replication.set_progress import SetProgress
from foresync.replication.write_runs import as_action


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the site knows of itself when a primary's HELLO is admitted (``session_started``):
    they go into the WELCOME and decide how this session protects the image."""

    welcome_flags: int = 0  # wire.WelcomeFlag bits: a new or inconsistent copy
    stale: tuple[int, ...] = ()  # extents to resync beyond the record (site.json)
    epoch: int = 1  # the WELCOME's epoch (site.json's, after adopting the primary's lineage)
    checksums: bool = False  # a full sync: CHECKSUMS of every extent follow the WELCOME
    # an interrupted pass may resume over what is left of the journaled resync set (WELCOME
    # RESUME), if there is one: the metadata is not in doubt
    resume: bool = False
    protect_image: bool = False  # the image is consistent: keep undo during a resync


class _Core(Protocol):
    """What the session handling uses of ``SecondaryCore`` (mypy checks the core against it)."""

    faults: Faults
    state: RecordState
    volume_id: bytes
    extent_count: int
    extent_size: int
    now: float
    # the session's facts (``session_started``) and state
    welcome_flags: int
    stale: tuple[int, ...]
    epoch: int
    checksums: bool
    protect_image: bool
    resume: bool
    checksum_runs: extent_runs.Runs
    greeted: bool
    failed: bool
    split_brain: bool
    storage_errors: int
    failed_extents: set[int]
    _liveness: Liveness
    _earlier_needs: int
    _reported_applied: int
    # what is waiting, in order, for the journal, the data sync or the adapter
    _actions: list[SecondaryAction]
    _pending: deque[tuple[int, int, SecondaryAction | None]]
    _synced: int
    _run: list[wire.Write]
    _sync_inflight: int
    _sync_ahead: int
    _await_durable: deque[tuple[int, wire.Message]]
    _answered_early: set[int]
    _ranges_done_later: list[int]
    _progress: SetProgress
    # the resync pass's undo (secondary_resync.py)
    resyncing: bool
    _undo_saved: dict[int, int]
    _deferred_saves: deque[int]

    def _issue_run(self) -> None: ...
    def _end_run(self) -> list[wire.Write]: ...
    def _effect(self, needs: int, seq: int, effect: SecondaryAction) -> None: ...


class SecondarySession:
    """``SecondaryCore``'s session handling (see the module notes)."""

    def session_started(self: _Core, facts: SessionFacts) -> None:
        """A primary's HELLO was admitted: the site's facts for this session's WELCOME."""
        self.welcome_flags = facts.welcome_flags
        self.stale = facts.stale
        self.epoch = facts.epoch
        self.checksums = facts.checksums
        self.protect_image = facts.protect_image
        # Resume only from a journaled set: an empty one may also mean it was never written.
        self.resume = facts.resume and bool(facts.welcome_flags) and bool(self.state.resync)
        everything: extent_runs.Runs = ((0, self.extent_count),) if self.extent_count else ()
        self.checksum_runs = ((self.state.resync if self.resume else everything)
                              if facts.checksums else ())

    @property
    def earlier_session_landed(self: _Core) -> bool:
        """Whether every image effect of an earlier session is carried out (released to the
        adapter): only then may a full sync's checksums be taken (checksums.py)."""
        return self._synced >= self._earlier_needs

    def send_checksums(self: _Core, first: int, hashes: tuple[int, ...]) -> None:
        """The adapter hashed extents ``first``.. of the image as it is now (every write applied
        so far, and any mix of those landing while it read: each byte then either holds what the
        primary has now or is overwritten by a write still on the ordered stream). They go out in
        order after the WELCOME, never before it."""
        if self._run:
            self._issue_run()
        if not self.greeted or self.failed or not self.checksums:
            return  # that session is over (the adapter's hashing stops with its connection)
        self._effect(0, 0, Send(wire.Checksums(first, hashes)))

    def restart_record(self: _Core, state: RecordState) -> None:
        """The adapter started a new record journal (``resolve --discard-local``): its state."""
        self.state = state

    def adopt_volume(self: _Core, volume_id: bytes) -> None:
        """A new secondary took its first primary's volume identity (admission.py)."""
        self.volume_id = volume_id

    def split_brain_seen(self: _Core, seen: bool) -> None:
        """A primary's lineage diverged from ours (True), or an operator discarded this site's
        changes, or a primary was admitted (False)."""
        self.split_brain = seen

    def resync_finished(self: _Core) -> None:
        """The adapter stored the end of a resync pass: this copy is consistent, so the next
        session's WELCOME reports it as such."""
        self.welcome_flags = 0

    def session_reset(self: _Core, *, now: float | None = None) -> None:
        """A new primary connection: replies meant for the old one must not reach the new one,
        but every image effect still happens, in order. Its first frame is due within
        ``timeout_s`` (liveness.py)."""
        if now is not None:
            self.now = now
        if self._run:
            self._issue_run()  # written in order, whoever hears of them (see above)
        self._liveness.start(self.now)
        # HASHES answer the old connection's VERIFY too: the new one never asked (issue 13).
        kept: deque[tuple[int, int, SecondaryAction | None]] = deque(
            (needs, seq, None if isinstance(effect, Send | HashExtents) else effect)
            for needs, seq, effect in self._pending)
        self._pending = kept
        self._earlier_needs = self._pending[-1][0] if self._pending else 0
        self._progress.clear()  # the old connection's: the set stays larger
        self._await_durable.clear()
        self._sync_ahead = 0  # the old connection's SYNC: the new one asks afresh
        # They stay pending: the next WELCOME reports them, and the primary resyncs them and
        # reports them done once that is durable here, which makes their zeroing moot.
        self._answered_early.clear()
        self._ranges_done_later.clear()
        self._reported_applied = 0
        self.greeted = False
        self.failed = False

    def session_ended(self: _Core) -> None:
        """The connection to the primary closed: no link timeout until the next session."""
        self._liveness.stop()

    def frame_received(self: _Core, now: float) -> None:
        """A frame the adapter handled without ``receive`` (a PING answered while the WELCOME's
        checksums are computed): the primary is alive."""
        self.now = now
        self._liveness.frame_received(now)

    def storage_failed(self: _Core, area: wire.StorageArea, errno: int, detail: str,
                       unfinished: Sequence[SecondaryAction] = ()) -> None:
        """Carrying out an action failed, or a journal commit or data sync did: a full disk, an
        I/O error. ``unfinished`` are the actions taken from ``actions()`` and not carried out,
        the failed one first; the adapter carries out none of them. Everything else not yet
        carried out is dropped too, and the session ends (see the module notes)."""
        self.storage_errors += 1
        if self.faults.secondary_write_error_ignored:
            return  # deliberately wrong: see faults.py
        held = [as_action(self._end_run())] if self._run else []
        dropped = [*unfinished, *(effect for _, _, effect in self._pending if effect is not None),
                   *self._actions, *held]
        journal: list[SecondaryAction] = []
        for action in dropped:
            match action:
                case WriteData(offset, data):
                    self.failed_extents.update(extents_of(offset, len(data), self.extent_size))
                case WriteRun(writes):
                    for write in writes:
                        self.failed_extents.update(extents_of(write.offset, len(write.data),
                                                              self.extent_size))
                case ZeroData(offset, length):
                    self.failed_extents.update(extents_of(offset, length, self.extent_size))
                case SyncData():
                    self._sync_inflight = 0  # never started: a later sync covers its writes
                case JournalAppend():
                    # Kept: the record here already changed, and a commit the count covers must
                    # make it durable (an ADD only widens what may differ; a REMOVE was earned).
                    journal.append(action)
        self._pending.clear()
        self._deferred_saves.clear()
        self._actions = journal
        self._await_durable.clear()
        # An undo entry no commit has covered may be lost (the undo log cuts back to its last
        # good sync): save those extents again before their next write; their writes waited
        # for that commit, so none landed. Keep the durable ones, or every retry would save the
        # whole pass again. Persist "inconsistent" again before the next resync write (a no-op
        # if that is on disk already).
        self.resyncing = False
        self._undo_saved = {e: n for e, n in self._undo_saved.items() if n <= self._synced}
        reason = f"could not write its {area.label}: {detail}"
        if self.greeted and not self.failed:
            self._actions.append(Send(wire.StorageFailed(area, errno, detail)))
        self.failed = True
        self.greeted = False
        self._actions.append(CloseLink(reason))
