"""A full disk under the secondary while it writes runs of adjacent writes with one ``pwritev``
(issue 15): pipelined 4 KiB writes into holes of the sparse data file arrive many per read, the
secondary holds them in runs, and a run's ``pwritev`` fails with ENOSPC (maybe after writing part
of it). The pair must not be reported in sync while the copies differ, the primary must keep the
run's extents out of sync, and once there is room again the pair must heal to byte-identical
images holding the last writes.
"""

from __future__ import annotations

import json

import pytest

from .conftest import require_python_libnbd
from .sites import MiB, Settings, SitePair, read_bytes, run_tool
from .test_disk_full import MakeFs, MakePair, data_on, env, fill, started, wait_secondary_error

pytestmark = pytest.mark.integration
__all__ = ["env"]  # the fixture, shared with test_disk_full

# argv: url, first byte offset, count of adjacent 4 KiB writes, pattern seed.
_ADJACENT = r"""
import sys
import nbd

url, first, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(url)
for i in range(count):
    h.aio_pwrite((i * 7 + seed).to_bytes(4, "big") * 1024, first + i * 4096)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
h.shutdown()
"""

FIRST, COUNT = 8 * MiB, 1024  # 4 MiB of holes: far more than the room left


def adjacent(pair: SitePair, seed: int) -> None:
    python = require_python_libnbd()
    run_tool([python, "-c", _ADJACENT, pair.nbd_url, str(FIRST), str(COUNT), str(seed)],
             context=pair.logs())


def expected(seed: int) -> bytes:
    return b"".join((i * 7 + seed).to_bytes(4, "big") * 1024 for i in range(COUNT))


def test_a_full_disk_under_a_held_run_is_never_reported_in_sync(env: tuple[MakePair, MakeFs]) -> None:
    make_pair, make_fs = env
    fs = make_fs("secondary-fs")
    pair = started(make_pair, Settings(size="64MiB", capacity=16, lookahead=2, mode="async"),
                   lambda pair: data_on(pair.secondary, fs))
    filler = fill(fs, leave_bytes=512 * 1024)
    adjacent(pair, seed=1)  # the host does not notice: answered as after a link loss
    wait_secondary_error(pair)
    primary = pair.status(pair.primary)
    assert "No space left on device" in str(primary["secondary_error"]), primary
    assert primary["counters"]["write_groups"] > 0, primary["counters"]  # groups went as WRITES
    assert not primary["in_sync"] and primary["out_of_sync_extents"] > 0, primary
    filler.unlink()
    pair.wait_in_sync(timeout_s=90)
    pair.cli("verify", "--config", pair.primary.config_path)  # exit 1 on any mismatch
    assert read_bytes(pair.secondary.data_path, FIRST, COUNT * 4096) == expected(1)
    adjacent(pair, seed=2)  # and the runs work again once there is room
    pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
    pair.assert_identical()
    assert read_bytes(pair.secondary.data_path, FIRST, COUNT * 4096) == expected(2)


# argv: url, first byte offset, count of 4 KiB blocks, pattern seed, step (write every step-th
# block). Prints which writes the server answered with an error, and their errno.
_ANSWERED = r"""
import json, sys
import nbd

url, first, count, seed, step = (sys.argv[1], *map(int, sys.argv[2:6]))
h = nbd.NBD()
h.connect_uri(url)
cookies = {}
for i in range(0, count, step):
    cookies[i] = h.aio_pwrite((i * 7 + seed).to_bytes(4, "big") * 1024, first + i * 4096)
while h.aio_in_flight() > 0:
    h.poll(-1)
failed = {}
for i, cookie in cookies.items():
    try:
        h.aio_command_completed(cookie)
    except nbd.Error as exc:
        failed[i] = exc.errno
h.shutdown()
print(json.dumps({"failed": failed}))
"""


def answered(pair: SitePair, seed: int, step: int) -> dict[int, str]:
    python = require_python_libnbd()
    result = run_tool([python, "-c", _ANSWERED, pair.nbd_url, str(FIRST), str(COUNT), str(seed),
                       str(step)], context=pair.logs())
    return {int(i): errno for i, errno in json.loads(result.stdout)["failed"].items()}


def test_a_group_whose_middle_writes_fail_on_the_primary_keeps_the_copies_equal(
        env: tuple[MakePair, MakeFs]) -> None:
    """Every other block was written before the disk filled: in one group of pipelined writes,
    those still succeed (their blocks exist) and the ones into holes fail with ENOSPC, after
    the whole group went to the secondary as one WRITES frame. The host gets each write's own
    answer, the pair is not in sync until the failed extents are copied again from the primary,
    and then both images hold every write that was answered OK."""
    make_pair, make_fs = env
    fs = make_fs("primary-fs")
    pair = started(make_pair, Settings(size="64MiB", capacity=16, lookahead=2, mode="async",
                                       resync_rate_max="512KiB"),
                   lambda pair: data_on(pair.primary, fs))
    assert answered(pair, seed=1, step=2) == {}  # the even blocks exist now
    groups = pair.wait_in_sync()[0]["counters"]["write_groups"]
    filler = fill(fs, leave_bytes=64 * 1024)
    failed = answered(pair, seed=2, step=1)
    assert failed and set(failed.values()) == {"ENOSPC"}, failed
    assert not any(i % 2 == 0 for i in failed), failed  # the existing blocks took their writes
    status = pair.status(pair.primary)
    assert status["counters"]["write_groups"] > groups, status["counters"]
    assert not status["in_sync"], "in sync while the failed writes' extents are not copied again"
    pair.wait_in_sync(timeout_s=90)
    pair.cli("verify", "--config", pair.primary.config_path)  # copies equal, disk still full
    filler.unlink()
    pair.stop_both()
    pair.assert_identical()
    image = read_bytes(pair.secondary.data_path, FIRST, COUNT * 4096)
    for i in range(COUNT):
        if i not in failed:
            block = image[i * 4096:(i + 1) * 4096]
            assert block == (i * 7 + 2).to_bytes(4, "big") * 1024, f"block {i} lost its OK write"
