"""The object replication cores (replication/objects.py), driven by hand: exact actions."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from foresync.faults import Faults
from foresync.link.object_wire import (
    ListWhat,
    ObjectAdded,
    ObjectDurable,
    ObjectFlag,
    ObjectKind,
    ObjectList,
    ObjectListRequest,
    ObjectOp,
)
from foresync.objects.parts import part_name
from foresync.objects.predict import LinksPredictor
from foresync.replication.objects import (
    AnswerClient,
    CommitLocal,
    ObjectAction,
    ObjectConfig,
    ObjectPrimaryCore,
    ObjectSecondaryCore,
    PersistMayDiffer,
    ReadForResync,
    SendObject,
)
from foresync.replication.primary import Mode

PUT = int(ObjectKind.PUT)


def connected(mode: Mode = Mode.LOOKAHEAD, record: tuple[str, ...] = (), capacity: int = 4,
              budget: int = 2, may_differ: tuple[str, ...] = ()) -> ObjectPrimaryCore:
    core = ObjectPrimaryCore(ObjectConfig(mode, capacity, 1 << 20, budget), may_differ, dict)
    core.connected()
    assert core.actions() == [SendObject(ObjectListRequest(1, int(
        ListWhat.ALL if mode is Mode.ASYNC else ListWhat.RECORD)))]
    core.receive(ObjectList(1, int(ListWhat.RECORD), tuple((n, "") for n in record)))
    return core


def resynced(core: ObjectPrimaryCore) -> ObjectPrimaryCore:
    """Finish the resync of the record's names that every connect starts (one read at a time)."""
    reads = [a for a in core.actions() if isinstance(a, ReadForResync)]
    while reads:
        core.resync_read(reads[0].op_id, b"{}", b"")
        reads = reads[1:] + [a for a in core.actions() if isinstance(a, ReadForResync)]
    core.receive(ObjectDurable(core.next_seq - 1))
    core.actions()
    return core


def read_each(core: ObjectPrimaryCore, present: set[str]) -> tuple[list[str], list[ObjectAction]]:
    """Answer every resync read, one at a time as the core asks (``present``: the names the
    primary holds): the names read, and the other actions that followed."""
    actions = core.actions()
    reads = [a for a in actions if isinstance(a, ReadForResync)]
    rest = [a for a in actions if not isinstance(a, ReadForResync)]
    seen = []
    while reads:
        read, reads = reads[0], reads[1:]
        seen.append(read.name)
        core.resync_read(read.op_id, b"{}" if read.name in present else None, b"x")
        more = core.actions()
        reads += [a for a in more if isinstance(a, ReadForResync)]
        rest += [a for a in more if not isinstance(a, ReadForResync)]
    return seen, rest


def sent(actions: list[object]) -> list[ObjectOp]:
    return [a.message for a in actions if isinstance(a, SendObject) and isinstance(a.message, ObjectOp)]


def test_a_miss_commits_only_after_added_and_a_hit_at_once() -> None:
    core = connected()
    core.submit(1, PUT, "b/k", b"{}", b"data")
    (op,) = sent(core.actions())
    assert op.flags & ObjectFlag.MISS and op.budget == 2 and op.data == b"data"
    core.receive(ObjectAdded(op.seq, ("b/k", "b/k2")))
    assert core.actions() == [CommitLocal(1)]
    core.committed(1, True)
    assert core.actions() == [AnswerClient(1)]
    assert list(core.copy) == ["b/k", "b/k2"]
    core.submit(2, PUT, "b/k2", b"{}", b"x")  # predicted: a hit
    actions = core.actions()
    assert [type(a) for a in actions] == [SendObject, CommitLocal]
    assert not sent(actions)[0].flags & ObjectFlag.MISS
    core.committed(2, True)
    assert core.actions() == [AnswerClient(2)]  # lookahead: no wait for the secondary


def test_sync_mode_answers_a_hit_only_once_it_is_durable() -> None:
    core = resynced(connected(Mode.SYNC, record=("b/k",)))
    core.submit(1, PUT, "b/k", b"{}", b"x")
    (op,) = sent(core.actions())
    assert op.flags & ObjectFlag.DURABLE
    core.committed(1, True)
    assert core.actions() == []
    core.receive(ObjectDurable(op.seq))
    assert AnswerClient(1) in core.actions()


