"""replication/out_of_sync.py: the out-of-sync set and its persistence handshake."""

from __future__ import annotations

import pytest

from foresync.errors import InvariantViolation
from foresync.replication.out_of_sync import OutOfSync, unsynced_extents

Persist = tuple[int, tuple[int, ...], bool]


def _oos() -> tuple[OutOfSync[str], list[Persist]]:
    persists: list[Persist] = []
    return OutOfSync(lambda token, extents, everything: persists.append((token, extents, everything))), persists


def test_a_write_waits_until_its_extents_are_durably_out_of_sync() -> None:
    oos, persists = _oos()
    assert oos.mark(range(2, 4), "w1")
    assert persists == [(1, (2, 3), False)]
    assert oos.persisted(1) == ["w1"]
    assert oos.durable == {2, 3}
    assert not oos.mark(range(3, 4), "w2")  # settled already: no wait, no persist
    assert len(persists) == 1


def test_a_persist_in_flight_that_dropped_an_extent_keeps_the_write_waiting() -> None:
    oos, persists = _oos()
    oos.mark(range(1, 2), "w1")  # token 1 holds {1}
    oos.discard(1)
    oos.persist()  # token 2 holds {} (a shrink written back)
    assert oos.mark(range(1, 2), "w2")  # token 3 holds {1}
    assert [(token, extents) for token, extents, _ in persists] == [(1, (1,)), (2, ()), (3, (1,))]
    assert oos.persisted(1) == []  # w1 and w2 wait: token 2 would drop extent 1
    assert oos.persisted(3) == ["w1", "w2"]  # supersedes 2


def test_a_resync_set_durable_there_covers_its_extents() -> None:
    oos, _ = _oos()
    oos.restore({5})
    assert oos.mark(range(6, 7), "w")
    assert oos.confirm(((6, 2),)) == ["w"]
    assert oos.extents == {5} and oos.dirty
    assert not oos.mark(range(7, 8), "x")  # within the confirmed set


def test_an_unknown_token_is_a_bug() -> None:
    oos, _ = _oos()
    with pytest.raises(InvariantViolation):
        oos.persisted(9)


def test_absorb_makes_the_failback_set_durable_and_keeps_everything() -> None:
    oos, persists = _oos()
    oos.absorb([1, 2], everything=True)
    assert oos.durable == {1, 2} and oos.everything
    oos.persist_if_dirty()
    assert persists == []
    oos.discard(2)
    oos.persist_if_dirty()
    assert persists == [(1, (1,), True)]


def test_unsynced_extents_joins_every_source() -> None:
    assert unsynced_extents({1}, (2,), [range(3, 5)], iter([9])) == {1, 2, 3, 4, 9}
