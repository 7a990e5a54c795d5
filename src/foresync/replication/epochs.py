"""Who is primary: epoch histories compared on connect (issue 4), as in DRBD's generation UUIDs.

Every promotion appends a fresh random 64-bit id to the promoted site's epoch history, so two
sites promoted separately never share an id. On connect:

* SAME: the histories are equal; replicate, after resyncing what may differ.
* PEER_NEWER: ours is a strict prefix of theirs; the peer was promoted after we last agreed, so
  we are the outdated side (an old primary becomes secondary and receives the failback).
* PEER_OLDER: the reverse.
* DIVERGED: neither is a prefix of the other; both sites took writes in different epochs (split
  brain). Nothing is replicated until an operator discards one side.
"""

from __future__ import annotations

import random
from enum import Enum


class Relation(Enum):
    SAME = "same"
    PEER_NEWER = "peer_newer"
    PEER_OLDER = "peer_older"
    DIVERGED = "diverged"


def compare(mine: tuple[int, ...], theirs: tuple[int, ...]) -> Relation:
    if mine == theirs:
        return Relation.SAME
    shorter = min(len(mine), len(theirs))
    if mine[:shorter] != theirs[:shorter]:
        return Relation.DIVERGED
    return Relation.PEER_NEWER if len(theirs) > len(mine) else Relation.PEER_OLDER


def new_epoch_id(rng: random.Random | None = None) -> int:
    """A fresh epoch id; never 0, so an empty slot can never match one."""
    source = rng or random.SystemRandom()
    return source.randrange(1, 1 << 64)
