"""``screen_hello``: which HELLOs may replace the secondary's session, and what a refusal says."""

from __future__ import annotations

import pytest

from foresync.faults import Faults
from foresync.link import wire
from foresync.replication.admission import Admitted, Identity, Refused, screen_hello
from foresync.replication.epochs import Relation

OURS = bytes(range(16))
THEIRS = bytes(range(100, 116))
SIZE, EXTENT = 64 << 20, 1 << 20


def hello(volume_id: bytes = OURS, history: tuple[int, ...] = (7,), size: int = SIZE,
          extent_size: int = EXTENT, version: int = wire.PROTOCOL_VERSION) -> wire.Hello:
    return wire.Hello(version, wire.Role.PRIMARY, 0, volume_id, size, extent_size, len(history),
                      history)


def identity(volume_id: bytes | None = OURS, history: tuple[int, ...] = (7,),
             discard_local: bool = False) -> Identity:
    return Identity(volume_id, SIZE, EXTENT, history, discard_local)


def test_another_volume_is_refused_without_naming_ours() -> None:
    verdict = screen_hello(hello(THEIRS), identity())
    assert isinstance(verdict, Refused) and not verdict.split_brain
    assert THEIRS.hex() in verdict.reason and OURS.hex() not in verdict.reason
    assert OURS.hex() in verdict.detail and THEIRS.hex() in verdict.detail  # our log says both


def test_the_deliberate_bug_admits_another_volume() -> None:
    assert isinstance(screen_hello(hello(THEIRS), identity(), Faults(admit_strangers=True)),
                      Admitted)


@pytest.mark.parametrize(("changes", "named"), [
    ({"size": SIZE // 2}, (str(SIZE // 2), str(SIZE))),
    ({"extent_size": 2 * EXTENT}, (str(2 * EXTENT), str(EXTENT))),
    ({"version": 11}, ("protocol version 11",)),
    # a peer from before WRITES (issue 15) would refuse its frames: refused at HELLO, by name
    ({"version": 8}, ("protocol version 8, we speak 10",)),
    # a peer from before RESYNC_DONE_ACK (issue 25) would never answer RESYNC_DONE, and its
    # primary would report in sync before our copy recorded the pass: refused by name too
    ({"version": 9}, ("protocol version 9, we speak 10",)),
])
def test_geometry_and_version_are_refused_naming_both_values(changes: dict[str, int],
                                                             named: tuple[str, ...]) -> None:
    for ours in (identity(), identity(volume_id=None, history=())):  # a new secondary too
        verdict = screen_hello(hello(**changes), ours)  # type: ignore[arg-type]
        assert isinstance(verdict, Refused)
        assert all(value in verdict.reason for value in named), verdict.reason


def test_a_new_secondary_adopts_the_first_matching_primary() -> None:
    assert screen_hello(hello(THEIRS, (1, 2)), identity(volume_id=None, history=())) == Admitted(
        Relation.PEER_NEWER, adopt_identity=True, adopt_history=True)


@pytest.mark.parametrize(("ours", "theirs", "expected"), [
    ((7,), (7,), Admitted(Relation.SAME, adopt_identity=False, adopt_history=False)),
    ((7,), (7, 8), Admitted(Relation.PEER_NEWER, adopt_identity=False, adopt_history=True)),
])
def test_the_same_or_a_newer_history_is_admitted(ours: tuple[int, ...], theirs: tuple[int, ...],
                                                 expected: Admitted) -> None:
    assert screen_hello(hello(history=theirs), identity(history=ours)) == expected


def test_an_older_primary_is_refused() -> None:
    verdict = screen_hello(hello(history=(7,)), identity(history=(7, 8)))
    assert isinstance(verdict, Refused) and "older than ours (epoch 2)" in verdict.reason


def test_diverged_histories_are_a_split_brain_unless_local_changes_are_discarded() -> None:
    verdict = screen_hello(hello(history=(7, 9)), identity(history=(7, 8)))
    assert isinstance(verdict, Refused) and verdict.split_brain
    assert screen_hello(hello(history=(7, 9)), identity(history=(7, 8), discard_local=True)) == Admitted(
        Relation.DIVERGED, adopt_identity=False, adopt_history=True)


def test_a_primary_that_wrote_while_cut_off_is_a_split_brain_for_a_promoted_site() -> None:
    """Issue 13: the epochs alone say "outdated primary"; its data generation says otherwise."""
    cut_off = wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, OURS, SIZE, EXTENT, 1, (7,),
                         (), (7, 50))
    promoted = Identity(OURS, SIZE, EXTENT, (7, 8), generations=(7, 8))
    verdict = screen_hello(cut_off, promoted)
    assert isinstance(verdict, Refused) and verdict.code is wire.RefuseCode.SPLIT_BRAIN
    # Its own secondary, never promoted, follows it: the new generation is simply newer.
    assert screen_hello(cut_off, identity()) == Admitted(Relation.PEER_NEWER, adopt_identity=False,
                                                         adopt_history=True)


# -- a consistency group's members (issue 16 part 2): equal in size, byte for byte ---------------

GROUP = (("data", 8 << 20), ("wal", 3000000))


def group_hello(sizes: tuple[int, ...], names: tuple[str, ...] | None = None) -> wire.Hello:
    named = tuple(name for name, _ in GROUP)[:len(sizes)] if names is None else names
    return wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, OURS, SIZE, EXTENT, 1, (7,),
                      (), (), sizes, named)


