"""Issue 25: the primary says "in sync" only once the secondary has durably recorded the pass.

Real ``foresync run`` processes; the primary reaches the secondary's link listener through a
``FrameGate`` (frame_gate.py), which holds the frames of one type in one direction so that the
test sees the window between them:

* RESYNC_DONE held on its way to the secondary: the pass is durable on both sites, but the
  secondary has not recorded its end. The primary must not report in sync (before issue 25 it
  did, at once). The secondary is then killed -9 there: at its restart it rolls the pass back
  (undo log), and the pair converges again to identical images (``cmp``).
* RESYNC_DONE_ACK held on its way back: the secondary has stored its copy as consistent, and
  still the primary reports in sync only once the answer arrives.

The pass is a protected one (undo log): the secondary was consistent when it began, the
primary having written while the secondary was stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from foresync.link.wire import MessageType

from .frame_gate import TO_PRIMARY, TO_SECONDARY, FrameGate
from .sites import SMALL, MakePair, Settings, SitePair, Status, run_tool

WRITTEN = "8M"  # written while the secondary is stopped: eight 1 MiB extents to resync


@pytest.fixture
def gated(make_pair: MakePair) -> Iterator[tuple[SitePair, FrameGate]]:
    """A pair in sync whose link runs through a FrameGate; the secondary then stopped and the
    primary written to, so the next connect runs a protected pass."""
    pair = make_pair(SMALL)
    gate = FrameGate(pair.secondary.link_port)
    try:
        pair.primary.peer_port = gate.port
        pair.primary.config_path.write_text(pair.primary.toml())
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        pair.stop(pair.secondary)
        run_tool(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {WRITTEN}", pair.nbd_url],
                 context=pair.logs())
        yield pair, gate
    finally:
        gate.close()


def _primary_samples(pair: SitePair, seconds: float = 1.0) -> list[Status]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(pair.status(pair.primary))
        time.sleep(0.05)
    return samples


def test_not_in_sync_before_the_secondary_reads_resync_done_then_killed_it_rolls_back(
        gated: tuple[SitePair, FrameGate]) -> None:
    pair, gate = gated
    gate.hold(TO_SECONDARY, MessageType.RESYNC_DONE)
    pair.start(pair.secondary)
    assert gate.wait_held(60), f"no RESYNC_DONE within 60 s\n{pair.logs()}"
    samples = _primary_samples(pair)
    said = [(s["link"], s["in_sync"]) for s in samples]
    assert all(link == "connected" for link, _ in said), said  # the window, not a dropped link
    assert not any(in_sync for _, in_sync in said), f"in sync before the secondary recorded the pass: {said}"
    assert pair.secondary.site_json()["consistent"] is False  # mid-pass there: it would roll back
    pair.kill9(pair.secondary)
    gate.abort()  # RESYNC_DONE dies with the connection
    assert not pair.status(pair.primary)["in_sync"]
    pair.restart(pair.secondary)
    assert "an unfinished resync was rolled back" in pair.secondary.log(), pair.secondary.log()
    pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
    pair.assert_identical()


def test_in_sync_only_once_the_answer_arrives(gated: tuple[SitePair, FrameGate]) -> None:
    pair, gate = gated
    gate.hold(TO_PRIMARY, MessageType.RESYNC_DONE_ACK)
    pair.start(pair.secondary)
    assert gate.wait_held(60), f"no RESYNC_DONE_ACK within 60 s\n{pair.logs()}"
    # The secondary answered only after storing its copy as consistent, and the pass is durable.
    assert pair.secondary.site_json()["consistent"] is True
    said = [(s["link"], s["in_sync"]) for s in _primary_samples(pair)]
    assert all(link == "connected" for link, _ in said), said
    assert not any(in_sync for _, in_sync in said), f"in sync before the answer came: {said}"
    gate.release()
    pair.wait_in_sync(timeout_s=30)
    assert "resync recorded by the secondary" in pair.primary.log()
    pair.stop_both()
    pair.assert_identical()


def test_a_sync_sent_ahead_of_its_miss_is_answered_without_the_watermark_timer(
        make_pair: MakePair) -> None:
    """Part 2: a miss that finds clean slots short sends SYNC(its own seq) just before itself.
    The secondary reads it before the write it names: it must answer it once that write has
    landed, not leave it to its watermark timer. The timer is set to an hour on both sites, so
    the pair reaches in sync (the secondary's watermark at the last seq) only if the secondary
    answers that last SYNC itself. The initial full sync finds two fresh images identical: it
    sends nothing, so it needs no watermark either."""
    settings = Settings(size="256MiB", capacity=16, lookahead=0,
                        record_extra="watermark_interval = 3600\n")
    pair = make_pair(settings)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    # 40 misses 3 MiB apart (1 MiB extents, a record of 16): eviction, hence early SYNCs.
    commands = [arg for i in range(40) for arg in ("-c", f"write -P {i + 1} {3 * i}M 4k")]
    run_tool(["qemu-io", "-f", "raw", *commands, pair.nbd_url], context=pair.logs())
    primary, _ = pair.wait_in_sync(timeout_s=30)
    assert primary["counters"]["record_misses"] >= 40, primary["counters"]
    pair.stop_both()
    pair.assert_identical()
