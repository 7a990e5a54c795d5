"""Adversarial checks of the grouped write path (issue 15) between two real ``foresync run``
processes: libnbd pipelines thousands of requests, so the primary's NBD server parses many per
read and hands them to the site as groups (one WRITES frame), and the secondary receives many
per read and holds adjacent ones in runs it writes with one ``pwritev``.

The requests overlap on purpose: the same block twice in a row, a run of adjacent writes that
then rewrites its own start, unaligned writes that are adjacent only byte-wise, TRIM and
WRITE_ZEROES of a range between writes of it, and FLUSHes among them. The client keeps a model of
the last writer of every byte; the primary must read back exactly that, and the secondary's
image must equal it byte for byte once the pair reports in sync. A second test kills the
secondary with SIGKILL while runs are held and checks that the pair is not reported in sync
until the resync has made the images equal.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from foresync.link import wire

from .certs import make_tls_dir
from .conftest import require_python_libnbd
from .sites import MakePair, Settings, SitePair, read_bytes, run_tool, started_pair
from .test_link_strangers import send_and_read_until_closed
from .test_security import secured

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
REGION = 4 * MiB  # four 1 MiB extents: all in the record once warm, so most writes are hits

# argv: url, seed, rounds. Prints the model's sha256 and the read-back mismatches.
_OVERLAPPING = r"""
import hashlib, json, random, sys
import nbd

url, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
REGION = 4 << 20
rng = random.Random(seed)
model = bytearray(REGION)
h = nbd.NBD()
h.connect_uri(url)
tag = 0

