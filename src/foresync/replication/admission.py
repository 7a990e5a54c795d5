"""Whether a HELLO on a new link connection may replace the secondary's current session.

Theory of operation. Without a link secret anyone who reaches the link port can send a HELLO.
Taking the new connection over first and checking it afterwards (as the secondary once did) let
any such stranger drop the healthy primary's link and reset the session, and each one forced the
primary to resend its record. So every HELLO is screened here first, on its own connection,
against what the site already is: protocol version, volume identity, size, extent size, a
consistency group's member sizes and the lineage relation (epochs.py decides it). Only an
``Admitted`` HELLO may touch the current session; a ``Refused`` one is answered on its own
connection and closed.

A refusal carries a code (``wire.RefuseCode``: what the peer acts on) and two texts. ``reason`` goes to the peer in a REFUSE and names only what the peer
sent or what it must know to fix its own side (both sizes, both epochs); it never names our volume
identity, which would tell a stranger what to claim. ``detail`` is logged locally and may.
"""

from __future__ import annotations

from dataclasses import dataclass

from foresync.faults import NO_FAULTS, Faults
from foresync.link import wire
from foresync.replication.epochs import Lineage, Meeting, Relation, meeting, relation


@dataclass(frozen=True, slots=True)
class Identity:
    """What the secondary already is."""

    volume_id: bytes | None  # None: a new secondary, it adopts the first primary's
    size: int
    extent_size: int
    history: tuple[int, ...]
    discard_local: bool = False  # `resolve --discard-local`: adopt the next primary's history
    generations: tuple[int, ...] = ()  # data generations (epochs.py); () : the history
    group: str = ""  # a consistency group's name; "" for a volume
    members: tuple[tuple[str, int], ...] = ()  # the group's (member volume, size in bytes)

    @property
    def lineage(self) -> Lineage:
        return Lineage(self.history, self.generations)


@dataclass(frozen=True, slots=True)
class Admitted:
    relation: Relation  # of the peer's history to ours (PEER_NEWER when we adopt it)
    adopt_identity: bool  # a new secondary: take the peer's volume identity and history
    adopt_history: bool  # store the peer's lineage as ours (newer, or discard_local)


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # for the peer's REFUSE: never names our volume identity
    detail: str  # for our log
    code: wire.RefuseCode = wire.RefuseCode.OTHER

    @property
    def split_brain(self) -> bool:
        return self.code is wire.RefuseCode.SPLIT_BRAIN


def lineage_of(hello: wire.Hello) -> Lineage:
    return Lineage(tuple(hello.history), tuple(hello.generations))


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


def member_problems(hello: wire.Hello, group: str, members: tuple[tuple[str, int], ...],
                    faults: Faults = NO_FAULTS) -> list[str]:
    """Why a HELLO cannot be for our consistency group ``group`` of ``members`` (name, size):
    the members must match between the sites by name and order, and byte for byte in size. The
    unit's size and extent size alone miss a member that differs within its last extent, since
    each member is padded to whole extents (group_layout.py): the bytes past the smaller one
    would then be a member's on one site and padding on the other. Two members of one size
    listed in another order on the other site give the same sizes: each member's writes would
    land in the other's file there, so the names are compared too. A volume (no members)
    against a group is refused too."""
    theirs = hello.member_sizes
    if (not members and not theirs) or faults.group_member_sizes_unchecked:  # the latter: faults.py
        return []
    if not members:
        return [f"the primary serves a consistency group of {len(theirs)} member volumes; this "
                "site serves a single volume"]
    names = ", ".join(name for name, _ in members)
    if not theirs:
        return [f"group {group!r} has {len(members)} member volumes here ({names}); the primary "
                "serves a single volume or named no members"]
    if len(theirs) != len(members):
        return [f"group {group!r} has {len(members)} member volumes here ({names}), the "
                f"primary's has {len(theirs)}"]
    problems = [f"group {group!r} member {name!r} is {size} bytes at the primary, {mine} bytes here"
                for (name, mine), size in zip(members, theirs, strict=True) if size != mine]
    ours_named = tuple(name for name, _ in members)
    if hello.member_names != ours_named and not faults.group_member_names_unchecked:  # faults.py
        theirs_named = ", ".join(hello.member_names) or "(none)"
        problems.append(f"group {group!r} has members {names} here, in this order; the primary's "
                        f"are {theirs_named}")
    return problems


