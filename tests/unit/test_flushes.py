"""replication/flushes.py: flush tickets, their waiters and the durability watermarks."""

from __future__ import annotations

from foresync.link import wire
from foresync.replication.flushes import Flushes


def _flushes() -> tuple[Flushes[str], list[int], list[wire.Message]]:
    tickets: list[int] = []
    sent: list[wire.Message] = []
    return Flushes(tickets.append, sent.append), tickets, sent


def test_a_ticket_covers_the_prefix_applied_when_issued() -> None:
    flushes, tickets, _ = _flushes()
    flushes.wait("fua-1", applied_prefix=5)
    flushes.wait("flush-2", applied_prefix=8)
    assert tickets == [1, 2]
    assert flushes.flushed(1) == ["fua-1"]
    assert flushes.local_durable == 5
    assert flushes.flushed(2) == ["flush-2"] and flushes.local_durable == 8


def test_a_later_ticket_completes_every_earlier_one() -> None:
    flushes, _, _ = _flushes()
    flushes.wait("a", 3)
    flushes.wait("b", 4)
    assert flushes.flushed(2) == ["a", "b"] and flushes.local_durable == 4


def test_a_failed_flush_releases_its_waiters_and_moves_no_watermark() -> None:
    flushes, _, _ = _flushes()
    flushes.wait("a", 3)
    assert flushes.failed(1) == ["a"]
    assert flushes.local_durable == 0
    assert flushes.flushed(1) == []  # nothing left to cover


def test_request_issues_only_when_something_is_not_covered() -> None:
    flushes, tickets, _ = _flushes()
    flushes.request(0)
    assert tickets == []
    flushes.request(4)
    flushes.request(4)  # ticket 1 already covers 4
    assert tickets == [1]
    flushes.flushed(1)
    flushes.request(4)
    assert tickets == [1]
    flushes.request(6)
    assert tickets == [1, 2]


def test_sync_is_asked_once_per_seq_and_reset_per_session() -> None:
    flushes, _, sent = _flushes()
    flushes.request_sync(3)
    flushes.request_sync(3)
    assert sent == [wire.Sync(3)]
    flushes.on_durable(3)
    flushes.request_sync(3)
    assert sent == [wire.Sync(3)] and flushes.remote_durable == 3
    flushes.session_reset()
    assert flushes.remote_durable == 0
    flushes.request_sync(3)
    assert sent == [wire.Sync(3), wire.Sync(3)]


def test_an_early_request_waits_for_the_one_in_flight_on_each_site() -> None:
    flushes, tickets, sent = _flushes()
    flushes.request_early(applied_prefix=2, last_seq=2)
    assert tickets == [1] and sent == [wire.Sync(2)]
    # Both in flight: later misses ask for nothing more (the answers come within a round trip).
    flushes.request_early(applied_prefix=5, last_seq=6)
    flushes.request_early(applied_prefix=7, last_seq=8)
    assert tickets == [1] and sent == [wire.Sync(2)] and flushes.early_skipped == 4
    # A DURABLE answers the SYNC, even one short of what was asked: the next miss asks again.
    flushes.on_durable(1)
    flushes.request_early(applied_prefix=7, last_seq=8)
    assert sent == [wire.Sync(2), wire.Sync(8)] and tickets == [1]
    flushes.flushed(1)
    flushes.request_early(applied_prefix=9, last_seq=None)  # the link is down: no SYNC
    assert tickets == [1, 2] and sent == [wire.Sync(2), wire.Sync(8)]


def test_the_timer_asks_whatever_an_early_request_left_in_flight() -> None:
    flushes, tickets, sent = _flushes()
    flushes.request_early(applied_prefix=2, last_seq=2)
    flushes.request(applied_prefix=4)  # the watermark timer: not held back by ticket 1
    flushes.request_sync(4)
    assert tickets == [1, 2] and sent == [wire.Sync(2), wire.Sync(4)]


def test_a_new_session_forgets_an_unanswered_sync() -> None:
    flushes, _, sent = _flushes()
    flushes.request_early(applied_prefix=0, last_seq=3)
    flushes.session_reset()  # the link dropped before DURABLE came
    flushes.request_early(applied_prefix=0, last_seq=3)
    assert sent == [wire.Sync(3), wire.Sync(3)]


def test_an_added_after_the_sync_counts_as_its_answer() -> None:
    """The secondary answers no SYNC that names only writes still waiting for its journal (it
    clamps the seq to what it has applied), so the ADDED of a write sent after the SYNC also
    lets the next early request ask again; one sent before it does not."""
    flushes, _, sent = _flushes()
    flushes.request_early(applied_prefix=0, last_seq=4)
    flushes.on_added(3)  # a miss sent before SYNC 4: no news of the SYNC
    flushes.request_early(applied_prefix=0, last_seq=5)
    assert sent == [wire.Sync(4)]
    flushes.on_added(4)
    flushes.request_early(applied_prefix=0, last_seq=5)
    assert sent == [wire.Sync(4), wire.Sync(5)] and flushes.remote_durable == 0
