"""Seeded simulation runs of the real pure cores (issue 5), and the simulator's self-check.

``SIM_SEEDS`` (default 300) seeds run in ``make test``; a failure names the seed and prints the
one-line command that replays it. The self-check switches on one deliberate bug at a time and
requires the invariant checkers to catch it within the same seed budget.
"""

from __future__ import annotations

import os
import random
import re

import pytest

from foresync.errors import StorageError
from foresync.faults import Faults
from foresync.record.record import Eviction
from foresync.replication.primary import Mode
from foresync.testing.sim import SimConfig, SimFailure, World
from foresync.testing.sim.disk import SECTOR, SimDisk
from foresync.testing.sim.groups import GROUP_FAULTS  # caught by tests/sim/test_groups_sim.py
from foresync.testing.sim.objects import OBJECT_FAULTS  # caught by tests/sim/test_objects_sim.py

SEEDS = int(os.environ.get("SIM_SEEDS", "300"))
FIRST = int(os.environ.get("SIM_SEED", "0"))


def _replay(seed: int, extra: str = "") -> str:
    return f"python -m foresync.testing.sim --seeds 1 --seed {seed}{extra} --verbose"


# Seeds that once found a bug, each run on every `make test` (the schedule a seed draws changes
# when the simulator's event mix does, so these guard the fix only as long as it stays the same;
# the unit test named with each is the lasting guard).
REGRESSION_SEEDS = {
    1625: "invariant 6 kept the failback set after the promoted site lost its out-of-sync store "
          "(test_a_failback_after_the_promoted_site_lost_its_out_of_sync_store_copies_everything)",
    2840: "a full disk left half a version stamp in a sector, which invariant 5 took for a lost "
          "promise (test_a_write_to_a_full_disk_lands_whole_sectors)",
    130307: "a host write hid a pending resync (test_a_host_write_does_not_clear_a_pending_resync)",
    373: "a flipped length byte of the journal's last RESYNC_SET read as a torn tail: the resync set "
         "was lost (test_journal.py::test_every_flipped_byte_around_resync_entries_is_damage)",
    435: "the same, in the RESYNC_SET that follows a rewritten journal's checkpoint",
    19: "a VERIFY hashed after the link came back sent its HASHES to the new connection, which "
        "had not asked (test_replication_cores.py::test_a_new_session_drops_the_old_ones_verify_hashing)",
}


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_regression_seeds(seed: int) -> None:
    world = World(seed)
    try:
        world.run()
    except SimFailure as failure:
        pytest.fail(f"seed {seed} ({REGRESSION_SEEDS[seed]}): {failure}\n  replay: {_replay(seed)}")


def _scripted(seed: int = 1) -> World:
    """A world whose faults come only from the test: it starts connected and idle."""
    return World(seed, SimConfig(mode=Mode.LOOKAHEAD, crash_weight=0))


def test_a_failback_after_the_promoted_site_lost_its_out_of_sync_store_copies_everything() -> None:
    """Seed 1625: B is promoted (failback set: its record), A steps down, then B crashes and its
    out-of-sync store is lost. B restarts widened ("everything", issue 12), so the failback pass
    rightly copies every extent; invariant 6 must measure it against that widened set, not the
    failback set the lost store held."""
    world = _scripted()
    world._ev_crash_primary()
    world.oos_stores["A"], world.oos_all["A"] = set(), False  # A's own store stays intact
    world._ev_promote()
    assert world.roles["primary"] == "B"
    world._ev_restart_secondary()  # A meets B and steps down, handing over nothing
    assert world.failback is not None and world.meta_roles["A"] == "secondary"
    assert not world.failback["set"] and not world.failback["old_oos"]
    world._ev_crash_primary()
    world.oos_stores["B"] = None
    world._ev_restart_primary()
    assert world.primary is not None and world.primary.core.full_resync_pending
    world._finish()  # the failback pass: every extent, then RESYNC_DONE checks invariant 6
    assert world.failback is None, "invariant 6 was never checked"
    # EVERYTHING_OUT_OF_SYNC (1) among the HELLO's flags (EARLY_RANGES, 2, is always there)
    assert any("Hello" in event and int(re.search(r"flags=(\d+)", event)[1]) & 1  # type: ignore[index]
               for event in world.schedule if "Hello" in event and "flags=" in event)