def test_ops_on_one_name_wait_for_the_earlier_commit() -> None:
    core = resynced(connected(record=("b/k",)))
    core.submit(1, PUT, "b/k", b"{}", b"1")
    core.submit(2, PUT, "b/k", b"{}", b"2")
    assert [op.data for op in sent(core.actions())] == [b"1"]
    core.committed(1, True)
    assert [op.data for op in sent(core.actions())] == [b"2"]


def test_eviction_takes_only_clean_names_and_rides_on_the_miss() -> None:
    core = resynced(connected(record=("b/a", "b/b"), capacity=3, budget=0))
    core.submit(1, PUT, "b/a", b"{}", b"")
    (hit,) = sent(core.actions())
    core.committed(1, True)
    core.actions()
    core.submit(2, PUT, "b/new", b"{}", b"")
    core.actions()  # room for one: nothing evicted yet
    core.receive(ObjectAdded(hit.seq + 1, ("b/new",)))
    core.committed(2, True)
    core.actions()
    core.submit(3, PUT, "b/other", b"{}", b"")
    (miss,) = sent(core.actions())
    # b/a's last op is not durable yet: b/b (clean) goes, not b/a
    assert miss.removals == ("b/b",)
    assert "b/a" in core.copy


def test_a_miss_with_no_clean_name_waits_for_the_watermark() -> None:
    core = connected(record=(), capacity=1, budget=0)
    core.submit(1, PUT, "b/a", b"{}", b"")
    (first,) = sent(core.actions())
    core.receive(ObjectAdded(first.seq, ("b/a",)))
    core.committed(1, True)
    core.actions()
    core.submit(2, PUT, "b/b", b"{}", b"")
    assert core.actions() == []  # b/a is dirty: no room
    core.receive(ObjectDurable(first.seq))
    (second,) = sent(core.actions())
    assert second.removals == ("b/a",) and second.name == "b/b"


def test_link_down_marks_the_name_durably_before_the_commit() -> None:
    core = ObjectPrimaryCore(ObjectConfig(Mode.LOOKAHEAD), (), dict)
    core.submit(1, PUT, "b/k", b"{}", b"")
    assert core.actions() == [PersistMayDiffer(frozenset({"b/k"})), CommitLocal(1)]


def test_a_lost_link_marks_a_waiting_miss_and_commits_it() -> None:
    core = connected()
    core.submit(1, PUT, "b/k", b"{}", b"")
    core.actions()
    core.disconnected()
    assert core.actions() == [PersistMayDiffer(frozenset({"b/k"})), CommitLocal(1)]


def test_connect_resyncs_the_record_and_may_differ_then_clears_them() -> None:
    core = connected(record=("b/r",), may_differ=("b/m",))
    names, actions = read_each(core, {"b/r"})
    ops = sent(actions)
    assert sorted(names) == ["b/m", "b/r"]
    assert {(o.name, o.kind) for o in ops} == {("b/r", PUT), ("b/m", int(ObjectKind.DELETE))}
    assert all(o.flags & ObjectFlag.RESYNC for o in ops)
    core.receive(ObjectDurable(max(o.seq for o in ops)))
    assert core.may_differ == set() and core.in_sync
    assert PersistMayDiffer(frozenset()) in core.actions()


def test_a_resync_is_sent_before_the_next_op_on_its_name() -> None:
    """Found by the simulator: released before it was sent, the resync's old state came after a
    newer op on the same name in the stream."""
    core = connected(record=("b/k",))
    (read,) = [a for a in core.actions() if isinstance(a, ReadForResync)]
    core.submit(1, PUT, "b/k", b"{}", b"new")
    core.resync_read(read.op_id, b"{}", b"old")
    assert [o.data for o in sent(core.actions())] == [b"old", b"new"]