def write(offset, length):
    global tag
    tag += 1
    data = (tag.to_bytes(4, "big") + bytes([seed & 0xff])) * (length // 5 + 1)
    data = data[:length]
    model[offset:offset + length] = data
    h.aio_pwrite(data, offset)

def zero(offset, length, trim):
    model[offset:offset + length] = bytes(length)
    (h.aio_trim if trim else h.aio_zero)(length, offset)

# Warm the record: the first write of an extent is a miss (it waits for ADDED); after that the
# writes of the region are hits and go in groups.
for offset in range(0, REGION, 64 << 10):
    write(offset, 64 << 10)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()

for _ in range(rounds):
    kind = rng.randrange(10)
    base = rng.randrange(0, REGION - (64 << 10), 512)
    if kind < 4:  # a run of adjacent 4 KiB writes, then its start written again
        count = rng.randrange(2, 12)
        for i in range(count):
            write(base + i * 4096, 4096)
        write(base, 4096)
    elif kind < 6:  # the same block twice in a row, then its neighbour
        write(base, 4096)
        write(base, 4096)
        write(base + 4096, 4096)
    elif kind == 6:  # unaligned, byte-wise adjacent writes crossing an old one
        write(base + 100, 3000)
        write(base + 3100, 5000)
        write(base + 8100, 1)
        write(base + 50, 200)
    elif kind == 7:  # write, zero or trim part of it, write again over the middle
        write(base, 16384)
        zero(base + 4096, 8192, rng.random() < 0.5)
        write(base + 8192, 4096)
        write(base + 12288, 4096)
    elif kind == 8:  # a run with a FLUSH in its middle
        write(base, 4096)
        write(base + 4096, 4096)
        h.aio_flush()
        write(base + 8192, 4096)
        write(base + 4096, 4096)
    else:  # a large write, then small ones inside it
        write(base, 40960)
        write(base + 4096, 512)
        write(base + 4608, 512)
    if h.aio_in_flight() > 2000:
        while h.aio_in_flight() > 200:
            h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
back = bytearray()
for offset in range(0, REGION, 1 << 20):
    back += h.pread(1 << 20, offset)
h.shutdown()
bad = [i for i in range(0, REGION, 512) if back[i:i + 512] != model[i:i + 512]]
print(json.dumps({"sha256": hashlib.sha256(model).hexdigest(), "mismatches": bad[:10],
                  "writes": tag}))
"""


def overlapping(pair: SitePair, seed: int, rounds: int = 3000) -> dict[str, object]:
    python = require_python_libnbd()
    result = run_tool([python, "-c", _OVERLAPPING, pair.nbd_url, str(seed), str(rounds)],
                      context=pair.logs())
    answer: dict[str, object] = json.loads(result.stdout)
    assert answer["mismatches"] == [], f"the primary did not read back the last writes: {answer}"
    return answer


def overlapping_while(pair: SitePair, seed: int, rounds: int,
                      during: Callable[[subprocess.Popen[str]], None]) -> dict[str, object]:
    """``overlapping`` in the background while ``during(writer)`` acts on the pair (the writer
    is killed if that fails); its answer once it is done."""
    python = require_python_libnbd()
    writer = subprocess.Popen([python, "-c", _OVERLAPPING, pair.nbd_url, str(seed), str(rounds)],
                              stdout=subprocess.PIPE, text=True)
    try:
        during(writer)
        out, _ = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    answer: dict[str, object] = json.loads(out)
    assert answer["mismatches"] == [], answer
    return answer


def region_sha(pair: SitePair, which: str) -> str:
    site = pair.primary if which == "primary" else pair.secondary
    return hashlib.sha256(read_bytes(site.data_path, 0, REGION)).hexdigest()


@pytest.mark.parametrize("mode", ["lookahead", "async"])
def test_overlapping_pipelined_writes_replicate_the_last_writer(make_pair: MakePair, mode: str) -> None:
    pair = started_pair(make_pair, Settings(mode=mode, size="64MiB", capacity=16, lookahead=2))
    first = overlapping(pair, seed=1)
    second = overlapping(pair, seed=2)
    primary, _ = pair.wait_in_sync()
    counters = primary["counters"]
    assert counters["write_groups"] > 0, counters  # the groups really went as WRITES frames
    assert counters["resync_bytes"] == 0, counters  # nothing was repaired behind our back
    pair.stop_both()
    assert first["sha256"] != second["sha256"]
    assert region_sha(pair, "secondary") == second["sha256"], "secondary != the last writes"
    pair.assert_identical()


def test_secondary_killed_while_runs_are_held_is_never_reported_in_sync(make_pair: MakePair) -> None:
    pair = started_pair(make_pair, Settings(mode="async", size="64MiB", capacity=16, lookahead=2))
    overlapping(pair, seed=3)
    before = pair.wait_in_sync()[0]["counters"]["write_groups"]

    def kill_secondary(writer: subprocess.Popen[str]) -> None:
        # The kill lands while the client streams: a pass's held run may be lost with the process.
        pair.wait_for("groups under way",
                      lambda: pair.status(pair.primary)["counters"]["write_groups"] > before + 50)
        pair.kill9(pair.secondary)

    answer = overlapping_while(pair, 4, 20000, kill_secondary)
    status = pair.status(pair.primary)
    assert not status["in_sync"], status  # the secondary is gone: the copies may differ
    pair.restart(pair.secondary)
    pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
    assert region_sha(pair, "secondary") == answer["sha256"], "the resync left the secondary behind"
    pair.assert_identical()


def test_overlapping_writes_over_a_tls_link_with_a_secret(make_pair: MakePair, tmp_path: Path) -> None:
    """The same groups over mutual TLS with the shared secret: the WRITES frames and the held
    runs come through TLS records that split them anywhere."""
    tls = make_tls_dir(tmp_path / "certs", "foresync test CA")
    settings = secured(Settings(mode="async", size="64MiB", capacity=16, lookahead=2), tmp_path,
                       secret="s3cret-link-key-that-is-long-enough", link_tls=tls)
    pair = started_pair(make_pair, settings)
    answer = overlapping(pair, seed=5)
    primary, _ = pair.wait_in_sync()
    assert primary["security"]["link_tls"] is True, primary["security"]
    assert primary["counters"]["write_groups"] > 0, primary["counters"]
    assert primary["counters"]["resync_bytes"] == 0, primary["counters"]
    pair.stop_both()
    assert region_sha(pair, "secondary") == answer["sha256"]
    pair.assert_identical()


def test_a_secondary_promoted_after_groups_holds_every_write_reported_in_sync(make_pair: MakePair) -> None:
    """Both processes crash (SIGKILL) right after the pair reported in sync; the secondary,
    promoted offline and started as the primary, serves exactly the last writes."""
    pair = started_pair(make_pair, Settings(mode="lookahead", size="64MiB", capacity=16, lookahead=2))
    answer = overlapping(pair, seed=6)
    pair.wait_in_sync()
    pair.kill9(pair.primary)
    pair.kill9(pair.secondary)
    promoted = pair.promote(pair.secondary)
    assert "now primary" in promoted.stdout, promoted.stdout
    pair.restart(pair.secondary)
    assert pair.status(pair.secondary)["role"] == "primary"
    python = require_python_libnbd()
    read = run_tool([python, "-c", _READ_REGION, pair.nbd_url_of(pair.secondary)], context=pair.logs())
    assert read.stdout.strip() == answer["sha256"], "the promoted copy lost writes reported in sync"


_READ_REGION = r"""
import hashlib, sys
import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
data = b"".join(h.pread(1 << 20, offset) for offset in range(0, 4 << 20, 1 << 20))
h.shutdown()
print(hashlib.sha256(data).hexdigest())
"""


def test_link_cut_and_restored_while_groups_stream_ends_with_the_last_writes(make_pair: MakePair) -> None:
    """The proxy aborts the link twice while the client streams overlapping groups: frames of
    a WRITES group and a pass's held run end mid-way. Once restored the pair resyncs to the
    last writes, and is not reported in sync while the link is down."""
    settings = Settings(mode="lookahead", size="64MiB", capacity=16, lookahead=2)
    pair = started_pair(make_pair, settings, via_proxy=True)
    before = pair.status(pair.primary)["counters"]["write_groups"]

    def cut_twice(writer: subprocess.Popen[str]) -> None:
        for cut in range(2):
            goal = before + 50 * (cut + 1)

            def streamed(goal: int = goal) -> bool:  # or the writer is done: cut all the same
                return writer.poll() is not None or pair.status(pair.primary)["counters"]["write_groups"] > goal

            pair.wait_for("groups under way", streamed)
            pair.cut_link()
            pair.wait_link(pair.primary, "disconnected")
            assert not pair.status(pair.primary)["in_sync"]
            pair.restore_link()
            pair.wait_link(pair.primary, "connected")

    answer = overlapping_while(pair, 7, 30000, cut_twice)
    pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
    assert region_sha(pair, "secondary") == answer["sha256"], "the resync left the secondary behind"
    pair.assert_identical()


def test_a_protocol_8_primary_of_our_volume_is_refused_clearly(make_pair: MakePair) -> None:
    """A primary that predates WRITES frames (link protocol 8) would send groups the secondary
    cannot read, or be sent frames it cannot read: its HELLO, for our very volume and geometry,
    is refused naming both versions, and the healthy link stays up."""
    pair = started_pair(make_pair, Settings(mode="async", size="64MiB", capacity=16, lookahead=2))
    ours = bytes.fromhex(pair.primary.site_json()["volume_id"])
    hello = wire.encode_frame(wire.Hello(8, wire.Role.PRIMARY, 0, ours, 64 * MiB, MiB, 1, (1,)))
    replies = send_and_read_until_closed(pair.secondary.link_port, hello)
    refusals = [m for m in replies if isinstance(m, wire.Refuse)]
    assert len(refusals) == 1 and len(replies) == 1, replies
    assert f"protocol version 8, we speak {wire.PROTOCOL_VERSION}" in refusals[0].reason, refusals
    assert pair.status(pair.primary)["link"] == "connected"
    overlapping(pair, seed=8, rounds=500)  # and the groups still flow on the healthy link
    pair.wait_in_sync()


@pytest.mark.parametrize("mode", ["lookahead", "async"])
def test_primary_killed_while_groups_stream_comes_back_to_identical_copies(make_pair: MakePair,
                                                                        mode: str) -> None:
    """SIGKILL of the primary mid-stream: WRITES groups applied here may not have reached the
    secondary, and held runs there may not be written. Restarted, the pair must not call itself
    in sync before the images are byte for byte the same."""
    pair = started_pair(make_pair, Settings(mode=mode, size="64MiB", capacity=16, lookahead=2))
    before = pair.status(pair.primary)["counters"]["write_groups"]
    python = require_python_libnbd()
    writer = subprocess.Popen([python, "-c", _OVERLAPPING, pair.nbd_url, "9", "30000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pair.wait_for("groups under way", lambda: writer.poll() is not None
                      or pair.status(pair.primary)["counters"]["write_groups"] > before + 100)
        pair.kill9(pair.primary)
    finally:
        writer.wait(timeout=60)
    pair.restart(pair.primary)
    pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
    pair.assert_identical()
