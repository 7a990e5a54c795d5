"""The secondary's runs of adjacent WRITEs (replication/write_runs.py, issue 15): the core holds
them, the driver writes each as one call, and nothing counts as applied before it is written."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from foresync.errors import StorageError
from foresync.faults import NO_FAULTS, Faults
from foresync.journal.format import RecordState
from foresync.link import wire
from foresync.nbd.wire import Errno
from foresync.replication.driver import SecondaryDriver
from foresync.replication.secondary import SecondaryCore
from foresync.replication.write_runs import RUN_MAX_BYTES, RUN_MAX_WRITES

VOLUME = bytes(range(16))
EXTENT = 16
SIZE = 64 * EXTENT


class _Image:
    """Secondary effects over a bytearray that log every call, the writes' seqs included, and
    check that each APPLIED or sync reaches only writes already written."""

    def __init__(self) -> None:
        self.image = bytearray(SIZE)
        self.calls: list[tuple[str, object]] = []
        self.written: set[int] = set()  # seqs whose data is in the image
        self.full = False
        self.failures: list[wire.StorageArea] = []
        self.sent_seqs: list[int] = []  # every WRITE and ZERO fed so far (``_pass``)

    def send(self, message: wire.Message) -> None:
        self.calls.append(("send", message))
        if isinstance(message, wire.Applied | wire.Durable):
            self._all_written_through(message.seq, type(message).__name__)

    def _all_written_through(self, seq: int, what: str) -> None:
        missing = [s for s in self.sent_seqs if s <= seq and s not in self.written]
        assert not missing, f"{what}({seq}) before writes {missing} were written"

    def journal_append(self, entry: bytes) -> None:
        self.calls.append(("journal_append", entry))

    def write_data(self, offset: int, data: bytes, seq: int) -> None:
        if self.full:
            raise StorageError("no space", Errno.ENOSPC)
        self.calls.append(("write_data", seq))
        self.image[offset : offset + len(data)] = data
        self.written.add(seq)

    def write_run(self, writes: tuple[wire.Write, ...]) -> None:
        if self.full:
            raise StorageError("no space", Errno.ENOSPC)
        self.calls.append(("write_run", tuple(write.seq for write in writes)))
        offset = writes[0].offset  # back to back, as the pwritev does
        for write in writes:
            self.image[offset : offset + len(write.data)] = write.data
            offset += len(write.data)
            self.written.add(write.seq)

    def zero_data(self, offset: int, length: int, punch: bool, seq: int) -> None:
        self.calls.append(("zero_data", seq))
        self.image[offset : offset + length] = bytes(length)
        self.written.add(seq)

    def sync_data(self, through: int) -> None:
        self.calls.append(("sync_data", through))
        self._all_written_through(through, "SyncData")

    def resync_started(self) -> None:
        self.calls.append(("resync_started", None))

    def resync_finished(self, seq: int, generations: tuple[int, ...]) -> None:
        self.calls.append(("resync_finished", seq))

    def hash_extents(self, request: int, first: int, count: int) -> None:
        self.calls.append(("hash_extents", request))

    def save_undo(self, extent: int) -> None:
        self.calls.append(("save_undo", extent))

    def close_link(self, reason: str) -> None:
        self.calls.append(("close_link", reason))

    def link_failed(self, reason: str) -> None:
        self.calls.append(("link_failed", reason))

    def storage_failed(self, area: wire.StorageArea, error: StorageError) -> None:
        self.failures.append(area)

    def writes(self) -> list[tuple[str, object]]:
        return [call for call in self.calls if call[0] in ("write_data", "write_run", "zero_data")]


def _site(faults: Faults = NO_FAULTS) -> tuple[SecondaryCore, SecondaryDriver, _Image]:
    core = SecondaryCore(SIZE, EXTENT, 0, VOLUME, RecordState(), faults=faults)
    effects = _Image()
    driver = SecondaryDriver(core, effects)
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, SIZE, EXTENT, 1, (1,)))
    driver()
    effects.calls.clear()
    return core, driver, effects


def _w(seq: int, offset: int, length: int = 8, flags: int = 0) -> wire.Write:
    return wire.Write(seq, offset, flags, 0, (), bytes([seq % 251 + 1]) * length)


def _pass(core: SecondaryCore, driver: SecondaryDriver, effects: _Image,
          messages: Sequence[wire.Message]) -> None:
    """One receive pass as SecondarySite._on_message and _end_of_batch run it."""
    for message in messages:
        if type(message) is wire.Write:
            effects.sent_seqs.append(message.seq)
            if driver.write_now(message):
                continue
        elif isinstance(message, wire.Zero):
            effects.sent_seqs.append(message.seq)
        core.receive(message)
    driver.end_of_batch()
    driver()


def test_adjacent_writes_of_a_pass_are_one_run_written_before_applied() -> None:
    core, driver, effects = _site()
    for seq in (1, 2, 3):
        assert driver.write_now(_w(seq, 8 * (seq - 1)))
    assert effects.calls == [] and core.applied_seq == 0  # held: not applied
    core.end_of_batch()
    driver()
    assert effects.calls == [("write_run", (1, 2, 3)), ("send", wire.Applied(3))]
    assert core.applied_seq == 3 and core.writes_applied == 3 and core.bytes_applied == 24


def test_a_write_that_does_not_follow_ends_the_run_and_is_written_after_it() -> None:
    core, driver, effects = _site()
    _pass(core, driver, effects, [_w(1, 0), _w(2, 8), _w(3, 100), _w(4, 108), _w(5, 40)])
    assert effects.writes() == [("write_run", (1, 2)), ("write_run", (3, 4)), ("write_data", 5)]
    assert effects.calls[-1] == ("send", wire.Applied(5))


def test_an_overlapping_write_lands_after_the_one_before_it() -> None:
    core, driver, effects = _site()
    _pass(core, driver, effects, [_w(1, 0, 16), _w(2, 16, 8), _w(3, 4, 8), _w(4, 12, 8)])
    assert effects.writes() == [("write_run", (1, 2)), ("write_run", (3, 4))]
    expected = bytearray(SIZE)
    for seq, offset, length in ((1, 0, 16), (2, 16, 8), (3, 4, 8), (4, 12, 8)):
        expected[offset : offset + length] = _w(seq, offset, length).data
    assert effects.image == expected


def test_zeroes_trims_and_resync_writes_in_a_pass_keep_their_place() -> None:
    core, driver, effects = _site()
    punch, resync = int(wire.WriteFlag.PUNCH), int(wire.WriteFlag.RESYNC)
    _pass(core, driver, effects, [
        _w(1, 0), _w(2, 8),
        wire.Zero(3, 4, 8, 0, 0, ()),  # zeroes part of the held run: must land after it
        _w(4, 16), _w(5, 24),
        wire.Zero(6, 20, 8, punch, 0, ()),  # a trim
        _w(7, 28), _w(8, 36, flags=resync), _w(9, 44)])
    order = [seq for _, seqs in effects.writes() for seq in (seqs if isinstance(seqs, tuple) else (seqs,))]
    assert order == list(range(1, 10))
    expected = bytearray(SIZE)
    for seq, offset in ((1, 0), (2, 8)):
        expected[offset : offset + 8] = _w(seq, offset).data
    expected[4:12] = bytes(8)
    for seq, offset in ((4, 16), (5, 24)):
        expected[offset : offset + 8] = _w(seq, offset).data
    expected[20:28] = bytes(8)
    for seq, offset in ((7, 28), (8, 36), (9, 44)):
        expected[offset : offset + 8] = _w(seq, offset).data
    assert effects.image == expected
    assert core.applied_seq == 9


def test_a_sync_in_the_pass_covers_the_held_writes_only_once_written() -> None:
    core, driver, effects = _site()
    _pass(core, driver, effects, [_w(1, 0), _w(2, 8), wire.Sync(2), _w(3, 16)])
    assert effects.calls.index(("write_run", (1, 2))) < effects.calls.index(("sync_data", 2))


def test_a_run_is_bounded() -> None:
    core, driver, effects = _site()
    many = [_w(seq, seq - 1, 1) for seq in range(1, RUN_MAX_WRITES + 3)]
    _pass(core, driver, effects, many)
    assert [len(seqs) for _, seqs in effects.writes()] == [RUN_MAX_WRITES, 2]  # type: ignore[arg-type]
    big = SecondaryCore(4 * RUN_MAX_BYTES, EXTENT * 1024, 0, VOLUME, RecordState())
    half = RUN_MAX_BYTES // 2 + 1
    assert big.write_now(wire.Write(1, 0, 0, 0, (), bytes(half))) is True
    ended = big.write_now(wire.Write(2, half, 0, 0, (), bytes(half)))  # adjacent, but too big
    assert isinstance(ended, list) and [w.seq for w in ended] == [1]


def test_a_failed_run_marks_every_write_of_it_and_of_the_held_one_stale() -> None:
    core, driver, effects = _site()
    assert driver.write_now(_w(1, 0, 16))
    assert driver.write_now(_w(2, 16, 16))
    effects.full = True
    assert driver.write_now(_w(3, 160, 16))  # ends the run (1, 2), whose pwritev fails
    assert effects.failures == [wire.StorageArea.IMAGE]
    assert core.failed and core.failed_extents == {0, 1, 10}  # the held write 3 too
    core.end_of_batch()
    driver()
    assert not any(name == "send" and isinstance(m, wire.Applied) for name, m in effects.calls)
    assert not effects.written
    assert core.stale_extents() == (0, 1, 10)


def test_a_failure_elsewhere_drops_the_held_run() -> None:
    core, driver, effects = _site()
    assert driver.write_now(_w(1, 32, 16))
    driver.storage_failed(wire.StorageArea.JOURNAL, StorageError("no space", Errno.ENOSPC))
    driver()
    assert 2 in core.failed_extents and not effects.written  # stale at the next WELCOME
    core.end_of_batch()
    driver()
    assert not any(name == "send" and isinstance(m, wire.Applied) for name, m in effects.calls)


def test_a_held_run_is_due_at_once_and_a_pump_writes_it() -> None:
    """A pass cut short by a damaged frame gives no end_of_batch: the timer and the next pump
    (SecondarySite._watch) still write what it held, in order."""
    core, driver, effects = _site()
    assert driver.write_now(_w(1, 0), now=5.0)
    assert core.get_timer() == 5.0
    assert driver()
    assert effects.writes() == [("write_data", 1)] and core.applied_seq == 1


def test_a_new_session_writes_what_the_old_one_held_first() -> None:
    core, driver, effects = _site()
    assert driver.write_now(_w(1, 0))
    assert driver.write_now(_w(2, 8))
    core.session_reset()
    driver()
    assert effects.writes() == [("write_run", (1, 2))]


WRITE = st.builds(lambda offset, length: ("write", offset, length),
                  st.integers(0, 48).map(lambda n: n * 4), st.sampled_from([4, 8, 16]))
OTHER = st.sampled_from([("zero",), ("ping",), ("sync",), ("flagged",)])


@given(passes=st.lists(st.lists(st.one_of(WRITE, WRITE, WRITE, OTHER), min_size=1, max_size=12),
                       min_size=1, max_size=8),
       chain=st.booleans())
@settings(max_examples=150, deadline=None)
def test_any_passes_leave_the_image_of_the_writes_in_order(
        passes: list[list[tuple[object, ...]]], chain: bool) -> None:
    """Any mix of writes (adjacent, apart, overlapping) and other messages, in passes: the image
    is that of every write applied in seq order, and no APPLIED or sync reaches a write before
    it was written (``_Image``)."""
    core, driver, effects = _site()
    expected = bytearray(SIZE)
    seq = 0
    end = 0
    for steps in passes:
        messages: list[wire.Message] = []
        for step in steps:
            seq += 1
            kind = step[0]
            if kind == "write":
                offset, length = int(step[1]), int(step[2])  # type: ignore[call-overload]
                if chain:
                    offset = end if end + length <= SIZE else 0  # mostly sequential
                end = offset + length
                write = _w(seq, offset, length)
                messages.append(write)
                expected[offset : offset + length] = write.data
            elif kind == "flagged":
                write = _w(seq, 8, 8, int(wire.WriteFlag.DURABLE))
                messages.append(write)
                expected[8:16] = write.data
            elif kind == "zero":
                messages.append(wire.Zero(seq, 4, 12, 0, 0, ()))
                expected[4:16] = bytes(12)
            elif kind == "ping":
                seq -= 1
                messages.append(wire.Ping(seq))
            else:
                seq -= 1
                messages.append(wire.Sync(seq))
        _pass(core, driver, effects, messages)
    assert effects.image == expected
    assert core.applied_seq == seq and core.writes_applied == len(effects.sent_seqs)


OURS = (tracemalloc.Filter(True, "*/foresync/*"),)  # foresync's own files, not the tests'


def test_the_receive_path_with_runs_keeps_nothing_after_a_pass() -> None:
    """tracemalloc, the whole secondary receive path (decoder, core, driver) over sequential
    4 KiB writes: a pass holds its run only until ``end_of_batch``, and a written run keeps
    nothing; while a pass is decoded the peak is what was read, its writes and the scratch
    buffer. A core that kept written runs (or their data) would fail."""
    size, per_read, reads = 4096, 16, 32
    core = SecondaryCore(per_read * reads * size, 1 << 20, 0, VOLUME, RecordState())
    effects = _Image()
    effects.image = bytearray()  # the data goes nowhere: what stays is the path's own
    effects.write_data = lambda offset, data, seq: None  # type: ignore[method-assign]
    effects.write_run = lambda writes: effects.calls.append(("write_run", len(writes)))  # type: ignore[method-assign]
    driver = SecondaryDriver(core, effects)
    core.receive(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME,
                            per_read * reads * size, 1 << 20, 1, (1,)))
    driver()
    decoder = wire.FrameDecoder()
    reads_bytes = [b"".join(wire.encode_frame(wire.Write(seq, seq * size, 0, 0, (), bytes([seq % 251]) * size))
                            for seq in range(n * per_read, (n + 1) * per_read)) for n in range(reads)]
    effects.calls.clear()
    # Only this test's allocations count: the kept memory from snapshots of foresync's own
    # files (a thread left by an earlier test may allocate meanwhile), with the collector off.
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base_snapshot = None
        peak_over = base = 0
        for n, chunk in enumerate(reads_bytes):
            if n == 1:  # the scratch buffer and the first pass's one-off allocations made
                base, _ = tracemalloc.get_traced_memory()
                base_snapshot = tracemalloc.take_snapshot().filter_traces(OURS)
            with decoder.get_buffer() as view:
                view[: len(chunk)] = chunk
            decoder.buffer_updated(len(chunk))
            for message in decoder.next_messages():
                assert type(message) is wire.Write and driver.write_now(message)
            driver.end_of_batch()
            driver()
            _, peak = tracemalloc.get_traced_memory()
            if n:
                peak_over = max(peak_over, peak - base)
            tracemalloc.reset_peak()
        after_snapshot = tracemalloc.take_snapshot().filter_traces(OURS)
    finally:
        tracemalloc.stop()
        gc.enable()
    assert base_snapshot is not None
    kept = sum(stat.size_diff for stat in after_snapshot.compare_to(base_snapshot, "filename"))
    assert [call[1] for call in effects.calls if call[0] == "write_run"] == [per_read] * reads
    assert kept < 4096, kept  # nothing kept per pass (counters, a list or two)
    assert peak_over < 3 * per_read * (size + 300), peak_over  # a read, its writes, slack
