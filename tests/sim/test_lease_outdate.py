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


def test_the_mark_of_a_generation_still_being_stored_stands() -> None:
    """A generation's store fails after its mark and is retried (daemon/primary.py), and a pass
    ends meanwhile: the old Generations.greeting claimed the lineage, the mark was cleared and the
    generation's writes were then answered alone with no mark (invariant 5; 4 once the lease
    lapses). The fixed core keeps it; the fault switch brings the old behaviour back."""
    failures = retried = 0
    for seed in range(60):
        world = LeaseWorld(seed)
        world.run()
        failures += world.store_failures
        retried += sum("stored generation" in event for event in world.schedule)
    assert failures > 20 and retried > 20, "no store failed after its mark: the window went untested"
    for seed in range(100):
        try:
            LeaseWorld(seed, Faults(generation_claimed_while_stored=True)).run()
        except LeaseFailure as failure:
            assert "invariant 5" in str(failure) or "invariant 4" in str(failure)
            assert any("cleared the outdated mark" in event for event in failure.schedule)
            assert any("storing the generation failed" in event for event in failure.schedule)
            return
    raise AssertionError("no invariant fired with generation_claimed_while_stored")
