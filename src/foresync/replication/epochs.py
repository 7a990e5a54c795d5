"""Who is primary, and whether both sites took writes: lineages compared on connect (issue 4,
issue 13), as in DRBD's generation UUIDs. The one place this decision is made.

A site's *lineage* has two histories of random 64-bit ids, oldest first:

* ``epochs``: one id per promotion. Its length is the epoch number shown to the operator.
* ``generations``: one id per promotion too, and one more each time a primary starts taking
  writes while it cannot reach its secondary (the first such write waits until the new id is
  durable in site.json). So a generation names the data a site holds, where an epoch names a
  role. A secondary adopts its primary's whole lineage when it admits the primary's HELLO, and an
  old primary adopts the new primary's when it steps down (DEMOTE).

Two sites that meet compare their generations (``relation``):

* SAME: equal; replicate, after resyncing what may differ.
* PEER_NEWER: ours is a strict prefix of theirs; the peer went on from where we last agreed and
  we did not, so we are the outdated side (an old primary steps down and receives the failback).
* PEER_OLDER: the reverse.
* DIVERGED: neither is a prefix of the other. Both sites made new generations since their last
  common one: both took writes the other lacks (split brain: a primary cut off kept writing while
  the secondary was promoted, or both sites were promoted). Nothing is replicated and nothing is
  overwritten until an operator runs ``foresync resolve --discard-local`` on one side.

The epoch histories are compared as well: they travel with the generations and are adopted with
them, so they always agree, and any disagreement counts as DIVERGED (doubt widens to the safe
side). A lineage from before generations existed (site.json format without them, an empty list
on the wire) has its epoch history as its generations, which is what it was then.

``meeting`` turns a relation into what the site does, for each place two sites meet: a
secondary screening a HELLO (admission.py), a primary that another primary dialled (its link
listener) and a primary told to step down (DEMOTE).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from foresync.faults import NO_FAULTS, Faults


class Relation(Enum):
    SAME = "same"
    PEER_NEWER = "peer_newer"
    PEER_OLDER = "peer_older"
    DIVERGED = "diverged"


@dataclass(frozen=True, slots=True)
class Lineage:
    """What a site's data and role descend from (see the module notes)."""

    epochs: tuple[int, ...]
    generations: tuple[int, ...] = ()  # () : the epochs (a lineage from before generations)

    @property
    def epoch(self) -> int:
        return len(self.epochs)

    @property
    def data(self) -> tuple[int, ...]:
        return self.generations or self.epochs

    def with_generation(self, generation_id: int) -> Lineage:
        """A primary starts writing without its secondary: a new data generation."""
        return Lineage(self.epochs, (*self.data, generation_id))

    def promoted(self, epoch_id: int) -> Lineage:
        """A promotion starts an epoch and a generation, both named by ``epoch_id``."""
        return Lineage((*self.epochs, epoch_id), (*self.data, epoch_id))


def compare(mine: tuple[int, ...], theirs: tuple[int, ...]) -> Relation:
    """The relation of two histories of ids (see the module notes)."""
    if mine == theirs:
        return Relation.SAME
    shorter = min(len(mine), len(theirs))
    if mine[:shorter] != theirs[:shorter]:
        return Relation.DIVERGED
    return Relation.PEER_NEWER if len(theirs) > len(mine) else Relation.PEER_OLDER


def relation(mine: Lineage, theirs: Lineage, faults: Faults = NO_FAULTS) -> Relation:
    """Our peer's lineage relative to ours: generations decide, epochs must agree."""
    by_epoch = compare(mine.epochs, theirs.epochs)
    if faults.split_brain_as_failback:
        return by_epoch  # deliberately wrong: see faults.py (the rule before issue 13)
    by_data = compare(mine.data, theirs.data)
    if by_epoch is Relation.SAME or by_epoch is by_data:
        return by_data
    return Relation.DIVERGED  # the epochs diverged, or disagree with the data: never made by us


class Meeting(Enum):
    """What a site does about the peer it met."""

    REPLICATE = "replicate"  # the same lineage: go on (a secondary admits its primary)
    FOLLOW = "follow"  # the peer is newer: adopt its lineage (a primary steps down)
    DEMOTE_PEER = "demote_peer"  # the peer is an outdated primary: it must step down (failback)
    SPLIT_BRAIN = "split_brain"  # both took writes: refuse, an operator chooses


_MEETINGS = {Relation.SAME: Meeting.REPLICATE, Relation.PEER_NEWER: Meeting.FOLLOW,
             Relation.PEER_OLDER: Meeting.DEMOTE_PEER, Relation.DIVERGED: Meeting.SPLIT_BRAIN}


def meeting(mine: Lineage, theirs: Lineage, faults: Faults = NO_FAULTS) -> Meeting:
    return _MEETINGS[relation(mine, theirs, faults)]


def new_epoch_id(rng: random.Random | None = None) -> int:
    """A fresh epoch or generation id; never 0, so an empty slot can never match one."""
    source = rng or random.SystemRandom()
    return source.randrange(1, 1 << 64)
