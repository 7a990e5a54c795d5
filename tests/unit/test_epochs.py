"""``replication/epochs.py``: the one decision made when two sites meet (issue 13), and the
places that use it (admission.screen_peer_primary, PrimaryCore on DEMOTE and REFUSE)."""

from __future__ import annotations

import pytest

from foresync.faults import Faults
from foresync.link import wire
from foresync.record.record import Eviction
from foresync.replication import primary as pcore
from foresync.replication.admission import screen_peer_primary
from foresync.replication.epochs import Lineage, Meeting, Relation, compare, meeting, relation
from foresync.replication.primary import Config, Mode, PrimaryCore

VOLUME = bytes(range(16))
BASE = Lineage((1,), (1,))
CUT_OFF = BASE.with_generation(50)  # the old primary kept writing while cut off
PROMOTED = BASE.promoted(7)  # the secondary was promoted meanwhile


@pytest.mark.parametrize(("mine", "theirs", "expected"), [
    ((1,), (1,), Relation.SAME),
    ((1,), (1, 7), Relation.PEER_NEWER),
    ((1, 7), (1,), Relation.PEER_OLDER),
    ((1, 7), (1, 8), Relation.DIVERGED),
    ((2,), (1, 7), Relation.DIVERGED),
])
def test_compare_histories(mine: tuple[int, ...], theirs: tuple[int, ...], expected: Relation) -> None:
    assert compare(mine, theirs) is expected


def test_a_plain_failback_is_automatic() -> None:
    """The old primary took no write after the cut: the promoted site is simply newer."""
    assert meeting(PROMOTED, BASE) is Meeting.DEMOTE_PEER
    assert meeting(BASE, PROMOTED) is Meeting.FOLLOW


def test_a_cut_off_primary_that_kept_writing_meets_a_split_brain() -> None:
    """Both made a new generation since the last common one: neither side may overwrite."""
    assert relation(PROMOTED, CUT_OFF) is Relation.DIVERGED
    assert meeting(CUT_OFF, PROMOTED) is Meeting.SPLIT_BRAIN
    assert meeting(PROMOTED, CUT_OFF) is Meeting.SPLIT_BRAIN


def test_the_deliberate_bug_compares_epochs_only() -> None:
    bug = Faults(split_brain_as_failback=True)
    assert meeting(PROMOTED, CUT_OFF, bug) is Meeting.DEMOTE_PEER


def test_a_secondary_follows_a_primary_that_wrote_while_cut_off() -> None:
    """No promotion happened: the newer generation is simply newer data, as a new epoch is."""
    assert meeting(BASE, CUT_OFF) is Meeting.FOLLOW
    assert meeting(BASE, CUT_OFF.promoted(9)) is Meeting.FOLLOW


def test_epochs_that_disagree_with_the_data_count_as_diverged() -> None:
    """A stepped-down site holds the newer epochs before the failback brings their data: a
    promotion of it must never look newer than the primary whose data it lacks."""
    stepped_down = Lineage(PROMOTED.epochs, BASE.data)
    assert meeting(stepped_down, PROMOTED) is Meeting.FOLLOW
    promoted_again = stepped_down.promoted(11)
    assert meeting(promoted_again, PROMOTED.with_generation(12)) is Meeting.SPLIT_BRAIN
    assert meeting(Lineage((1, 7), (1,)), Lineage((1,), (1, 7))) is Meeting.SPLIT_BRAIN


def test_a_lineage_from_before_generations_uses_its_epochs() -> None:
    assert Lineage((1, 7)).data == (1, 7)
    assert meeting(Lineage((1,)), PROMOTED) is Meeting.FOLLOW


def _hello(lineage: Lineage, oos: tuple[int, ...] = ()) -> wire.Hello:
    return wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, VOLUME, 1 << 20, 4096,
                      lineage.epoch, lineage.epochs, oos, lineage.data)


def test_a_primary_tells_an_older_one_to_step_down_and_refuses_a_diverged_one_by_code() -> None:
    answer = screen_peer_primary(_hello(BASE, (3, 4)), VOLUME, PROMOTED)
    assert answer.meeting is Meeting.DEMOTE_PEER
    assert answer.reply == wire.Demote(PROMOTED.epochs, PROMOTED.data)
    answer = screen_peer_primary(_hello(CUT_OFF), VOLUME, PROMOTED)
    assert answer.meeting is Meeting.SPLIT_BRAIN
    assert isinstance(answer.reply, wire.Refuse) and answer.reply.code == wire.RefuseCode.SPLIT_BRAIN
    stranger = screen_peer_primary(_hello(BASE), bytes(16), PROMOTED)
    assert stranger.meeting is None and isinstance(stranger.reply, wire.Refuse)
    assert stranger.reply.code == wire.RefuseCode.STRANGER


def _core(lineage: Lineage) -> PrimaryCore:
    config = Config(Mode.LOOKAHEAD, 1 << 20, 4096, 4, 1, Eviction.LRU, VOLUME,
                    history=lineage.epochs, generations=lineage.data, new_id=lambda: 99)
    return PrimaryCore(config, read=lambda offset, length: bytes(length))


def test_the_core_acts_on_the_refuse_code_not_its_text() -> None:
    core = _core(BASE)
    core.connected()
    core.receive(wire.Refuse("anything at all", wire.RefuseCode.SPLIT_BRAIN))
    assert core.statistics().split_brain
    other = _core(BASE)
    other.connected()
    other.receive(wire.Refuse("split brain, says the text", wire.RefuseCode.OTHER))
    assert not other.statistics().split_brain


def test_the_core_steps_down_on_a_newer_demote_and_refuses_a_diverged_one() -> None:
    core = _core(BASE)
    core.connected()
    core.actions()
    core.receive(wire.Demote(PROMOTED.epochs, PROMOTED.data))
    assert pcore.BecomeSecondary(PROMOTED) in core.actions()
    cut_off = _core(CUT_OFF)
    cut_off.connected()
    cut_off.actions()
    cut_off.receive(wire.Demote(PROMOTED.epochs, PROMOTED.data))
    actions = cut_off.actions()
    assert not any(isinstance(a, pcore.BecomeSecondary) for a in actions)
    assert any(isinstance(a, pcore.LinkFailed) for a in actions)
    assert cut_off.statistics().split_brain
