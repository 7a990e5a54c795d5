"""A group of host writes in one core call and one link frame (issue 15): ``PrimaryCore.write_hits``,
``PrimaryDriver.write_hits`` and the WRITES frame, against the same writes made one by one.

The harness is the core tests' (test_replication_cores.py), which checks after every pump that no
op overtook an earlier overlapping one, that misses apply only after ADDED, and the images and
records at quiescence. ``Groups.write_group`` does what ``PrimarySite.write_many`` does.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replication_cores import HOST_OP, Harness, _Recording, host_step

from foresync.errors import Errno
from foresync.faults import Faults
from foresync.link import wire
from foresync.replication import primary as pcore
from foresync.replication.primary import Mode


class Groups(_Recording):
    """The core harness with host write groups; ``sent`` holds WRITES frames' writes one by one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.groups_sent: list[int] = []  # the size of each WRITES frame sent

    def send(self, message: wire.Message) -> None:
        if isinstance(message, wire.WriteBatch):
            self.groups_sent.append(len(message.writes))
            self.sent.extend(message.writes)
        else:
            self.sent.append(message)
        Harness.send(self, message)

    def _primary_sends(self, message: wire.Message) -> None:
        if isinstance(message, wire.WriteBatch):
            for write in message.writes:
                super()._primary_sends(write)
            return
        super()._primary_sends(message)

    def write_group(self, writes: list[tuple[int, int]]) -> list[int]:
        """Plain writes parsed together, as ``PrimarySite.write_many`` takes them: the leading
        run of hits in one call and frame, the write that ends it alone (``write`` and a pump),
        then the next run. Their op ids."""
        ops: list[int] = []
        datas: list[tuple[int, bytes]] = []
        for offset, length in writes:
            op_id = self.next_op
            self.next_op += 1
            self.host_ops[op_id] = ("write", offset, length, False)
            self.op_queue.append(op_id)
            ops.append(op_id)
            datas.append((offset, bytes((op_id * 37 + i) % 251 + 1 for i in range(length))))
        start = 0
        while start < len(ops):
            errnos = self.p_driver.write_hits(datas, start)
            for op_id, errno in zip(ops[start:], errnos, strict=False):
                self.ack_host(op_id, errno)
            start += len(errnos)
            if not errnos:
                self.primary.write(ops[start], *datas[start], False)
                self.pump()
                start += 1
        self.pump()
        return ops


def _run_grouped(h: Groups, steps: list[tuple[object, ...]], grouped: bool) -> None:
    h.connect()
    for step in steps:
        match step:
            case ("group", list(writes)):
                clipped = [(min(o, h.size - 1), min(n, h.size - min(o, h.size - 1))) for o, n in writes]
                if grouped:
                    h.write_group(clipped)
                else:
                    for offset, length in clipped:
                        h.write(offset, length)
            case _:
                assert host_step(h, step), step
    h.settle()
    h.check_quiescent()


GROUP = st.tuples(st.just("group"), st.lists(st.tuples(st.integers(0, 12 * 16), st.integers(1, 40)),
                                             min_size=2, max_size=8))


@given(mode=st.sampled_from(Mode), lookahead=st.integers(0, 3),
       ops=st.lists(st.one_of(GROUP, HOST_OP), min_size=1, max_size=25))
@settings(max_examples=150, deadline=None)
def test_write_groups_change_nothing_but_the_frames(mode: Mode, lookahead: int,
                                                    ops: list[tuple[object, ...]]) -> None:
    """With every I/O completed at once, the same host writes made as groups or one by one give
    the same WRITE messages (a WRITES frame's, one by one), in the same order, the same images
    and the same statistics on both sites."""
    runs = []
    for grouped in (False, True):
        h = Groups(mode=mode, capacity=5, lookahead=lookahead, auto=True)
        _run_grouped(h, ops, grouped)
        runs.append(h)
    single, grouped_run = runs
    assert grouped_run.sent == single.sent
    assert grouped_run.p_img == single.p_img and grouped_run.s_img == single.s_img
    grouped_stats = grouped_run.primary.statistics()
    assert dataclasses.replace(grouped_stats, write_groups=0, grouped_writes=0) == single.primary.statistics()
    assert grouped_stats.write_groups == len(grouped_run.groups_sent)
    assert grouped_stats.grouped_writes == sum(grouped_run.groups_sent)
    assert grouped_run.secondary.statistics() == single.secondary.statistics()
    assert not single.groups_sent