def group_identity(members: tuple[tuple[str, int], ...] = GROUP) -> Identity:
    return Identity(OURS, SIZE, EXTENT, (7,), group="db" if members else "", members=members)


def test_a_group_whose_members_match_is_admitted() -> None:
    assert isinstance(screen_hello(group_hello((8 << 20, 3000000)), group_identity()), Admitted)


def test_a_member_differing_within_its_last_extent_is_refused_naming_group_member_and_sizes() -> None:
    """3000000 and 3000512 bytes both pad to 3 MiB: the unit's size alone cannot tell them apart."""
    verdict = screen_hello(group_hello((8 << 20, 3000512)), group_identity())
    assert isinstance(verdict, Refused) and verdict.code is wire.RefuseCode.MISMATCH
    assert verdict.reason == "group 'db' member 'wal' is 3000512 bytes at the primary, 3000000 bytes here"
    assert OURS.hex() not in verdict.reason


@pytest.mark.parametrize(("names", "named"), [
    (("wal", "data"), "group 'db' has members data, wal here, in this order; the primary's are wal, data"),
    (("data", "log"), "group 'db' has members data, wal here, in this order; the primary's are data, log"),
])
def test_members_named_or_ordered_otherwise_are_refused(names: tuple[str, ...], named: str) -> None:
    """Two members of one size in another order give the same sizes: each member's writes would
    land in the other's file here. Only the names tell."""
    equal = (("data", 4 << 20), ("wal", 4 << 20))
    verdict = screen_hello(group_hello((4 << 20, 4 << 20), names), group_identity(equal))
    assert isinstance(verdict, Refused) and verdict.code is wire.RefuseCode.MISMATCH
    assert verdict.reason == named, verdict.reason
    admitted = screen_hello(group_hello((4 << 20, 4 << 20), names), group_identity(equal),
                            Faults(group_member_names_unchecked=True))
    assert isinstance(admitted, Admitted)  # the deliberate bug (faults.py)


@pytest.mark.parametrize(("sizes", "members", "named"), [
    ((8 << 20,), GROUP, "group 'db' has 2 member volumes here (data, wal), the primary's has 1"),
    ((), GROUP, "group 'db' has 2 member volumes here (data, wal); the primary serves a single volume"),
    ((8 << 20, 3000000), (), "the primary serves a consistency group of 2 member volumes; this site "
     "serves a single volume"),
])
def test_a_group_against_another_shape_is_refused(sizes: tuple[int, ...],
                                                  members: tuple[tuple[str, int], ...],
                                                  named: str) -> None:
    verdict = screen_hello(group_hello(sizes), group_identity(members))
    assert isinstance(verdict, Refused) and verdict.code is wire.RefuseCode.MISMATCH
    assert named in verdict.reason, verdict.reason
