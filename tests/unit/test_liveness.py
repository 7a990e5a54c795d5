"""replication/liveness.py: the heartbeat and the link timeout, with time passed in."""

from __future__ import annotations

import pytest

from foresync.replication.liveness import Due, Liveness


def test_no_deadline_and_nothing_due_without_a_session() -> None:
    liveness = Liveness(1.0, 10.0, pings=True)
    assert liveness.deadline() is None
    assert liveness.due(1e6) is Due.NOTHING


def test_a_ping_is_due_every_heartbeat() -> None:
    liveness = Liveness(1.0, 10.0, pings=True)
    liveness.start(100.0)
    assert liveness.deadline() == 101.0
    assert liveness.due(100.999) is Due.NOTHING
    assert liveness.due(101.0) is Due.PING  # exactly at the deadline it gave: no spinning
    assert liveness.due(101.0) is Due.NOTHING  # once
    assert liveness.deadline() == 102.0
    assert liveness.due(102.5) is Due.PING
    assert liveness.deadline() == 103.5  # a late timer does not bunch up pings


def test_the_listening_side_never_pings() -> None:
    liveness = Liveness(1.0, 10.0, pings=False)
    liveness.start(0.0)
    assert liveness.deadline() == 10.0
    assert liveness.due(5.0) is Due.NOTHING


def test_the_timeout_fires_once_with_the_reason_operators_know() -> None:
    liveness = Liveness(1.0, 10.0, pings=True)
    liveness.start(0.0)
    for now in (1.0, 2.0, 9.0):
        assert liveness.due(now) is Due.PING
    assert liveness.deadline() == 10.0  # the next ping would be at 10 too: the timeout is what counts
    assert liveness.due(10.0) is Due.DEAD
    assert liveness.silence_reason("secondary") == "no frame from the secondary for 10 s"
    assert not liveness.active and liveness.deadline() is None
    assert liveness.due(20.0) is Due.NOTHING  # said once; stopped until the next session


def test_a_frame_postpones_the_timeout() -> None:
    liveness = Liveness(1.0, 10.0, pings=False)
    liveness.start(0.0)
    liveness.frame_received(7.0)
    assert liveness.deadline() == 17.0
    assert liveness.due(16.9) is Due.NOTHING
    assert liveness.due(17.0) is Due.DEAD


def test_stop_ends_the_session_and_start_begins_afresh() -> None:
    liveness = Liveness(1.0, 2.5, pings=False)
    liveness.start(0.0)
    liveness.stop()
    assert liveness.deadline() is None and liveness.due(100.0) is Due.NOTHING
    liveness.start(200.0)
    assert liveness.deadline() == 202.5
    assert liveness.silence_reason("primary") == "no frame from the primary for 2.5 s"


def test_the_deliberate_bug_ignores_frames() -> None:
    """faults.liveness_ignores_frames: a busy link times out (the simulator must catch it)."""
    liveness = Liveness(1.0, 10.0, pings=False, ignores_frames=True)
    liveness.start(0.0)
    liveness.frame_received(9.0)
    assert liveness.due(10.0) is Due.DEAD


def test_the_deliberate_bug_never_times_out() -> None:
    """faults.link_timeout_ignored: a stalled link stays up (the simulator's stall must catch it)."""
    liveness = Liveness(1.0, 10.0, pings=True, ignores_silence=True)
    liveness.start(0.0)
    assert liveness.due(1000.0) is Due.PING
    assert liveness.active and liveness.deadline() == 1001.0


@pytest.mark.parametrize(("heartbeat_s", "timeout_s"), [(0.0, 10.0), (1.0, 0.0), (-1.0, 10.0)])
def test_a_heartbeat_or_timeout_must_be_positive(heartbeat_s: float, timeout_s: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Liveness(heartbeat_s, timeout_s, pings=True)
