"""replication/ordering.py: an op's lifecycle table, the per-extent lines and the applied prefix."""

from __future__ import annotations

import pytest

from foresync.errors import InvariantViolation, LocalProtocolError
from foresync.replication.ordering import TRANSITIONS, Op, OpEvent, OpState, Ordering


def _op(first: int, count: int = 1) -> Op:
    return Op(1, first * 16, count * 16, b"x" * count * 16, False, False, range(first, first + count))


def _walk(op: Op, *events: OpEvent) -> OpState:
    for event in events:
        op.to(event)
    return op.state


@pytest.mark.parametrize(("events", "end"), [
    ((OpEvent.SEND, OpEvent.ISSUE, OpEvent.LOCAL_DONE, OpEvent.ACK), OpState.DONE),  # a hit
    ((OpEvent.SEND_AWAIT, OpEvent.REMOTE_OK, OpEvent.ISSUE, OpEvent.LOCAL_DONE, OpEvent.FLUSH,
      OpEvent.ACK), OpState.DONE),  # a FUA miss
    ((OpEvent.SEND_AWAIT, OpEvent.ISSUE, OpEvent.LOCAL_DONE, OpEvent.REMOTE_OK),
     OpState.APPLIED),  # a sync-mode hit: applied before DURABLE
    ((OpEvent.SEND_AWAIT, OpEvent.ISSUE, OpEvent.REMOTE_OK, OpEvent.LOCAL_DONE), OpState.APPLIED),
    ((OpEvent.SEND, OpEvent.HOLD, OpEvent.SETTLED, OpEvent.ISSUE), OpState.APPLYING),  # link down
    ((OpEvent.FLUSH, OpEvent.ACK), OpState.DONE),  # a host FLUSH
    ((OpEvent.ACK,), OpState.DONE),  # expired in the queue
])
def test_lifecycles_the_core_uses_are_in_the_table(events: tuple[OpEvent, ...], end: OpState) -> None:
    assert _walk(_op(0), *events) is end


@pytest.mark.parametrize(("events", "illegal"), [
    ((), OpEvent.ISSUE),  # applied before it was sent: no seq, no order
    ((OpEvent.SEND, OpEvent.ISSUE), OpEvent.ISSUE),  # ApplyLocal twice
    ((OpEvent.SEND, OpEvent.HOLD), OpEvent.ISSUE),  # before its extents are durably out-of-sync
    ((OpEvent.SEND_AWAIT,), OpEvent.ACK),  # the host answered before the secondary
    ((OpEvent.SEND, OpEvent.ISSUE), OpEvent.ACK),  # ... or before the local write landed
    ((OpEvent.SEND, OpEvent.ISSUE, OpEvent.LOCAL_DONE), OpEvent.LOCAL_DONE),
    ((OpEvent.SEND, OpEvent.ISSUE, OpEvent.LOCAL_DONE, OpEvent.ACK), OpEvent.ACK),  # twice
    ((OpEvent.SEND,), OpEvent.REMOTE_OK),  # nothing was awaited
])
def test_an_illegal_transition_raises_and_leaves_the_state(events: tuple[OpEvent, ...],
                                                          illegal: OpEvent) -> None:
    op = _op(0)
    before = _walk(op, *events)
    with pytest.raises(LocalProtocolError, match=illegal.value):
        op.to(illegal)
    assert op.state is before


def test_done_is_final_and_every_state_is_reachable() -> None:
    assert not [key for key in TRANSITIONS if key[0] is OpState.DONE]
    reached = {OpState.QUEUED} | set(TRANSITIONS.values())
    assert reached == set(OpState)


def test_an_op_applies_only_first_in_line_on_every_extent() -> None:
    tried: list[int] = []
    order = Ordering(gated=set(), apply_miss_before_ack=False,
                     try_apply=lambda op: tried.append(op.seq))
    a, b, c = _op(0, 2), _op(1), _op(2)
    for op in (a, b, c):
        order.assign(op)
    assert (a.seq, b.seq, c.seq) == (1, 2, 3)
    assert order.first_in_line(a) and not order.first_in_line(b) and order.first_in_line(c)
    assert [order.may_apply_now(op) for op in (a, b, c)] == [True, False, True]
    order.landed(a)
    assert tried == [2] and order.first_in_line(b)
    assert order.applied_prefix == 1
    d = _op(2)
    order.assign(d)
    with pytest.raises(InvariantViolation, match="out of order"):
        order.landed(d)  # c is still first on extent 2


def test_the_applied_prefix_waits_for_gaps_and_counts_skipped_numbers() -> None:
    order = Ordering(gated=set(), apply_miss_before_ack=False, try_apply=lambda op: None)
    order.mark_applied(2)
    assert order.applied_prefix == 0
    order.mark_applied(1)
    assert order.applied_prefix == 2
    order.next_seq = 3
    order.skip_to(9)  # the secondary saw up to 9: 3..9 were never used here
    assert order.next_seq == 10 and order.applied_prefix == 9
    order.skip_to(4)  # nothing to skip
    assert order.next_seq == 10


def test_a_gated_op_waits_for_added_unless_the_fault_is_on() -> None:
    gated = {1}
    op = _op(0)
    order = Ordering(gated, apply_miss_before_ack=False, try_apply=lambda op: None)
    order.assign(op)
    assert not order.may_apply(op)
    gated.clear()
    assert order.may_apply(op)
    faulty = Ordering({1}, apply_miss_before_ack=True, try_apply=lambda op: None)
    faulty.assign(_op(0))
    assert faulty.may_apply(faulty.by_seq[1])
    assert faulty.may_apply_now(faulty.by_seq[1])
    gated.add(1)
    assert not order.may_apply_now(op)