def screen_hello(hello: wire.Hello, ours: Identity, faults: Faults = NO_FAULTS) -> Admitted | Refused:
    """Decide on a HELLO without changing anything."""
    problems = geometry_problems(hello, ours.size, ours.extent_size)
    problems += member_problems(hello, ours.group, ours.members, faults)
    if problems:
        text = "; ".join(problems)
        return Refused(text, text, wire.RefuseCode.MISMATCH)
    if ours.volume_id is None:
        return Admitted(Relation.PEER_NEWER, adopt_identity=True, adopt_history=True)
    theirs = lineage_of(hello)
    if faults.admit_strangers:  # deliberately wrong: see faults.py
        return Admitted(relation(ours.lineage, theirs, faults), adopt_identity=False,
                        adopt_history=False)
    if hello.volume_id != ours.volume_id:
        # Another volume altogether (a primary re-initialised, a wrong peer address, a stranger):
        # its history is unrelated to ours, and calling that a split brain would mislead.
        hint = ("to pair this site with that volume instead, re-initialise it with "
                "`foresync init --force`")
        return Refused(f"volume identity {hello.volume_id.hex()} is not ours; {hint}",
                       f"volume identity {hello.volume_id.hex()} is not ours "
                       f"({ours.volume_id.hex()}); {hint}", wire.RefuseCode.STRANGER)
    mine = ours.lineage
    found = relation(mine, theirs, faults)
    if ours.discard_local and found is not Relation.SAME:
        return Admitted(found, adopt_identity=False, adopt_history=True)
    verdict = meeting(mine, theirs, faults)
    if verdict is Meeting.REPLICATE:
        return Admitted(found, adopt_identity=False, adopt_history=False)
    if verdict is Meeting.FOLLOW or not mine.epochs:
        return Admitted(found, adopt_identity=False, adopt_history=True)
    if verdict is Meeting.DEMOTE_PEER:
        reason = (f"its lineage (epoch {theirs.epoch}) is older than ours (epoch {mine.epoch}): "
                  "it is an outdated primary and must become secondary")
        return Refused(reason, reason, wire.RefuseCode.OUTDATED)
    return Refused(split_brain_reason(mine, theirs), split_brain_reason(mine, theirs),
                   wire.RefuseCode.SPLIT_BRAIN)


def split_brain_reason(mine: Lineage, theirs: Lineage) -> str:
    """What a split brain refusal says: both epochs, and what the operator must do."""
    return (f"split brain: both sites took writes since they last agreed (ours epoch {mine.epoch}, "
            f"theirs epoch {theirs.epoch}); run `foresync resolve --discard-local` on the site "
            "whose changes should be thrown away")


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """What a primary does about a message on its link listener, where only another primary
    dials: the meeting (None if it was refused before the lineages were compared), the reply to
    send before closing (DEMOTE or REFUSE; None: wait for the peer's own DEMOTE), and a line for
    our log. On DEMOTE_PEER the adapter first makes the peer's out-of-sync set ours, durably."""

    meeting: Meeting | None
    reply: wire.Message | None
    detail: str


def screen_peer_primary(message: wire.Message, volume_id: bytes, ours: Lineage,
                        faults: Faults = NO_FAULTS) -> PeerAnswer:
    """Decide on a peer primary's first message without changing anything."""
    if not isinstance(message, wire.Hello) or message.volume_id != volume_id:
        got = (f"a HELLO for volume {message.volume_id.hex()}, ours is {volume_id.hex()}"
               if isinstance(message, wire.Hello) else f"{type(message).__name__} first, not HELLO")
        # Said to the peer without our identity (it may be a stranger); logged in full.
        return PeerAnswer(None, wire.Refuse("this site is a primary of another volume or epoch",
                                            wire.RefuseCode.STRANGER), got)
    theirs = lineage_of(message)
    verdict = meeting(ours, theirs, faults)
    if verdict is Meeting.DEMOTE_PEER:
        return PeerAnswer(verdict, wire.Demote(ours.epochs, ours.data),
                          f"old primary (epoch {theirs.epoch}) connected: told it to step down; "
                          f"{len(message.out_of_sync)} of its extents join the failback")
    if verdict is Meeting.FOLLOW:
        return PeerAnswer(verdict, None, f"a primary of a later epoch ({theirs.epoch}) dialled us; "
                                         "waiting for its DEMOTE")
    if verdict is Meeting.SPLIT_BRAIN:
        reason = split_brain_reason(ours, theirs)
        return PeerAnswer(verdict, wire.Refuse(reason, wire.RefuseCode.SPLIT_BRAIN), reason)
    return PeerAnswer(verdict, wire.Refuse("two primaries share one lineage",
                                           wire.RefuseCode.TWO_PRIMARIES),
                      "another primary with our lineage")
