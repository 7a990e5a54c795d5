"""A history check in the Jepsen style for the cluster (issue 16, part 3): hosts write unique
values with flush through whichever site serves, while the test kills the primary, or cuts it
off from etcd, again and again, and lets the automatic failover and failback run.

Two host processes, one per site's NBD port, write without pause: each write is 4 KiB holding
(writer, sequence number) at a block only that writer uses, followed by a flush; a write counts
as acknowledged when both answered success, and its monotonic time is kept. A site that is not
the primary refuses the connection, a fenced one answers EIO: the writer reconnects and goes on.

Checked at the end, against the history and the final images:

* **One writable primary at a time** (and so per epoch): merged by time, the acknowledgments
  switch from one site to the other at most once per failover. Two primaries acknowledging in
  the same period would interleave.
* **Every acknowledged write survives** (``sync`` mode): each block holds the last acknowledged
  value written to it, or a later one, on both images, which are identical.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from foresync.testing.etcd import EtcdCluster
from foresync.testing.processes import free_port

from .conftest import require_python_libnbd
from .sites import SMALL, LinkProxy, MakePair, Site, SitePair
from .test_cluster import TTL_S, cluster_toml, wait_promoted

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BLOCKS = 8192  # per writer: 32 MiB each, the first 64 MiB of the volume between them
WRITER = r"""
import json, sys, time, nbd
port, writer, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
acks, seq, h = [], 0, None
stop = time.monotonic() + seconds
while time.monotonic() < stop:
    try:
        if h is None:
            h = nbd.NBD()
            h.connect_uri(f"nbd://127.0.0.1:{port}/")
        seq += 1
        block = writer * 8192 + seq % 8192
        h.pwrite((writer * 1_000_000 + seq).to_bytes(8, "little") * 512, block * 4096)
        h.flush()
        acks.append([time.monotonic(), seq])
    except nbd.Error:
        h = None
        time.sleep(0.05)
    time.sleep(0.01)
print(json.dumps(acks))
"""


def site_value(image: Path, writer: int, seq: int) -> int:
    with image.open("rb") as f:
        f.seek((writer * BLOCKS + seq % BLOCKS) * 4096)
        return int.from_bytes(f.read(8), "little")


def test_acknowledged_writes_survive_repeated_failovers_and_never_two_primaries(
        make_pair: MakePair, tmp_path: Path) -> None:
    python = require_python_libnbd()
    etcd = EtcdCluster(tmp_path / "etcd")
    etcd.start()
    proxies: dict[str, LinkProxy] = {}
    try:
        urls = {}
        for name in ("a", "b"):
            port = free_port()
            proxies[name] = LinkProxy(f"{name}->etcd", port, etcd.members[0].client_port,
                                      tmp_path / f"proxy-etcd-{name}.log")
            proxies[name].start()
            urls[name] = f"http://127.0.0.1:{port}"
        base = replace(SMALL, mode="sync", size="96MiB")
        pair = make_pair(base, primary=replace(base, admin_extra=cluster_toml(urls["a"], "a")),
                         secondary=replace(base, admin_extra=cluster_toml(urls["b"], "b")))
        name_of = {id(pair.primary): "a", id(pair.secondary): "b"}
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        pair.wait_for("a holds the lease", lambda: pair.status(pair.primary)["cluster"]["holding_lease"])
        cycles = 4
        seconds = cycles * (TTL_S + 14) + 10
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        writers = [subprocess.Popen([python, str(script), str(site.nbd_port), str(w), str(seconds)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for w, site in enumerate(pair.sites)]
        primary: Site = pair.primary
        failovers = 0
        for cycle in range(cycles):
            time.sleep(2)
            other = pair.other(primary)
            if cycle % 2 == 0:
                pair.kill9(primary)
                promote_of(pair, other)
                pair.start(primary)
            else:
                proxies[name_of[id(primary)]].cut()
                promote_of(pair, other)
                proxies[name_of[id(primary)]].restore()
            failovers += 1
            pair.wait_role(primary, "secondary", timeout_s=30)
            pair.wait_for("in sync after the failback",
                          lambda o=other: bool(pair.status(o)["in_sync"]), timeout_s=60)
            primary = other
        histories = []
        for proc in writers:
            out, err = proc.communicate(timeout=seconds + 60)
            assert proc.returncode == 0, err
            histories.append(json.loads(out))
        pair.wait_for("in sync at the end", lambda: bool(pair.status(primary)["in_sync"]),
                      timeout_s=60)
        pair.stop_both()
        pair.assert_identical()
    finally:
        for proxy in proxies.values():
            proxy.close()
        etcd.stop()
    merged = sorted((t, w) for w, acks in enumerate(histories) for t, _ in acks)
    switches = sum(1 for (_, a), (_, b) in itertools.pairwise(merged) if a != b)
    acked = sum(len(acks) for acks in histories)
    print(f"{cycles} failovers, {acked} acknowledged writes, {switches} switches of the "
          f"acknowledging site")
    assert all(histories), "a site never acknowledged a write"
    assert switches <= failovers, f"{switches} switches for {failovers} failovers: two primaries"
    image = pair.primary.data_path
    for w, acks in enumerate(histories):
        last: dict[int, int] = {}
        for _, seq in acks:
            last[seq % BLOCKS] = seq
        for block, seq in last.items():
            value = site_value(image, w, seq)
            assert value // 1_000_000 == w and value % 1_000_000 >= seq, (
                f"writer {w}: block {block} lost acknowledged write {seq} (holds {value})")


def promote_of(pair: SitePair, site: Site) -> None:
    """Until ``site`` serves as primary (an automatic failover)."""
    if site is pair.secondary:
        wait_promoted(pair, TTL_S + 15)
    else:
        pair.wait_role(site, "primary", timeout_s=TTL_S + 15)