def test_a_group_of_hits_is_one_frame_in_order() -> None:
    h = Groups(capacity=4, lookahead=2, auto=True)
    h.connect()
    h.write(0, 4)  # a miss: extents 0..2 recorded
    h.settle()
    before = len(h.sent)
    ops = h.write_group([(20, 8), (2, 3), (40, 5), (21, 2)])
    assert h.groups_sent == [4]
    writes = h.sent[before:]
    assert [(w.offset, len(w.data)) for w in writes] == [(20, 8), (2, 3), (40, 5), (21, 2)]  # type: ignore[union-attr]
    seqs = [w.seq for w in writes]  # type: ignore[union-attr]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert all(h.acks[op] == 0 for op in ops)
    h.settle()
    h.check_quiescent()
    assert h.s_img == h.p_img


def test_a_miss_in_the_middle_ends_the_run_and_goes_alone() -> None:
    h = Groups(capacity=6, lookahead=0)
    h.connect()
    h.write(0, 4)
    h.settle()  # extent 0 recorded
    before = len(h.sent)
    # hit (extent 0), miss (extent 5), hit (extent 0), a write to extent 5 behind the miss
    ops = h.write_group([(0, 4), (80, 4), (4, 4), (84, 4)])
    sent = h.sent[before:]
    assert [type(m) for m in sent] == [wire.Write, wire.Write, wire.Write]
    first, miss, third = sent
    assert isinstance(first, wire.Write) and isinstance(miss, wire.Write) and isinstance(third, wire.Write)
    assert first.flags == 0 and miss.flags & wire.WriteFlag.MISS and third.flags == 0
    assert (first.seq, miss.seq, third.seq) == (first.seq, first.seq + 1, first.seq + 2)
    assert h.groups_sent == []  # runs of one: plain WRITEs, no WRITES frame
    # the hit after the miss was answered; the miss, and the write behind it, wait for ADDED
    assert h.acks.get(ops[0]) == 0 and h.acks.get(ops[2]) == 0
    assert ops[1] not in h.acks and ops[3] not in h.acks
    h.settle()
    assert all(h.acks[op] == 0 for op in ops)
    h.check_quiescent()
    assert h.s_img == h.p_img


def test_a_write_behind_an_in_flight_miss_is_not_carried_as_a_hit() -> None:
    h = Groups(capacity=6, lookahead=0)
    h.connect()
    h.write(0, 4)
    h.settle()  # extent 0 recorded
    h.write(80, 4)  # a miss on extent 5, waiting for its ADDED
    before = len(h.sent)
    ops = h.write_group([(0, 4), (1, 2), (82, 2), (2, 2)])
    sent = h.sent[before:]
    # the two hits went as one frame; the write to extent 5 waits behind the miss and ends the
    # run; the last write is a hit again, alone (the core has actions queued now, or not)
    assert h.groups_sent[:1] == [2]
    assert [w.offset for w in sent[:2]] == [0, 1]  # type: ignore[union-attr]
    assert all(w.offset != 82 for w in sent)  # type: ignore[union-attr]
    assert ops[2] not in h.acks
    h.settle()
    assert all(h.acks[op] == 0 for op in ops)
    h.check_quiescent()
    assert h.s_img == h.p_img


