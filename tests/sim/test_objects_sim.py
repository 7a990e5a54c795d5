"""The seeded object simulation (testing/sim/objects.py): its invariants hold, and each deliberate
bug of the object core (faults.py) is caught within the CI seed count."""

from __future__ import annotations

from collections import Counter

import pytest

from foresync.faults import Faults
from foresync.testing.sim.objects import OBJECT_FAULTS, InvariantViolation, run_seed

SEEDS = 150


@pytest.mark.parametrize("start", range(0, SEEDS, 50))
def test_every_invariant_holds(start: int) -> None:
    seen: Counter[str] = Counter()
    for seed in range(start, start + 50):
        seen += run_seed(seed)
    # The runs met what the invariants are about: misses, evictions, resyncs, cuts, crashes,
    # prefix entries and their resyncs, failovers and a full window.
    for what in ("miss", "evicted", "resync", "cut", "primary_crash", "window_wait"):
        assert seen[what] > 20, f"{what} went untested: {dict(seen)}"
    for what in ("prefix", "under", "failover", "complete", "abort"):
        assert seen[what] > 5, f"{what} went untested: {dict(seen)}"
    # completions assembled on the secondary from its parts (the small op), not only sent whole
    assert seen["complete_small"] > 2, f"complete_small went untested: {dict(seen)}"


@pytest.mark.parametrize("fault", sorted(OBJECT_FAULTS))
def test_the_simulator_catches_the_deliberate_bug(fault: str) -> None:
    faults = Faults(**{fault: True})
    caught = []
    for seed in range(SEEDS):
        try:
            run_seed(seed, faults)
        except InvariantViolation as exc:
            caught.append(str(exc))
    assert caught, f"{fault}: no seed of {SEEDS} caught it"
    assert "differs" in caught[0] or "after settling" in caught[0], caught[0]
