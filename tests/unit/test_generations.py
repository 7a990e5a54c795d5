"""replication/generations.py: a cut-off primary's new data generation, stored first."""

from __future__ import annotations

import pytest

from foresync.errors import InvariantViolation
from foresync.replication.epochs import Lineage
from foresync.replication.generations import Generations
from foresync.replication.lease import Action, LeaseCore, Local, Outdated, Record, Seen


def _generations(fresh: bool = False) -> tuple[Generations[str], list[tuple[int, Lineage]]]:
    persists: list[tuple[int, Lineage]] = []
    ids = iter(range(77, 100))
    generations: Generations[str] = Generations(Lineage((1,), (1,)), lambda: next(ids),
                                                lambda token, lineage: persists.append((token, lineage)))
    generations.fresh = fresh
    return generations, persists


def test_a_write_the_secondary_may_lack_opens_one_generation_and_waits_for_it() -> None:
    generations, persists = _generations()
    generations.open()
    generations.open()  # the same cut: one generation
    assert persists == [(1, Lineage((1,), (1, 77)))]
    assert generations.storing and generations.lineage == Lineage((1,), (1,))
    generations.hold("flush #4")
    assert generations.persisted(1) == ["flush #4"]
    assert not generations.storing and generations.lineage == Lineage((1,), (1, 77))
    generations.open()  # still cut off: the secondary never saw generation 77
    assert len(persists) == 1


def test_a_hello_makes_the_newest_generation_one_the_secondary_may_hold() -> None:
    generations, persists = _generations(fresh=True)
    generations.open()
    assert not persists  # fresh: the secondary has never seen it, nothing new to start
    generations.greeting()
    generations.open()
    assert persists == [(1, Lineage((1,), (1, 77)))]


def test_an_unknown_token_is_a_bug() -> None:
    generations, _ = _generations()
    with pytest.raises(InvariantViolation):
        generations.persisted(1)  # nothing is being stored
    generations.open()
    with pytest.raises(InvariantViolation):
        generations.persisted(2)


def test_claimed_only_between_a_resync_done_and_the_next_generation() -> None:
    """[cluster] clears the ``outdated`` mark only while the secondary holds our whole lineage:
    never at start, never once a generation was started, nor when one stored after a greeting."""
    generations, _ = _generations()
    assert not generations.claimed, "at start this process does not know what it holds"
    generations.greeting()
    assert generations.claimed
    generations.open()  # a write it may lack: the mark is written again before it is answered
    assert not generations.claimed
    generations.greeting()  # RESYNC_DONE while generation 77 was still being stored
    generations.persisted(1)
    assert not generations.claimed, "the secondary claimed the lineage without 77"


def test_a_resync_done_while_a_generation_is_stored_claims_nothing() -> None:
    """The daemon (daemon/primary.py) marks the secondary outdated for generation 77, then stores
    it; a failed store is retried later without a second mark. A pass ending meanwhile (the link
    came back) must not make the secondary's lineage claimed: the mark would be cleared while 77,
    whose writes are answered once it is stored, is on no secondary (the old code set it)."""
    generations, persists = _generations()
    generations.open()  # cut off: 77 is being stored, its mark in etcd first
    generations.greeting()  # RESYNC_DONE of a pass that began with a HELLO without 77
    assert generations.storing
    assert not generations.claimed, "claimed while 77 was still being stored"
    generations.persisted(1)  # the retried store succeeds: the held writes are answered alone
    assert not generations.claimed
    generations.greeting()  # a later pass: nothing being stored, the whole lineage is claimed
    assert generations.claimed
    assert persists == [(1, Lineage((1,), (1, 77)))]


def test_the_lease_keeps_the_mark_of_a_generation_being_stored() -> None:
    """The same window seen by the lease core (replication/lease.py) as the daemon feeds it
    (daemon/cluster.py ``local_of``): no CLEAR_OUTDATED while the marked generation is stored."""
    generations, _ = _generations()
    generations.open()
    generations.greeting()
    core = LeaseCore("a", 12.0)
    core.local_changed(Local("primary", 1, 1, generations=generations.lineage.data,
                             peer_holds_ours=generations.claimed))
    core.observed(Seen(Record("a", 1, 1), None))
    core.granted(0.0, 12.0)
    core.observed(Seen(Record("a", 1, 1), Record("a", 1, 1), 12.0, Outdated("a", 1, 1, 77)))
    assert core.next_action(0.1) is Action.NONE, "the mark of generation 77 would be cleared"