def test_the_fault_carries_a_write_behind_an_in_flight_miss() -> None:
    h = Groups(capacity=6, lookahead=0, faults=Faults(batch_carries_non_hit=True))
    h.connect()
    h.write(0, 4)
    h.settle()
    h.write(80, 4)  # a miss on extent 5, waiting for its ADDED
    # deliberately wrong: sent and applied at once, as a hit, on an extent the secondary has
    # not recorded yet; the harness's checks see the difference no record covers
    with pytest.raises(AssertionError, match=r"not in the durable record|overtook"):
        h.write_group([(0, 4), (82, 2)])


@pytest.mark.parametrize("grouped", [False, True], ids=["one_by_one", "group"])
def test_local_write_errors_in_a_group_mark_out_of_sync_as_single_writes_do(grouped: bool) -> None:
    h = Groups(capacity=6, lookahead=0, auto=True)
    h.connect()
    h.write(0, 16)
    h.write(32, 16)
    h.settle()  # extents 0 and 2 recorded
    h.p_full = 2  # the disk is full: each local write lands 2 bytes, ENOSPC
    writes = [(0, 4), (33, 4), (8, 4)]
    if grouped:
        ops = h.write_group(writes)
        assert h.groups_sent == [3]
    else:
        ops = [h.write(offset, length) for offset, length in writes]
    assert [h.acks[op] for op in ops] == [int(Errno.ENOSPC)] * 3
    stats = h.primary.statistics()
    assert stats.local_write_errors == 3
    assert not stats.in_sync
    h.p_full = None
    h.settle()  # the extents are resynced from what the primary holds
    h.check_quiescent()
    assert h.s_img == h.p_img
    assert h.primary.statistics().in_sync


def test_a_group_stops_where_its_frame_would_pass_the_bound() -> None:
    size = 60_000  # under WRITES_MEMBER_MAX_BYTES
    h = Groups(mode=Mode.ASYNC, capacity=4, lookahead=0, extent_size=1 << 16, extents=40,
               window_bytes=64 << 20, auto=True)
    h.connect()
    writes = [(i * (1 << 16), size) for i in range(30)]
    h.write_group(writes)
    fits = (wire.WRITES_MAX_BYTES - wire.COUNT.size) // (wire.WRITES_ENTRY.size + size)
    assert h.groups_sent[0] == fits
    assert sum(h.groups_sent) + (len(writes) - sum(h.groups_sent)) == len(writes)
    assert all(n <= fits for n in h.groups_sent)
    first_group = wire.WriteBatch([m for m in h.sent if isinstance(m, wire.Write)][:fits])
    assert len(wire.encode_frame(first_group)) - wire.FRAME_HEADER.size <= wire.WRITES_MAX_BYTES
    h.settle()
    h.check_quiescent()
    assert h.s_img == h.p_img


def test_a_large_write_goes_alone_as_a_write() -> None:
    h = Groups(mode=Mode.ASYNC, capacity=4, lookahead=0, extent_size=1 << 16, extents=8, auto=True)
    h.connect()
    h.write_group([(0, 100), (1 << 16, wire.WRITES_MEMBER_MAX_BYTES), (3 << 16, 100), (4 << 16, 100)])
    # the first run ends at the large write (a run of one: a WRITE); the large one is alone
    assert h.groups_sent == [2]
    h.settle()
    h.check_quiescent()


def test_write_hits_declines_like_write_hit() -> None:
    h = Groups(capacity=4, lookahead=1)
    core = h.primary
    assert core.write_hits([(0, b"x"), (1, b"y")]) == (None, 0)  # not connected yet
    h.connect()
    assert core.write_hits([(0, b"x"), (1, b"y")]) == (None, 0)  # a miss first: nothing taken
    assert core.write_hits([(0, b"x")], 1) == (None, 0)  # nothing from start on
    assert core.link is pcore.LinkState.CONNECTED
    assert h.p_driver.write_hits([(0, b"x")]) == []
