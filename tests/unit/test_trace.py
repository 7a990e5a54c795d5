"""The trace format (nbd/trace.py) and ``foresync tune`` on a small synthetic trace."""

from __future__ import annotations

import lzma
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from foresync import tune
from foresync.cli import main
from foresync.nbd import trace
from foresync.nbd.trace import TraceError, TraceRecord
from foresync.record.record import Eviction
from foresync.record.replay import ReplayConfig, replay
from foresync.tune import writes_of

MiB = 1 << 20


def _records() -> list[TraceRecord]:
    return [TraceRecord(1_000, 0, 4096, trace.WRITE, trace.FUA), TraceRecord(2_000, 0, 0, trace.FLUSH, 0),
            TraceRecord(3_000, 1 << 40, 65536, trace.READ, 0), TraceRecord(4_000, 8192, 4096, trace.TRIM, 0)]


def test_header_and_records_are_24_bytes_each_and_round_trip() -> None:
    data = trace.encode_header(8 * MiB) + b"".join(trace.encode(r) for r in _records())
    assert len(data) == 24 * 5
    assert data[:8] == b"FSTRACE\x00"
    size, records = trace.decode(data)
    assert size == 8 * MiB and list(records) == _records()


def test_a_torn_last_record_is_ignored() -> None:
    data = trace.encode_header(MiB) + b"".join(trace.encode(r) for r in _records())
    _, records = trace.decode(data[:-5])
    assert list(records) == _records()[:-1]


@pytest.mark.parametrize("data, message", [
    (b"short", "too short"),
    (b"NOTATRACE" + bytes(15), "bad magic"),
    (trace.HEADER.pack(trace.MAGIC, 9, 24, 0, 0), "version 9"),
])
def test_a_bad_file_is_named(data: bytes, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        trace.decode(data, "x.fstrace")


def test_only_writes_zeroes_and_trims_go_through_the_record() -> None:
    assert [(off, length, data) for _, off, length, data in writes_of(_records())] == [
        (0, 4096, True), (8192, 4096, False)]


def _hot_and_scan(path: Path) -> None:
    """A hot set written over and over while a long sequential stream passes: the claims' weak spot."""
    rng = random.Random(5)
    out, t = [trace.encode_header(256 * MiB)], 0
    stream = 0
    for _ in range(6000):
        t += 200_000  # 0.2 ms apart
        if rng.random() < 0.7:
            offset = rng.randrange(16) * 4 * MiB  # 16 hot extents of 1 MiB, spread out
        else:
            offset = 64 * MiB + stream * MiB
            stream = (stream + 1) % 160
        out.append(trace.encode(TraceRecord(t, offset, 4096, trace.WRITE, 0)))
    path.write_bytes(lzma.compress(b"".join(out)))


def test_s3fifo_keeps_the_hot_set_the_claimed_policies_lose(tmp_path: Path) -> None:
    path = tmp_path / "hot.fstrace.xz"
    _hot_and_scan(path)
    size, writes = tune.load_trace(str(path))
    ratios = {e: replay(writes, size, ReplayConfig(MiB, 24, e, 0, clean_lag_s=0.001)).miss_ratio
              for e in Eviction}
    for policy in (Eviction.S3FIFO, Eviction.STREAMS):  # the default keeps it too
        assert ratios[policy] < 0.75 * min(ratios[Eviction.LRU], ratios[Eviction.GENERATIONS]), ratios


def test_tune_prints_a_table_a_curve_and_a_config(tmp_path: Path) -> None:
    path = tmp_path / "hot.fstrace.xz"
    _hot_and_scan(path)
    png = tmp_path / "mrc.png"
    result = CliRunner().invoke(main, ["tune", "--trace", str(path), "--bound", "32MiB", "--rtt", "10ms",
                                       "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "IOPS ceiling" in result.output and "<- --bound" in result.output
    first_row = result.output.splitlines()[2].split()
    assert f'eviction = "{first_row[0]}"' in result.output  # the best row is the one recommended
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_names_a_bad_trace(tmp_path: Path) -> None:
    path = tmp_path / "bad.fstrace"
    path.write_bytes(b"garbage" * 10)
    result = CliRunner().invoke(main, ["tune", "--trace", str(path)])
    assert result.exit_code != 0 and "not a foresync trace" in result.output
    assert "Traceback" not in result.output


def test_serve_names_a_trace_it_cannot_write(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path / "v.img"), "--size", "1MiB",
                                       "--listen", "127.0.0.1:0", "--trace", str(tmp_path / "no" / "t")])
    assert result.exit_code != 0
    assert f"cannot write the trace {tmp_path / 'no' / 't'}" in result.output
    assert "Traceback" not in result.output


def test_a_miss_generations_can_never_make_room_for_is_counted_blocked() -> None:
    """Simulator seed 3966 found it (through the live estimator's shadows): generations evicts
    whole generations only (claim 16) and never the write's own extents, so a large write whose
    extents sit in every generation finds no room however clean the record is."""
    es = 4096
    members = [*range(0, 8), *range(9, 17)]  # 16 extents, generations of 2 in order of adding
    writes = [(float(i), e * es, es, True) for i, e in enumerate(members)]
    writes.append((100.0, 1 * es, 15 * es, True))  # extents 1..15: 8 is new, every generation kept
    result = replay(writes, 64 * es, ReplayConfig(es, 16, Eviction.GENERATIONS, 0))
    assert (result.misses, result.blocked) == (17, 1)
    lru = replay(writes, 64 * es, ReplayConfig(es, 16, Eviction.LRU, 0))
    assert (lru.misses, lru.blocked) == (17, 0)  # one clean untouched extent (0) is enough