def test_the_deliberate_bug_answers_a_miss_before_the_record_is_durable() -> None:
    from foresync.faults import Faults

    core = ObjectPrimaryCore(ObjectConfig(Mode.LOOKAHEAD), (), dict,
                             Faults(object_hit_before_record_durable=True))
    core.connected()
    core.receive(ObjectList(1, int(ListWhat.RECORD), ()))
    core.actions()
    core.submit(1, PUT, "b/k", b"{}", b"")
    assert CommitLocal(1) in core.actions()  # no MISS round trip


def test_the_secondary_adds_the_name_and_predictions_within_budget_and_bytes() -> None:
    sec = ObjectSecondaryCore(LinksPredictor(), OrderedDict())
    for i in range(3):
        sec.on_op(ObjectOp(i + 1, PUT, 0, 0, f"b/frame-{i:06d}"))
    change = sec.on_op(ObjectOp(4, PUT, int(ObjectFlag.MISS), 2, "b/frame-000003", ("b/gone",)))
    assert change.reply == ("b/frame-000003", "b/frame-000004", "b/frame-000005")
    assert change.added == change.reply and change.removed == ()
    again = sec.on_op(ObjectOp(5, PUT, 0, 0, "b/x", ("b/frame-000004",)))
    assert again.removed == ("b/frame-000004",) and again.reply is None


@pytest.mark.parametrize("budget", [0, 1])
def test_the_secondary_honours_a_small_budget(budget: int) -> None:
    sec = ObjectSecondaryCore(LinksPredictor(), OrderedDict())
    sec.on_op(ObjectOp(1, PUT, 0, 0, "b/f-001"))
    change = sec.on_op(ObjectOp(2, PUT, int(ObjectFlag.MISS), budget, "b/f-002"))
    assert change.reply is not None and len(change.reply) == 1 + budget


def test_an_added_reply_does_not_bring_back_a_name_a_later_op_evicted() -> None:
    """Found by the simulator: the secondary added N for an earlier miss, then removes it for a
    later op's eviction; taking N back into the copy from the earlier reply would leave the
    copy claiming a name the secondary's record no longer holds."""
    core = resynced(connected(record=("b/n",), capacity=3, budget=1))
    core.submit(1, PUT, "b/a", b"{}", b"")
    (first,) = sent(core.actions())  # a miss, waiting for OBJ_ADDED
    core.submit(2, PUT, "b/b", b"{}", b"")
    (second,) = sent(core.actions())
    assert second.removals == ("b/n",)  # b/n was clean: evicted to make room
    core.receive(ObjectAdded(first.seq, ("b/a", "b/n")))  # b/n predicted for the first miss
    assert "b/n" not in core.copy and "b/a" in core.copy


def test_concurrent_misses_cannot_overfill_the_record() -> None:
    core = resynced(connected(record=(), capacity=4, budget=1))
    for op_id, name in enumerate(("b/a", "b/b", "b/c"), start=1):
        core.submit(op_id, PUT, name, b"{}", b"")
    ops = sent(core.actions())
    assert [o.budget for o in ops] == [1, 1]  # the third waits for room: 2 + 2 fill 4
    for op in ops:
        core.receive(ObjectAdded(op.seq, (op.name, op.name + "-next")))
    assert len(core.copy) == 4


# -- prefix entries (objects/entries.py) ------------------------------------------------------------

