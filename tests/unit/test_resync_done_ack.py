"""Issue 25: the end of a resync pass, and SYNCs that name writes not yet at the secondary.

1. The primary reports in sync only at RESYNC_DONE_ACK, which the secondary sends once the pass's
   end is durable there (ResyncFinished carried out: the image flushed and the copy stored as
   consistent, and the clear of its resync set committed). Before, the primary counted itself in
   sync as it sent RESYNC_DONE, and a secondary stopped in that window rolled the pass back.
2. A SYNC naming writes the secondary has not applied yet is remembered and answered with a
   DURABLE once they are; before, it was clamped to what was applied and the rest never answered.

The cores are driven directly, and through the replication harness of test_replication_cores.py
(imported as a module, so that its tests are not collected twice).
"""

from __future__ import annotations

import pytest
import test_replication_cores as rc

from foresync.errors import RemoteProtocolError
from foresync.faults import NO_FAULTS, Faults
from foresync.journal import format as jfmt
from foresync.journal.format import RecordState
from foresync.link import wire
from foresync.link.wire import WriteFlag
from foresync.replication import secondary as score
from foresync.replication.secondary import SecondaryCore

VOLUME = rc.VOLUME
EXTENT = 16
SIZE = 10 * EXTENT


def _secondary(state: RecordState | None = None, faults: Faults = NO_FAULTS) -> SecondaryCore:
    core = SecondaryCore(SIZE, EXTENT, 0, VOLUME, state or RecordState(), faults=faults)
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, SIZE, EXTENT, 1))
    core.journal_synced(core.journal_target())
    core.actions()  # the WELCOME
    return core


def _sent(actions: list[score.Action]) -> list[wire.Message]:
    return [a.message for a in actions if isinstance(a, score.Send)]


# -- the secondary: RESYNC_DONE_ACK only once the end is durable -----------------------------------


def test_the_secondary_answers_resync_done_only_after_recording_it_and_committing_the_clear() -> None:
    core = _secondary(RecordState(resync=((2, 3),)))
    core.receive(wire.ResyncDone(0))
    actions = core.actions()
    assert score.JournalAppend(jfmt.encode_resync_clear()) in actions
    finished = [a for a in actions if isinstance(a, score.ResyncFinished)]
    assert finished, "the end is stored at once (nothing waits in front of it)"
    assert wire.ResyncDoneAck(0) not in _sent(actions), "the clear is not committed yet"
    assert core.needs_journal_sync()
    core.journal_synced(core.journal_target())
    assert _sent(core.actions()) == [wire.ResyncDoneAck(0)]


def test_the_answer_follows_the_stored_end_when_effects_wait_in_front_of_it() -> None:
    """Carried out in order: a miss still waiting for its commit holds ResyncFinished, and the
    answer goes only after it (the adapter flushes and stores the copy consistent there)."""
    core = _secondary(RecordState(resync=((0, 10),)))
    core.receive(wire.Write(1, 0, int(WriteFlag.MISS), 1, (), b"m" * EXTENT))
    core.receive(wire.ResyncDone(1))
    first = core.actions()
    assert not [a for a in first if isinstance(a, score.ResyncFinished | score.WriteData)]
    core.journal_synced(core.journal_target())
    kinds = [type(a).__name__ if not isinstance(a, score.Send) else type(a.message).__name__
             for a in core.actions()]
    assert kinds.index("ResyncFinished") < kinds.index("ResyncDoneAck")
    assert kinds.index("WriteData") < kinds.index("ResyncFinished")


def test_a_storage_failure_before_the_end_is_stored_sends_no_answer() -> None:
    core = _secondary(RecordState(resync=((0, 2),)))
    core.receive(wire.ResyncDone(0))
    actions = core.actions()
    finished = [a for a in actions if isinstance(a, score.ResyncFinished)]
    core.storage_failed(wire.StorageArea.METADATA, 28, "site.json", finished)
    core.journal_synced(core.journal_target())
    assert wire.ResyncDoneAck(0) not in _sent(core.actions())


def test_the_secondary_refuses_a_resync_done_ack() -> None:
    core = _secondary()
    with pytest.raises(RemoteProtocolError, match="ResyncDoneAck"):
        core.receive(wire.ResyncDoneAck(1))


# -- the primary: in sync only at the answer ---------------------------------------------------------


def _pass_to_resync_done(h: rc.Harness) -> None:
    """Connect and run the pass until the primary has sent RESYNC_DONE (not delivered)."""
    rc._primary_restarted_with_out_of_sync(h, range(0, 4))
    h.connect()
    for _ in range(20):
        if any(isinstance(m, wire.ResyncDone) for m in h.peek_to_secondary()):
            return
        while not any(isinstance(m, wire.ResyncDone) for m in h.peek_to_secondary()) and (
                h.deliver_to_secondary() or h.commit_start() or h.commit_done()
                or h.data_sync_done() or h.deliver_to_primary() or h.flush_done()
                or h.oos_done() or h.complete_apply()):
            pass
        h.timer()
    raise AssertionError("RESYNC_DONE never went")


