"""The primary's wrapping NBD targets and write groups (issue 15), with real ``foresync run``
processes and libnbd pipelining plain writes (many parsed in one receive pass): behind the trace
(``[nbd] trace``) and behind the lease's fence (``[cluster]``) the groups still reach the site
and go as WRITES frames, the trace records every write of them, and a fenced primary refuses
every write of a group as it refuses a lone one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from foresync.nbd import trace
from foresync.testing.etcd import EtcdCluster

from .conftest import require_python_libnbd
from .sites import SMALL, MakePair, SitePair, run_tool
from .test_cluster import cluster, cluster_pair, etcd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
__all__ = ["etcd"]  # the fixture, shared with test_cluster

# argv: url, count of pipelined 4 KiB writes. Warms the record over the 4 MiB region first (64
# KiB writes, then a flush), so the 4 KiB writes are hits and go in groups. Prints how many
# writes it sent in all and each failed 4 KiB write's errno.
_PIPELINED = r"""
import json, sys
import nbd

url, count = sys.argv[1], int(sys.argv[2])
REGION = 4 << 20
h = nbd.NBD()
h.connect_uri(url)
warm = 0
if count > 0:
    for offset in range(0, REGION, 64 << 10):
        h.aio_pwrite(b"\x01" * (64 << 10), offset)
        warm += 1
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.flush()
cookies = [h.aio_pwrite(i.to_bytes(8, "big") * 512, (i * 4096 * 7) % REGION)
           for i in range(abs(count))]
while h.aio_in_flight() > 0:
    h.poll(-1)
failed = []
for cookie in cookies:
    try:
        h.aio_command_completed(cookie)
    except nbd.Error as exc:
        failed.append(exc.errno)
h.shutdown()
print(json.dumps({"writes": warm + len(cookies), "failed": failed}))
"""


def pipelined(pair: SitePair, count: int) -> dict[str, object]:
    """``count`` pipelined writes after a warm-up; a negative count: no warm-up (a fenced
    primary refuses the warm-up's writes too)."""
    python = require_python_libnbd()
    result = run_tool([python, "-c", _PIPELINED, pair.nbd_url, str(count)], context=pair.logs())
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_a_traced_primary_still_groups_writes_and_traces_every_one(make_pair: MakePair,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "primary.fstrace"
    traced = replace(SMALL, mode="async", nbd_extra=f'trace = "{path}"\n')
    pair = make_pair(SMALL, primary=traced, secondary=replace(SMALL, mode="async"))
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    answer = pipelined(pair, 3000)
    assert answer["failed"] == [], answer
    primary, _ = pair.wait_in_sync()
    counters = primary["counters"]
    assert counters["write_groups"] > 0, counters  # the trace no longer hides the groups
    pair.stop_both()  # the trace is flushed on the way out
    pair.assert_identical()
    _, records = trace.decode(path.read_bytes(), str(path))
    writes = [r for r in records if r.command == trace.WRITE]
    assert len(writes) == answer["writes"], (len(writes), answer)  # each write of each group
    assert all(r.flags == 0 for r in writes)


def test_a_fenced_primary_refuses_every_write_of_a_group(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    pair, proxy = cluster_pair(make_pair, etcd, tmp_path, via_etcd_proxy=True, mode="async")
    assert proxy is not None
    answer = pipelined(pair, 2000)
    assert answer["failed"] == [], answer
    groups = pair.status(pair.primary)["counters"]["write_groups"]
    assert groups > 0, "the fence hid the groups from the site"
    # The secondary stopped first, so nothing takes over: the fence stays closed meanwhile.
    pair.stop(pair.secondary)
    proxy.cut()  # the primary can no longer renew its lease: it fences itself
    pair.wait_for("the primary fences itself", lambda: bool(cluster(pair, "primary")["fenced"]),
                  timeout_s=30)
    refused = pipelined(pair, -500)  # no warm-up: straight into the fence
    assert refused["failed"] == ["EIO"] * 500, refused
    counters = pair.status(pair.primary)["counters"]
    assert counters["write_groups"] == groups, counters  # no group reached the site
    assert not pair.status(pair.primary)["in_sync"]
    proxy.close()
