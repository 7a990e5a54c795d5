"""Extent sets as runs (record/runs.py), and the resync set in the failback set (issue 19)."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from foresync.config import SiteConfig
from foresync.daemon.metadata import SiteMeta
from foresync.daemon.transitions import failback_set
from foresync.journal.format import RecordState
from foresync.record import runs
from foresync.record.record import Eviction
from foresync.replication.primary import Mode

EXTENTS = st.sets(st.integers(0, 200), max_size=60)


@given(EXTENTS)
def test_runs_hold_exactly_the_extents(extents: set[int]) -> None:
    packed = runs.runs_of(extents)
    assert set(runs.expand(packed)) == extents
    assert runs.count(packed) == len(extents)
    assert all(runs.contains(packed, e) == (e in extents) for e in range(-1, 202))
    assert runs.normalise(packed) == packed
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(packed))  # none touch


@given(EXTENTS, EXTENTS)
def test_union_of_runs_is_the_union_of_sets(a: set[int], b: set[int]) -> None:
    assert runs.union(runs.runs_of(a), runs.runs_of(b)) == runs.runs_of(a | b)


def test_a_full_sync_is_one_run() -> None:
    assert runs.runs_of(range(1 << 20)) == ((0, 1 << 20),)
    assert runs.normalise([(5, 3), (0, 5), (9, 0), (8, 2)]) == ((0, 10),)


def test_the_failback_set_includes_an_unfinished_resync_set(tmp_path: Path) -> None:
    """A secondary promoted in the middle of a pass may differ wherever the pass could write:
    its resync set is part of what a failback copies back."""
    cfg = SiteConfig(path=str(tmp_path / "c.toml"), name="s", data=str(tmp_path / "img"), size=1 << 20,
                     meta=str(tmp_path), nbd_listen=("127.0.0.1", 0), export="x",
                     link_listen=("127.0.0.1", 0), link_peer=("127.0.0.1", 1), mode=Mode.LOOKAHEAD,
                     window_bytes=1 << 25, heartbeat_s=1, timeout_s=10, extent_size=4096, capacity=8,
                     lookahead=1, eviction=Eviction.LRU, watermark_interval_s=1,
                     admin_listen=("127.0.0.1", 0))
    state = RecordState(extents={1}, resync=((10, 3), (40, 1)))
    meta = SiteMeta("secondary", bytes(16), (1,), stale=(7,))
    assert failback_set(cfg, meta, state) == {1, 7, 10, 11, 12, 40}


@given(EXTENTS, EXTENTS)
def test_a_difference_of_runs_is_the_set_difference(a: set[int], b: set[int]) -> None:
    left = runs.difference(runs.runs_of(a), runs.runs_of(b))
    assert set(runs.expand(left)) == a - b and runs.normalise(left) == left
