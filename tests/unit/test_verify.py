"""replication/verify.py: online verify, driven directly (the core's tests drive it over a link)."""

from __future__ import annotations

import pytest
import xxhash

from foresync.errors import RemoteProtocolError
from foresync.link import wire
from foresync.replication.verify import VERIFY_BATCH, VERIFY_IN_FLIGHT, Verify

EXTENT = 8


def _verify(extents: int, busy: set[int]) -> tuple[Verify, list[wire.Message], list[int]]:
    image = bytes(range(extents)) * EXTENT  # extent i holds bytes i, i+1, ... (all differ)
    sent: list[wire.Message] = []
    repaired: list[int] = []
    verify = Verify(len(image), EXTENT, lambda offset, length: image[offset:offset + length],
                    busy, sent.append, repaired.append)
    return verify, sent, repaired


def _answer(verify: Verify, request: wire.Verify, image_hashes: list[int], now: float) -> None:
    hashes = tuple(image_hashes[request.first:request.first + request.count])
    verify.on_hashes(request.request, request.first, hashes, now)


def test_a_run_finds_the_mismatches_and_repairs_them() -> None:
    count = VERIFY_BATCH * 3
    verify, sent, repaired = _verify(count, set())
    image = bytes(range(count)) * EXTENT
    theirs = [xxhash.xxh3_64_intdigest(image[e * EXTENT:(e + 1) * EXTENT]) for e in range(count)]
    theirs[5] ^= 1
    theirs[40] ^= 1
    verify.start(repair=True, now=1.0)
    assert len(sent) == VERIFY_IN_FLIGHT  # a bounded number of requests in flight
    answered = 0
    while answered < len(sent):
        request = sent[answered]
        assert isinstance(request, wire.Verify)
        _answer(verify, request, theirs, now=2.0)
        answered += 1
    assert not verify.active and verify.mismatches == {5, 40} and repaired == [5, 40]
    progress = verify.progress(now=9.0)
    assert progress.done_extents == count and progress.mismatched_offsets == (5 * EXTENT, 40 * EXTENT)
    assert progress.rate_bytes_per_s == count * EXTENT  # over the run's one second, not nine


def test_an_extent_with_a_write_in_flight_is_checked_later_alone() -> None:
    busy = {1}
    verify, sent, _ = _verify(4, busy)
    verify.start(repair=False, now=0.0)
    [first] = sent
    assert isinstance(first, wire.Verify) and (first.first, first.count) == (0, 4)
    verify.on_hashes(first.request, 0, (0, 0, 0, 0), now=0.0)  # extent 1's answer is ignored
    assert verify.done_extents == 3 and len(sent) == 1  # still busy: not asked again yet
    busy.clear()
    verify.pump(now=0.0)
    assert isinstance(sent[-1], wire.Verify) and (sent[-1].first, sent[-1].count) == (1, 1)


def test_hashes_for_no_request_are_the_peers_error() -> None:
    verify, _, _ = _verify(4, set())
    with pytest.raises(RemoteProtocolError):
        verify.on_hashes(9, 0, (1,), now=0.0)


def test_abandon_stops_the_run() -> None:
    verify, sent, _ = _verify(VERIFY_BATCH * 4, set())
    verify.start(repair=False, now=0.0)
    verify.abandon(now=3.0)
    assert not verify.active and verify.progress(now=5.0).active is False
    with pytest.raises(RemoteProtocolError):  # its requests are forgotten
        first = sent[0]
        assert isinstance(first, wire.Verify)
        verify.on_hashes(first.request, first.first, (0,) * first.count, now=4.0)
