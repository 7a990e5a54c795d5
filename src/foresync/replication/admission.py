"""Whether a HELLO on a new link connection may replace the secondary's current session.

Theory of operation. Without a link secret anyone who reaches the link port can send a HELLO.
Taking the new connection over first and checking it afterwards (as the secondary once did) let
any such stranger drop the healthy primary's link and reset the session, and each one forced the
primary to resend its record. So every HELLO is screened here first, on its own connection,
against what the site already is: protocol version, volume identity, size, extent size and the
epoch-history relation. Only an ``Admitted`` HELLO may touch the current session; a ``Refused``
one is answered on its own connection and closed.

A refusal carries two texts. ``reason`` goes to the peer in a REFUSE and names only what the peer
sent or what it must know to fix its own side (both sizes, both epochs); it never names our volume
identity, which would tell a stranger what to claim. ``detail`` is logged locally and may.
"""

from __future__ import annotations

from dataclasses import dataclass

from foresync.faults import NO_FAULTS, Faults
from foresync.link import wire
from foresync.replication.epochs import Relation, compare


@dataclass(frozen=True, slots=True)
class Identity:
    """What the secondary already is."""

    volume_id: bytes | None  # None: a new secondary, it adopts the first primary's
    size: int
    extent_size: int
    history: tuple[int, ...]
    discard_local: bool = False  # `resolve --discard-local`: adopt the next primary's history


@dataclass(frozen=True, slots=True)
class Admitted:
    relation: Relation  # of the peer's history to ours (PEER_NEWER when we adopt it)
    adopt_identity: bool  # a new secondary: take the peer's volume identity and history
    adopt_history: bool  # store the peer's history as ours (newer, or discard_local)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # for the peer's REFUSE: never names our volume identity
    detail: str  # for our log
    split_brain: bool = False


def geometry_problems(hello: wire.Hello, size: int, extent_size: int) -> list[str]:
    """Why a HELLO cannot be for our volume whatever its identity: protocol, size, extent size."""
    problems = []
    if hello.version != wire.PROTOCOL_VERSION:
        problems.append(f"protocol version {hello.version}, we speak {wire.PROTOCOL_VERSION}")
    if hello.size != size:
        problems.append(f"volume size {hello.size} bytes differs from ours, {size} bytes")
    if hello.extent_size != extent_size:
        problems.append(f"extent size {hello.extent_size} bytes differs from ours, "
                        f"{extent_size} bytes")
    return problems


def screen_hello(hello: wire.Hello, ours: Identity, faults: Faults = NO_FAULTS) -> Admitted | Refused:
    """Decide on a HELLO without changing anything."""
    problems = geometry_problems(hello, ours.size, ours.extent_size)
    if problems:
        text = "; ".join(problems)
        return Refused(text, text)
    if ours.volume_id is None:
        return Admitted(Relation.PEER_NEWER, adopt_identity=True, adopt_history=True)
    if faults.admit_strangers:  # deliberately wrong: see faults.py
        return Admitted(compare(ours.history, tuple(hello.history)), adopt_identity=False,
                        adopt_history=False)
    if hello.volume_id != ours.volume_id:
        # Another volume altogether (a primary re-initialised, a wrong peer address, a stranger):
        # its history is unrelated to ours, and calling that a split brain would mislead.
        hint = ("to pair this site with that volume instead, re-initialise it with "
                "`foresync init --force`")
        return Refused(f"volume identity {hello.volume_id.hex()} is not ours; {hint}",
                       f"volume identity {hello.volume_id.hex()} is not ours "
                       f"({ours.volume_id.hex()}); {hint}")
    mine, theirs = ours.history, tuple(hello.history)
    relation = compare(mine, theirs)
    if ours.discard_local and relation is not Relation.SAME:
        return Admitted(relation, adopt_identity=False, adopt_history=True)
    if relation is Relation.SAME:
        return Admitted(relation, adopt_identity=False, adopt_history=False)
    if relation is Relation.PEER_NEWER or not mine:
        return Admitted(relation, adopt_identity=False, adopt_history=True)
    if relation is Relation.PEER_OLDER:
        reason = (f"its epoch history (epoch {len(theirs)}) is older than ours (epoch {len(mine)}): "
                  "it is an outdated primary and must become secondary")
        return Refused(reason, reason)
    reason = (f"split brain: epoch histories diverged (ours epoch {len(mine)}, theirs epoch "
              f"{len(theirs)}); run `foresync resolve --discard-local` on the site whose changes "
              "should be thrown away")
    return Refused(reason, reason, split_brain=True)
