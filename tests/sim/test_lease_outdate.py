"""The lease world's outdate (testing/sim/lease.py, invariant 4): primaries acknowledge writes
alone after marking their secondary outdated, die, and the secondary refuses to promote itself
until it holds those writes; with the mark ignored (``promote_outdated_copy``) writes are lost."""

from __future__ import annotations

from foresync.faults import Faults
from foresync.testing.sim.lease import LeaseFailure, LeaseWorld


def test_seeds_mark_refuse_and_still_fail_over() -> None:
    outdates = refusals = alone = promotions = 0
    for seed in range(60):
        world = LeaseWorld(seed)
        world.run()  # raises LeaseFailure (with the schedule) if an invariant fails
        outdates += world.outdates
        refusals += world.outdated_refusals
        alone += world.alone_acks
        promotions += world.promotions
    assert outdates > 100, "primaries rarely answered writes alone: the mark went untested"
    assert alone > 3000
    assert refusals > 8, "no secondary ever found its copy outdated when the lease expired"
    assert promotions > 20, "the mark must not stop failover where nothing was answered alone"


def test_the_mark_ignored_loses_acknowledged_writes() -> None:
    for seed in range(100):
        try:
            LeaseWorld(seed, Faults(promote_outdated_copy=True)).run()
        except LeaseFailure as failure:
            assert "invariant 4" in str(failure) and failure.schedule
            assert any("marked its secondary outdated" in event for event in failure.schedule)
            return
    raise AssertionError("invariant 4 never fired with promote_outdated_copy")