class FakeIndex:
    """The primary's store, as a set of names (the core's LocalIndex)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def weigh(self, directory: str, limit: int) -> tuple[int, int] | None:
        under = self.names_under(directory)
        return None if len(under) > limit else (len(under), sum(len(n) for n in under))

    def names_under(self, directory: str) -> list[str]:
        return sorted(n for n in self.names if n.startswith(directory))

    def has(self, name: str) -> bool:
        return name in self.names


DIR = "b/d/\x00"  # the prefix entry of b/d/


def with_index(names: set[str], capacity: int = 16, prefix_max: int = 4,
               record: tuple[str, ...] = (), may_differ: tuple[str, ...] = ()) -> ObjectPrimaryCore:
    core = ObjectPrimaryCore(ObjectConfig(Mode.LOOKAHEAD, capacity, 1 << 20, 2, prefix_max),
                             may_differ, dict, local_index=FakeIndex(names))
    core.connected()
    core.actions()
    core.receive(ObjectList(1, int(ListWhat.RECORD), tuple((n, "") for n in record)))
    return core


def put(core: ObjectPrimaryCore, op_id: int, name: str) -> ObjectOp:
    """Submit a PUT: the op it sends."""
    core.submit(op_id, PUT, name, b"{}", b"")
    (op,) = sent(core.actions())
    return op


def commit(core: ObjectPrimaryCore, op_id: int, name: str, store: set[str]) -> None:
    core.committed(op_id, True)
    store.add(name)
    core.actions()


def test_a_miss_offers_the_directory_and_a_taken_prefix_entry_makes_first_writes_hits() -> None:
    store = {"b/d/a", "b/d/b"}
    core = with_index(store)
    op = put(core, 1, "b/d/c")
    assert op.flags & ObjectFlag.MISS and op.flags & ObjectFlag.PREFIX
    core.receive(ObjectAdded(op.seq, ("b/d/c", DIR)))
    assert core.actions() == [CommitLocal(1)]
    commit(core, 1, "b/d/c", store)
    # b/d/c is in the prefix entry's weight (2 held + the first write), not an entry of its own
    assert list(core.copy) == [DIR] and core.copy.weight(DIR)[0] == 3
    hit = put(core, 2, "b/d/new")  # never written, never predicted: a hit
    assert not hit.flags & ObjectFlag.MISS and hit.removals == ("b/d/c",)
    assert core.copy.weight(DIR)[0] == 4 and core.copy.names == 4


def test_a_full_prefix_entry_sends_a_first_write_the_miss_path() -> None:
    store = {"b/d/a", "b/d/b", "b/d/c"}
    core = with_index(store, prefix_max=4)
    op = put(core, 1, "b/d/x")
    core.receive(ObjectAdded(op.seq, ("b/d/x", DIR)))
    core.actions()
    commit(core, 1, "b/d/x", store)
    assert core.copy.weight(DIR)[0] == 4
    overwrite = put(core, 2, "b/d/a")  # an overwrite does not grow it: a hit
    assert not overwrite.flags & ObjectFlag.MISS
    commit(core, 2, "b/d/a", store)
    first = put(core, 3, "b/d/y")  # a fifth name: the entry may not grow past 4
    assert first.flags & ObjectFlag.MISS and not first.flags & ObjectFlag.PREFIX
    assert core.copy.weight(DIR)[0] == 4


def test_a_directory_over_the_bound_is_never_offered() -> None:
    store = {f"b/d/{i}" for i in range(5)}
    core = with_index(store, prefix_max=4)
    op = put(core, 1, "b/d/new")
    assert op.flags & ObjectFlag.MISS and not op.flags & ObjectFlag.PREFIX


def test_a_prefix_entry_that_no_longer_fits_is_weighed_again_and_dropped() -> None:
    store = {"b/d/a"}
    core = with_index(store, prefix_max=2)
    op = put(core, 1, "b/d/c")
    assert op.flags & ObjectFlag.PREFIX
    store.update({"b/d/e", "b/d/f"})  # written meanwhile (as exact names, say)
    core.receive(ObjectAdded(op.seq, ("b/d/c", DIR)))
    core.actions()
    assert DIR not in core.copy and "b/d/c" in core.copy
    commit(core, 1, "b/d/c", store)
    core.submit(2, PUT, "b/x", b"{}", b"")
    (carrier,) = sent(core.actions())
    assert DIR in carrier.removals  # the secondary sheds what the copy did not take


def test_connect_resyncs_every_name_under_a_recorded_prefix_entry_on_either_site() -> None:
    store = {"b/d/here"}
    core = with_index(store, record=(DIR,))
    (request,) = [a.message for a in core.actions() if isinstance(a, SendObject)]
    assert request == ObjectListRequest(2, int(ListWhat.UNDER), "b/d/")
    # the secondary also holds b/d/gone, deleted here while the link was down: resynced too
    core.receive(ObjectList(2, int(ListWhat.UNDER), (("b/d/gone", "e1"),), more=True))
    assert core.actions() == []
    core.receive(ObjectList(2, int(ListWhat.UNDER), (("b/d/here", "e2"),)))
    names, _ = read_each(core, store)
    assert sorted(names) == ["b/d/gone", "b/d/here"]
    assert DIR in core.copy


def test_a_prefix_entry_in_may_differ_leaves_it_once_its_names_are_durably_resynced() -> None:
    store = {"b/d/a"}
    core = with_index(store, may_differ=(DIR,))
    (request,) = [a.message for a in core.actions() if isinstance(a, SendObject)]
    core.receive(ObjectList(request.request, int(ListWhat.UNDER), (("b/d/z", "e"),)))
    ops = sent(read_each(core, store)[1])
    assert {(o.name, o.kind) for o in ops} == {("b/d/a", PUT), ("b/d/z", int(ObjectKind.DELETE))}
    assert core.may_differ == {DIR}
    core.receive(ObjectDurable(max(o.seq for o in ops)))
    assert core.may_differ == set() and core.in_sync


def test_a_recorded_prefix_entry_too_heavy_at_connect_moves_to_may_differ() -> None:
    store = {f"b/d/{i}" for i in range(6)}  # written while the link was down
    core = with_index(store, prefix_max=4, record=(DIR,))
    actions = core.actions()
    assert actions[0] == PersistMayDiffer(frozenset({DIR}))  # durably, before the removal
    assert DIR not in core.copy


def test_the_secondary_records_the_directory_when_offered_and_predicted() -> None:
    sec = ObjectSecondaryCore(LinksPredictor(), OrderedDict())
    sec.on_op(ObjectOp(1, PUT, 0, 0, "b/d/a"))
    change = sec.on_op(ObjectOp(2, PUT, int(ObjectFlag.MISS | ObjectFlag.PREFIX), 2, "b/d/b"))
    assert change.reply is not None and DIR in change.reply and DIR in sec.record
    assert not any(n.startswith("b/d/") and n != "b/d/b" for n in change.reply if n != DIR)
    lone = sec.on_op(ObjectOp(3, PUT, int(ObjectFlag.MISS | ObjectFlag.PREFIX), 2, "b/e/first"))
    assert lone.reply is not None and "b/e/\x00" not in lone.reply  # no sibling: not a directory
    unoffered = sec.on_op(ObjectOp(4, PUT, int(ObjectFlag.MISS), 2, "b/e/second"))
    assert unoffered.reply is not None and "b/e/\x00" not in unoffered.reply


def test_the_deliberate_bug_replies_a_prefix_entry_the_record_does_not_keep() -> None:
    from foresync.faults import Faults

    sec = ObjectSecondaryCore(LinksPredictor(), OrderedDict(),
                              Faults(object_prefix_entry_not_covering=True))
    sec.on_op(ObjectOp(1, PUT, 0, 0, "b/d/a"))
    change = sec.on_op(ObjectOp(2, PUT, int(ObjectFlag.MISS | ObjectFlag.PREFIX), 2, "b/d/b"))
    assert change.reply is not None and DIR in change.reply and DIR not in sec.record


# -- the window -----------------------------------------------------------------------------------

def windowed(window: int, mode: Mode = Mode.LOOKAHEAD) -> ObjectPrimaryCore:
    core = ObjectPrimaryCore(ObjectConfig(mode, 64, 1 << 20, 0, 0, window), (), dict)
    core.connected()
    core.actions()
    core.receive(ObjectList(1, int(ListWhat.RECORD), tuple((f"b/{n}", "") for n in "abcd")))
    return resynced(core)


def test_a_put_beyond_the_window_waits_until_room_is_durable_again() -> None:
    core = windowed(10)
    core.submit(1, PUT, "b/a", b"{}", b"x" * 8)
    (first,) = sent(core.actions())
    assert core.window_used == 8 and first.data == b"x" * 8
    core.committed(1, True)
    assert core.actions() == [AnswerClient(1)]  # a hit: answered, its data still in flight
    core.submit(2, PUT, "b/b", b"{}", b"y" * 8)
    core.submit(3, PUT, "b/c", b"{}", b"z")  # would fit, but comes after a waiting op
    assert core.actions() == [] and core.statistics().waiting_window == 2
    core.receive(ObjectDurable(first.seq))
    assert [o.name for o in sent(core.actions())] == ["b/b", "b/c"]
    assert core.window_used == 9


def test_an_object_larger_than_the_window_goes_alone() -> None:
    core = windowed(10)
    core.submit(1, PUT, "b/a", b"{}", b"x" * 50)
    (big,) = sent(core.actions())
    core.submit(2, PUT, "b/b", b"{}", b"y")
    assert sent(core.actions()) == []
    core.receive(ObjectDurable(big.seq))
    assert [o.name for o in sent(core.actions())] == ["b/b"]


def test_a_lost_link_lets_waiting_ops_go_the_link_down_way() -> None:
    core = windowed(10)
    core.submit(1, PUT, "b/a", b"{}", b"x" * 10)
    core.actions()
    core.submit(2, PUT, "b/b", b"{}", b"y")
    assert core.actions() == []
    core.disconnected()
    actions = core.actions()
    assert PersistMayDiffer(frozenset({"b/a", "b/b"})) in actions or \
        PersistMayDiffer(frozenset({"b/b"})) in actions
    assert CommitLocal(2) in actions and core.window_used == 0


def test_the_core_lets_go_of_an_objects_data_once_sent() -> None:
    core = windowed(1 << 20)
    core.submit(1, PUT, "b/a", b"{}", b"x" * 100)
    core.actions()
    assert all(not op.data for op in core._ops.values())


# -- buckets --------------------------------------------------------------------------------------

def test_a_bucket_op_while_the_link_is_down_is_marked_and_resynced_after_its_objects() -> None:
    core = ObjectPrimaryCore(ObjectConfig(Mode.LOOKAHEAD), (), dict)
    core.submit(1, int(ObjectKind.BUCKET_DELETE), "old", b"", b"")
    assert core.actions() == [PersistMayDiffer(frozenset({"old"})), CommitLocal(1)]
    core.committed(1, True)
    core.actions()
    core.submit(2, int(ObjectKind.DELETE), "old/k", b"", b"")  # (in truth before the bucket)
    core.actions()
    core.committed(2, True)
    core.actions()
    core.connected()
    core.actions()
    core.receive(ObjectList(1, int(ListWhat.RECORD), ()))
    names, actions = read_each(core, set())
    assert names == ["old/k", "old"]  # a bucket after the names: its objects go first
    assert [(o.name, o.kind) for o in sent(actions)] == [
        ("old/k", int(ObjectKind.DELETE)), ("old", int(ObjectKind.BUCKET_DELETE))]


def test_a_bucket_op_is_marked_before_the_change_sent_after_it_and_cleared_once_durable() -> None:
    core = resynced(connected(Mode.LOOKAHEAD))
    core.submit(1, int(ObjectKind.BUCKET_CREATE), "new", b"", b"")
    # marked durably before the local change: a crash right after it cannot lose the bucket
    assert core.actions() == [PersistMayDiffer(frozenset({"new"})), CommitLocal(1)]
    core.committed(1, True)
    (op,) = sent(actions := core.actions())
    assert op.flags & ObjectFlag.DURABLE and AnswerClient(1) not in actions
    core.receive(ObjectDurable(op.seq))
    assert core.actions() == [PersistMayDiffer(frozenset()), AnswerClient(1)]
    core.submit(2, int(ObjectKind.BUCKET_DELETE), "full", b"", b"")
    core.actions()
    core.committed(2, False)  # BucketNotEmpty: nothing changed, nothing sent
    assert core.actions() == [PersistMayDiffer(frozenset()), AnswerClient(2)]


def test_a_bucket_op_lost_with_the_link_stays_marked() -> None:
    core = resynced(connected(Mode.LOOKAHEAD))
    core.submit(1, int(ObjectKind.BUCKET_DELETE), "old", b"", b"")
    core.actions()
    core.committed(1, True)
    core.actions()
    core.disconnected()
    assert core.actions() == [AnswerClient(1)] and core.may_differ == {"old"}


# -- multipart: parts as ops on names of their own, a small COMPLETE (objects/parts.py) ----------

PART, COMPLETE = int(ObjectKind.PART), int(ObjectKind.COMPLETE)
UPLOAD = "0123456789abcdef0123456789abcdef"


def test_parts_are_predicted_by_the_secondary_and_a_complete_goes_small() -> None:
    core = connected(capacity=16, budget=3)
    secondary = ObjectSecondaryCore(LinksPredictor())
    names = [part_name("b", UPLOAD, n) for n in range(1, 5)]
    core.submit(1, PART, names[0], b"{}", b"part one")
    miss = sent(core.actions())[0]
    assert miss.flags & ObjectFlag.MISS and miss.kind == PART
    change = secondary.on_op(miss)
    assert change.reply == tuple(names)  # the upload's next parts, within the budget
    core.receive(ObjectAdded(miss.seq, change.reply))
    core.actions()
    core.committed(1, True)
    for op_id, name in enumerate(names[1:], 2):
        core.submit(op_id, PART, name, b"{}", b"part")
        actions = core.actions()
        assert not sent(actions)[0].flags & ObjectFlag.MISS  # a hit: predicted
        assert CommitLocal(op_id) in actions
        core.committed(op_id, True)
    assert core.complete_is_small(tuple(names))
    core.submit(9, COMPLETE, "b/big", b"completion", b"", tuple(names))
    op = sent(core.actions())[0]
    assert op.kind == COMPLETE and op.data == b"" and op.meta == b"completion"


def test_a_part_written_while_the_link_is_down_holds_a_complete_until_its_resync_is_durable() -> None:
    core = ObjectPrimaryCore(ObjectConfig(Mode.LOOKAHEAD, 16, 1 << 20, 2), (), dict)
    name = part_name("b", UPLOAD, 1)
    core.submit(1, PART, name, b"{}", b"x")
    assert PersistMayDiffer(frozenset({name})) in core.actions()
    core.committed(1, True)
    core.actions()
    assert not core.complete_is_small((name,))
    core.connected()
    core.actions()
    core.receive(ObjectList(1, int(ListWhat.RECORD), ()))
    read = [a for a in core.actions() if isinstance(a, ReadForResync)]
    assert [r.name for r in read] == [name] and not core.complete_is_small((name,))
    # The adapter asked before the link came back, and submits the small op now: it waits.
    core.submit(2, COMPLETE, "b/big", b"completion", b"", (name,))
    assert sent(core.actions()) == []
    core.resync_read(read[0].op_id, b"{}", b"x")
    resync = sent(core.actions())
    assert [o.kind for o in resync] == [PART] and resync[0].flags & ObjectFlag.RESYNC
    core.receive(ObjectDurable(resync[0].seq))
    op = sent(core.actions())[0]  # after the part, in the stream
    assert op.kind == COMPLETE and op.seq > resync[0].seq and core.complete_is_small((name,))


@pytest.mark.parametrize("mode", [Mode.LOOKAHEAD, Mode.ASYNC])
def test_a_part_sent_and_lost_with_the_link_is_marked(mode: Mode) -> None:
    core = connected(mode, capacity=16)
    name = part_name("b", UPLOAD, 2)
    core.submit(1, PART, name, b"{}", b"x")
    if mode is Mode.LOOKAHEAD:
        core.receive(ObjectAdded(sent(core.actions())[0].seq, (name,)))
    core.committed(1, True)
    core.actions()
    assert core.complete_is_small((name,))
    core.disconnected()
    assert PersistMayDiffer(frozenset({name})) in core.actions()


def test_the_deliberate_bug_sends_a_complete_small_before_its_parts_are_there() -> None:
    core = ObjectPrimaryCore(ObjectConfig(Mode.LOOKAHEAD, 16, 1 << 20, 2), (part_name("b", UPLOAD, 1),),
                             dict, Faults(object_complete_before_parts_durable=True))
    assert core.complete_is_small((part_name("b", UPLOAD, 1),))