def test_a_secondary_adopts_its_primarys_epoch_history() -> None:
    """Like SecondarySite._accept_hello: after two switchovers the site promoted last extends
    the history it adopted as a secondary, rather than branching from its own older one (which
    the real admission policy would refuse as a split brain)."""
    world = _scripted()
    for promoted in ("B", "A", "B"):
        world._ev_switchover()
        assert world.roles["primary"] == promoted
        world.connect_and_drain()
    assert world.histories["B"] == (1, 1001, 1002, 1003)
    assert world.histories["A"] == world.histories["B"]


def _split_brain_schedule(world: World) -> None:
    """Issue 13's schedule: cut, the primary keeps writing, the secondary is promoted (--force),
    writes there, the link heals and the old primary meets the new one."""
    world._ev_cut()
    for _ in range(4):
        world._ev_write()
        world._settle()
    world._ev_promote_cut_off()
    assert world.roles["primary"] == "B"
    world._ev_write()
    world._settle()
    world._ev_heal()
    world._ev_restart_secondary()  # A restarts, dials B: the real cores meet


def test_a_cut_off_primary_that_kept_writing_meets_a_split_brain_not_a_failback() -> None:
    world = _scripted()
    _split_brain_schedule(world)
    assert world.split_brains == 1, "the old primary's writes were failed back over"
    assert any("SPLIT BRAIN" in event for event in world.schedule)
    assert world.meta_roles["A"] == "secondary"  # resolve --discard-local chose B
    world._finish()


def test_failing_back_over_a_split_brain_is_caught() -> None:
    world = World(1, SimConfig(mode=Mode.LOOKAHEAD, crash_weight=0,
                               faults=Faults(split_brain_as_failback=True)))
    with pytest.raises(SimFailure, match="invariant 9"):
        _split_brain_schedule(world)


def test_a_write_to_a_full_disk_lands_whole_sectors() -> None:
    """Seed 2840: a short write on a full filesystem stops at a block boundary, so each sector
    holds all of one write's version or none of it (invariant 5 reads versions per sector)."""
    old, new = b"\x11" * SECTOR * 8, b"\x22" * SECTOR * 6
    landed = set()
    for draw in range(200):
        disk = SimDisk(len(old))
        disk.write(0, old)
        disk.full = random.Random(draw)
        with pytest.raises(StorageError):
            disk.write(SECTOR, new)
        image = bytes(disk.current)
        sectors = [image[i:i + SECTOR] for i in range(0, len(image), SECTOR)]
        assert all(sector in (old[:SECTOR], new[:SECTOR]) for sector in sectors), draw
        count = sum(sector == new[:SECTOR] for sector in sectors)
        assert image == old[:SECTOR] + new[:count * SECTOR] + old[(count + 1) * SECTOR:], draw
        landed.add(count)
    assert landed == set(range(6)), "a full disk should land every prefix of whole sectors"


def test_seeds_keep_every_invariant() -> None:
    failures = []
    modes: dict[str, int] = {}
    policies: dict[str, int] = {}
    for seed in range(FIRST, FIRST + SEEDS):
        world = World(seed)
        modes[world.mode.value] = modes.get(world.mode.value, 0) + 1
        policies[world.eviction.value] = policies.get(world.eviction.value, 0) + 1
        try:
            world.run()
        except SimFailure as failure:
            failures.append(f"seed {seed} ({world.describe()}): {failure}\n  replay: {_replay(seed)}")
    assert not failures, f"{len(failures)} of {SEEDS} seeds failed:\n" + "\n".join(failures[:10])
    # Swarm testing only means something if every mode and every policy was actually drawn.
    assert set(modes) == {m.value for m in Mode}, modes
    assert set(policies) == {e.value for e in Eviction}, policies


