"""Wrapping targets (the fence, the trace, an export's window) and the NBD server's write groups
(issue 15): a wrapper offers ``write_many`` exactly when the target it wraps does, so the groups
reach that target, and its own rule holds for each write of a group as for a lone write. In
process on loopback, with a raw client that sends every request in one ``send`` (one receive
pass on the server, so the plain writes are parsed together)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

from test_nbd_server_limits import HoldingTarget, eventually, negotiate, run
from test_nbd_write_groups import WRITE, GroupingTarget, request

from foresync.daemon.cluster import FencedTarget
from foresync.errors import Errno
from foresync.nbd import trace
from foresync.nbd.exports import WindowTarget
from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdServer, ServerLimits
from foresync.nbd.target import NbdTarget, group_call
from foresync.nbd.tracing import TraceWriter, TracingTarget

COUNT = 6
DATA = b"\x07" * 512


def served(target: NbdTarget, held: GroupingTarget | None = None,
           while_held: Callable[[], None] = lambda: None) -> dict[int, int]:
    """Send COUNT plain writes at once to ``target`` behind a real NBD server; each cookie's
    answer (0 or the errno). With ``held`` (the innermost target, holding): once it holds all
    COUNT, ``while_held`` runs, then they are answered."""
    stream = b"".join(request(WRITE, cookie, cookie * 512, DATA) for cookie in range(1, COUNT + 1))

    async def body() -> None:
        server = NbdServer(target, ExportInfo("disk", target.size), ServerLimits())
        _, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await negotiate(port)
            writer.write(stream)
            await writer.drain()
            if held is not None:
                await eventually(lambda: len(held.held) == COUNT)
                while_held()
                held.release_all()
            replies = await asyncio.wait_for(reader.readexactly(16 * COUNT), 10)
            for i in range(COUNT):
                _, error, cookie = struct.unpack_from(">IIQ", replies, i * 16)
                answers[cookie] = error
            writer.close()
        finally:
            if held is not None:
                held.holding = False
                held.release_all()
            await server.aclose()

    answers: dict[int, int] = {}
    run(body)
    return answers


def offsets() -> list[int]:
    return [cookie * 512 for cookie in range(1, COUNT + 1)]


def test_a_wrapper_has_write_many_only_when_its_inner_target_has_it(tmp_path: Path) -> None:
    writer = TraceWriter(str(tmp_path / "t.fstrace"), 64 << 20)
    for inner, has in ((GroupingTarget(), True), (HoldingTarget(), False)):
        wrappers = [TracingTarget(inner, writer), FencedTarget(inner, lambda: True),
                    WindowTarget(inner, 4096, 1 << 20)]
        assert [group_call(w) is not None for w in wrappers] == [has] * 3
    writer.close()


def test_the_trace_records_every_write_of_a_group_and_passes_the_group_on(tmp_path: Path) -> None:
    path = tmp_path / "t.fstrace"
    inner = GroupingTarget()
    target = TracingTarget(inner, TraceWriter(str(path), inner.size))
    assert served(target) == dict.fromkeys(range(1, COUNT + 1), 0)
    target.writer.close()
    assert inner.log == [("group", offsets())]  # one group: not split into lone writes
    _, records = trace.decode(path.read_bytes())
    assert [(r.command, r.flags, r.offset, r.length) for r in records] == [
        (trace.WRITE, 0, offset, len(DATA)) for offset in offsets()]


def test_a_fenced_target_refuses_every_write_of_a_group_untouched() -> None:
    inner = GroupingTarget()
    target = FencedTarget(inner, lambda: False)
    assert served(target) == dict.fromkeys(range(1, COUNT + 1), int(Errno.EIO))
    assert inner.log == []  # nothing reached the site
    assert target.refused == COUNT


def test_a_fenced_target_holding_the_lease_passes_the_group_on() -> None:
    inner = GroupingTarget()
    target = FencedTarget(inner, lambda: True)
    assert served(target) == dict.fromkeys(range(1, COUNT + 1), 0)
    assert inner.log == [("group", offsets())]
    assert target.refused == 0


def test_a_group_answered_after_the_lease_is_lost_is_answered_eio() -> None:
    """The writes passed the fence but their answers come after it closed: each becomes EIO,
    as a lone write's would (it may have landed; the host must not take it as acknowledged)."""
    lease = [True]

    def lose_the_lease() -> None:
        lease[0] = False

    inner = GroupingTarget()
    inner.holding = True
    target = FencedTarget(inner, lambda: lease[0])
    answers = served(target, inner, lose_the_lease)
    assert inner.log == [("group", offsets())]
    assert answers == dict.fromkeys(range(1, COUNT + 1), int(Errno.EIO))
    assert target.refused == COUNT


def test_a_window_shifts_every_write_of_a_group_by_its_offset() -> None:
    inner = GroupingTarget()
    target = WindowTarget(inner, 8 << 20, 1 << 20)
    assert served(target) == dict.fromkeys(range(1, COUNT + 1), 0)
    assert inner.log == [("group", [(8 << 20) + offset for offset in offsets()])]


def test_wrappers_stacked_as_the_daemon_stacks_them_keep_the_group(tmp_path: Path) -> None:
    """The primary's order: the trace, then the fence, then an export's window."""
    path = tmp_path / "t.fstrace"
    inner = GroupingTarget()
    traced = TracingTarget(inner, TraceWriter(str(path), inner.size))
    target = WindowTarget(FencedTarget(traced, lambda: True), 1 << 20, 1 << 20)
    assert served(target) == dict.fromkeys(range(1, COUNT + 1), 0)
    traced.writer.close()
    shifted = [(1 << 20) + offset for offset in offsets()]
    assert inner.log == [("group", shifted)]
    _, records = trace.decode(path.read_bytes())
    assert [r.offset for r in records] == shifted


def test_a_fence_falling_in_the_middle_of_a_group_splits_it_at_that_write() -> None:
    """The lease runs out while the fence goes through a group: the writes it let through before
    go on as one group, in order, and are answered; every write from the fall on is answered EIO
    untouched (never passed on, never answered 0), exactly as lone writes in a row would be."""
    asks = iter([True, True, True] + [False] * 100)  # one ask per write, then one per answer
    inner = GroupingTarget()
    target = FencedTarget(inner, lambda: next(asks))
    answers = served(target)
    assert inner.log == [("group", offsets()[:3])], "a fenced write reached the site"
    assert target.refused == COUNT, "the three let through were answered after the fall: EIO too"
    assert answers == dict.fromkeys(range(1, COUNT + 1), int(Errno.EIO))


def test_a_fence_falling_in_the_middle_of_a_group_answers_the_writes_let_through() -> None:
    """The fence asked once per request of the group, then once per answer: it falls at the
    third request and stands again for the answers (a renewal came through meanwhile). The two
    let through go on as a group and are answered 0; the other four EIO, untouched."""
    asks = iter([True, True, False, False, False, False, True, True])
    inner = GroupingTarget()
    target = FencedTarget(inner, lambda: next(asks))
    answers = served(target)
    assert inner.log == [("group", offsets()[:2])]
    assert answers == {1: 0, 2: 0, 3: int(Errno.EIO), 4: int(Errno.EIO), 5: int(Errno.EIO),
                       6: int(Errno.EIO)}
    assert target.refused == COUNT - 2
    assert next(asks, None) is None, "the fence was asked more or less than once per request and answer"
