"""Groups of host writes in one link frame (issue 15) between two real ``foresync run`` processes:
fio's NBD engine keeps 32 writes in flight, so the primary's NBD server parses several at once
and hands them to the site as a group, whose leading hits go as one WRITES frame. The secondary's
image must then equal the primary's, byte for byte, after a clean stop, and fio's own verify
(read back through the primary) must pass, so the identical images are not identically empty.
"""

from __future__ import annotations

import json

import pytest

from .sites import Settings, SitePair, run_tool, started_pair

pytestmark = pytest.mark.integration

MakePair = object


def fio_verify(pair: SitePair, *args: str) -> dict[str, int]:
    result = run_tool(["fio", "--name=groups", "--ioengine=nbd", f"--uri={pair.nbd_url}",
                       "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M", "--io_size=24M",
                       "--verify=crc32c", "--randrepeat=1", "--verify_state_save=0",
                       "--output-format=json", *args], context=pair.logs())
    job = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0, f"fio failed: {job}\n{pair.logs()}"
    return {"written": job["write"]["io_bytes"], "verified": job["read"]["io_bytes"]}


@pytest.mark.parametrize("mode", ["lookahead", "async"])
def test_write_groups_replicate_identically(make_pair: MakePair, mode: str) -> None:
    # The record covers the whole 64 MiB volume once warm: most writes are hits, so groups form.
    pair = started_pair(make_pair, Settings(mode=mode, size="64MiB", capacity=64, lookahead=2))  # type: ignore[arg-type]
    zipf = fio_verify(pair, "--random_distribution=zipf:1.1")
    uniform = fio_verify(pair, "--offset=0")
    # zipf rewrites its hot blocks: fio verifies the last version of each block it wrote
    assert zipf["written"] == 24 << 20 and zipf["verified"] > 1 << 20, zipf
    assert uniform["written"] == uniform["verified"] == 24 << 20, uniform
    primary, _ = pair.wait_in_sync()
    counters = primary["counters"]
    assert counters["write_groups"] > 0, counters  # the groups really went as WRITES frames
    assert counters["grouped_writes"] >= 2 * counters["write_groups"], counters
    assert counters["resync_bytes"] == 0, counters  # the link never dropped: no repair hid a loss
    pair.stop_both()
    pair.assert_identical()