def test_seeds_exercise_faults() -> None:
    """The runs above must really crash sites, tear journals, damage metadata, fill disks,
    roll back resyncs, verify and meet strangers, or they prove little."""
    crashes = torn = promotions = switchovers = damages = widened = cleared = strangers = 0
    reports = rollbacks = undo_failures = verifies = differences = torn_writes = lost_writes = 0
    split_brains = resumed = lease_promotions = routed = data_full_compares = write_groups = write_runs = 0
    crashes_after_done = 0
    failures = {"primary": 0, "secondary": 0, "journal": 0}
    for seed in range(FIRST, FIRST + 40):
        world = World(seed)
        world.run()
        strangers += world.strangers
        crashes += world.primary_crashes
        torn += sum(meta.torn_tails for meta in world.metas.values())
        torn_writes += sum(meta.files.torn_writes for meta in world.metas.values())
        lost_writes += sum(meta.files.lost_writes for meta in world.metas.values())
        rollbacks += sum("rolled back" in event for event in world.schedule)
        undo_failures += world.undo_failures
        verifies += world.verify_runs
        differences += world.verify_differences
        promotions += world.promotions
        switchovers += sum("SWITCHOVER" in event for event in world.schedule)
        damages += world.metadata_damages
        widened += sum(": widened" in event or "everything=True" in event for event in world.schedule)
        cleared += sum("no longer widened" in event for event in world.schedule)
        reports += world.storage_failures
        split_brains += world.split_brains
        resumed += sum("resumes the pass" in event for event in world.schedule)
        lease_promotions += world.lease_promotions
        routed += world.routed
        data_full_compares += world.data_full_compares
        write_groups += world.write_groups_sent
        write_runs += world.write_runs
        crashes_after_done += world.crashes_after_resync_done
        for where, count in world.write_failures.items():
            failures[where] += count
    assert crashes > 10
    assert torn > 0
    assert damages > 5, "metadata damage (issue 12) went untested"
    assert widened > 0 and cleared > 0, "no site widened after damage, or none finished its full compare"
    assert promotions > 0, "no seed promoted a secondary: failover and failback went untested"
    assert switchovers > 0, "no seed demoted a primary: planned switchover went untested"
    assert strangers > 40, "strangers rarely knocked: invariant 7 went untested"
    assert all(count > 10 for count in failures.values()), f"too few full-disk failures: {failures}"
    assert reports > 10, "the primary hardly ever heard of a secondary's storage failure"
    assert torn_writes > 5 and lost_writes > 5, "the metadata files were never torn or lost writes"
    assert rollbacks > 5, "no unfinished resync was rolled back from the undo log"
    assert undo_failures > 0, "a full meta disk never refused an undo entry"
    assert verifies > 20 and differences > 20, "verify rarely ran, or never met a real difference"
    assert split_brains > 0, "no seed met a split brain: invariant 9 went untested"
    assert resumed > 10, "no interrupted resync pass resumed (issue 19)"
    assert lease_promotions > 10, "the etcd lease rarely expired: automatic failover went untested"
    assert routed > 200, "link connections were rarely routed to a volume (issue 16)"
    assert data_full_compares > 40, "data files were rarely swapped or replaced under metadata"
    assert write_groups > 40, "host writes rarely went as a WRITES group (issue 15)"
    assert write_runs > 40, "the secondary rarely wrote a run of adjacent WRITEs as one (issue 15)"
    assert crashes_after_done > 5, "no secondary died right after RESYNC_DONE: invariant 16's window"


# Faults whose schedule shows up late in the seed range: how many seeds they get (the search stops
# at the first failure, so only these pay). undo_saved_before_earlier_write needs a write from
# before a resync pass still waiting for a commit when the pass saves its extent: seed 183 drew it
# until the early watermark asked once per answer (issue 14), seed 323 since; its lasting guard
# is the scripted test_sim_undo_model.py::test_a_pass_saves_no_extent_before_an_earlier_write_to_it_lands.
RARE_FAULT_SEEDS = {"undo_saved_before_earlier_write": 500}


@pytest.mark.parametrize("fault", sorted(set(Faults.__dataclass_fields__) - OBJECT_FAULTS - GROUP_FAULTS))
def test_simulator_catches_a_deliberate_bug(fault: str) -> None:
    # A policy's own bug shows only under that policy.
    eviction = {"s3fifo_evicts_dirty": Eviction.S3FIFO, "adaptive_evicts_dirty": Eviction.ADAPTIVE,
                "streams_evicts_dirty": Eviction.STREAMS}.get(fault)
    config = SimConfig(mode=Mode.LOOKAHEAD, faults=Faults(**{fault: True}), eviction=eviction)
    for seed in range(FIRST, FIRST + max(SEEDS, RARE_FAULT_SEEDS.get(fault, 0))):
        try:
            World(seed, config).run()
        except SimFailure as failure:
            assert failure.seed == seed
            assert failure.schedule, "a failure must carry the fault schedule"
            return
    pytest.fail(f"no invariant fired for fault {fault!r} within {SEEDS} seeds")


def test_same_seed_same_run() -> None:
    first, second = World(7), World(7)
    first.run()
    second.run()
    assert first.schedule == second.schedule
    assert first.pdisk.durable == second.pdisk.durable
