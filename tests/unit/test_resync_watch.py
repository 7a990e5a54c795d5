"""The secondary's own view of a resync pass (replication/resync_watch.py, issue 17)."""

from __future__ import annotations

from foresync.replication.resync_watch import ResyncWatch

MiB = 1 << 20


def watch() -> ResyncWatch:
    return ResyncWatch(size=64 * MiB, extent_size=MiB)  # 64 extents


def test_the_total_is_the_journaled_resync_set_and_done_what_arrived() -> None:
    w = watch()
    w.session_started()
    w.set_received(((10, 4), (20, 2)))
    assert w.progress(active=True, set_runs=((10, 4), (20, 2)), full=False, now=1.0).total_bytes == 6 * MiB
    w.received(10 * MiB, MiB, now=1.0)
    w.received(11 * MiB, MiB, now=1.5)
    w.received(11 * MiB, MiB, now=2.0)  # sent again (a reconnect): counts once in done
    p = w.progress(active=True, set_runs=((10, 4), (20, 2)), full=False, now=2.0)
    assert (p.done_bytes, p.total_bytes, p.remaining_bytes) == (2 * MiB, 6 * MiB, 4 * MiB)
    assert p.rate_bytes_per_s == 3 * MiB  # 3 MiB received in 1 s since the first write
    assert (p.send_total_bytes, p.send_done_bytes, p.compare_total_bytes) == (6 * MiB, 2 * MiB, 0)
    assert p.active and p.passes == 1 and p.set_extents == 6
    assert w.total_known(((10, 4),), False) and w.received_bytes == 3 * MiB


def test_a_finished_pass_shows_done_equal_to_total_and_no_rate() -> None:
    w = watch()
    w.session_started()
    w.set_received(((0, 3),))
    w.received(0, MiB, now=1.0)
    w.finished(full=False, set_runs=())  # the core has already cleared its set
    p = w.progress(active=False, set_runs=(), full=False, now=9.0)
    assert (p.done_bytes, p.total_bytes, p.rate_bytes_per_s, p.active) == (3 * MiB, 3 * MiB, 0, False)
    assert p.passes == 1 and w.received_bytes == 0


def test_a_full_sync_compares_the_whole_volume_and_its_position_is_the_sweep() -> None:
    w = watch()
    w.session_started()
    w.received(0, MiB, now=10.0)
    w.received(31 * MiB, MiB, now=12.0)  # extents 1..30 were found identical (not sent)
    p = w.progress(active=True, set_runs=((0, 64),), full=True, now=12.0)
    assert (p.total_bytes, p.compare_total_bytes, p.compare_done_bytes) == (64 * MiB, 64 * MiB, 32 * MiB)
    assert (p.done_bytes, p.send_done_bytes, p.send_total_bytes) == (32 * MiB, 2 * MiB, 2 * MiB)
    assert p.compare_rate_bytes_per_s == 16 * MiB and p.rate_bytes_per_s == MiB
    w.finished(full=True)
    p = w.progress(active=False, set_runs=(), full=False, now=13.0)
    assert (p.done_bytes, p.total_bytes, p.compare_done_bytes) == (64 * MiB, 64 * MiB, 64 * MiB)
    assert p.send_done_bytes == p.send_total_bytes == 2 * MiB  # what was sent of it


def test_a_reconnect_restarts_the_sweep_but_keeps_what_arrived() -> None:
    w = watch()
    w.session_started()
    for extent in range(8):
        w.received(extent * MiB, MiB, now=1.0 + extent)
    w.session_started()  # the primary's new pass compares from extent 0 again
    p = w.progress(active=True, set_runs=((0, 64),), full=True, now=20.0)
    assert p.compare_done_bytes == 0 and p.done_bytes == 8 * MiB and p.rate_bytes_per_s == 0


def test_an_async_incremental_pass_has_no_set_here_so_its_total_is_unknown() -> None:
    w = watch()
    w.session_started()
    w.received(5 * MiB, MiB, now=1.0)
    p = w.progress(active=True, set_runs=(), full=False, now=2.0)
    assert p.total_bytes == p.done_bytes == MiB and not w.total_known((), False)