def test_the_primary_is_in_sync_only_once_the_secondary_answers_resync_done() -> None:
    h = rc.Harness(capacity=2, lookahead=0, extents=6)
    _pass_to_resync_done(h)
    assert not h.primary.statistics().in_sync, "RESYNC_DONE sent, not yet recorded there"
    h.deliver_to_secondary()
    while h.commit_start() or h.commit_done() or h.data_sync_done():
        pass
    assert wire.ResyncDoneAck in {type(m) for m in h.peek_to_primary()}
    assert not h.primary.statistics().in_sync, "the answer is still on its way"
    h.settle()
    h.check_quiescent()  # in sync, images equal, the secondary's set cleared
    assert h.committed_state.resync == ()


def test_a_link_drop_before_the_answer_leaves_the_primary_out_of_sync() -> None:
    """The answer never comes (the secondary stopped, or the link dropped): the pass stays
    open, and the next connection runs another one before reporting in sync."""
    h = rc.Harness(capacity=2, lookahead=0, extents=6)
    _pass_to_resync_done(h)
    h.to_s.clear()  # RESYNC_DONE lost with the link
    h.primary.disconnected("cut")
    h.pump()
    assert h.primary._resync.active and not h.primary.statistics().in_sync
    h.secondary.session_reset()
    h.connect()
    h.settle()
    h.check_quiescent()


def test_the_deliberate_bug_reports_in_sync_as_resync_done_goes() -> None:
    """faults.in_sync_before_resync_done_durable: the simulator's invariant 16 must catch it."""
    h = rc.Harness(capacity=2, lookahead=0, extents=6,
                   faults=Faults(in_sync_before_resync_done_durable=True))
    _pass_to_resync_done(h)
    assert h.primary.statistics().in_sync  # the lie: the secondary has not even read it
    h.settle()
    h.check_quiescent()  # the late answer is ignored, not an error


def test_an_unasked_resync_done_ack_is_a_protocol_error() -> None:
    h = rc.Harness()
    h.connect()
    with pytest.raises(RemoteProtocolError, match="without a RESYNC_DONE"):
        h.primary.receive(wire.ResyncDoneAck(0))


# -- SYNC beyond what the secondary applied --------------------------------------------------------


def _sync_then_miss(core: SecondaryCore) -> list[wire.Message]:
    """The primary's early request: SYNC(2) goes just before the miss that is seq 2."""
    core.receive(wire.Write(1, 0, 0, 0, (), b"a" * EXTENT))
    core.receive(wire.Sync(2))
    sent: list[wire.Message] = []
    for action in core.actions():
        if isinstance(action, score.SyncData):
            core.data_synced(action.through)
    sent += _sent(core.actions())
    core.receive(wire.Write(2, EXTENT, int(WriteFlag.MISS), 1, (), b"b" * EXTENT))
    for _ in range(4):
        core.journal_synced(core.journal_target())
        actions = core.actions()
        sent += _sent(actions)
        for action in actions:
            if isinstance(action, score.SyncData):
                core.data_synced(action.through)
        sent += _sent(core.actions())
    return sent


def test_a_sync_naming_a_write_not_yet_here_is_answered_once_that_write_lands() -> None:
    core = _secondary()
    sent = _sync_then_miss(core)
    assert wire.Added(2, (1,)) in sent
    durable = [m.seq for m in sent if isinstance(m, wire.Durable)]
    assert durable and max(durable) >= 2, f"SYNC(2) never answered: {sent}"
    assert core.quiet


def test_the_deliberate_bug_leaves_such_a_sync_unanswered() -> None:
    """faults.sync_beyond_applied_dropped (the old clamp): the simulator's invariant 17 must
    catch it. Only a timer tick would make seq 2 durable."""
    core = _secondary(faults=Faults(sync_beyond_applied_dropped=True))
    sent = _sync_then_miss(core)
    assert all(m.seq < 2 for m in sent if isinstance(m, wire.Durable))
    assert core.quiet and core.applied_seq == 2


def test_a_sync_for_an_old_connection_is_forgotten_at_a_new_one() -> None:
    core = _secondary()
    core.receive(wire.Sync(5))
    core.actions()
    core.session_reset()
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, SIZE, EXTENT, 1))
    core.actions()
    assert core.write_now(wire.Write(5, 0, 0, 0, (), b"x")), "the hot path is open again"


def test_the_hot_path_steps_aside_while_a_sync_waits_for_its_writes() -> None:
    core = _secondary()
    core.receive(wire.Sync(3))
    core.actions()
    assert not core.write_now(wire.Write(1, 0, 0, 0, (), b"x"))
    core.receive(wire.Write(1, 0, 0, 0, (), b"x"))
    core.receive(wire.Write(3, EXTENT, 0, 0, (), b"y"))
    assert score.SyncData(3) in core.actions()
    core.data_synced(3)
    assert wire.Durable(3) in _sent(core.actions())
    assert core.write_now(wire.Write(4, 0, 0, 0, (), b"z"))
