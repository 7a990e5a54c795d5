"""The primary's data generations: a cut-off primary's writes start a new one, durably, first.

Theory of operation (issue 13; lineages and how two meet are in epochs.py). A secondary claims
the data generations its primary's HELLO carried only at that session's RESYNC_DONE, once a pass
has brought their data (secondary.py ``ResyncFinished``). While the link is down (or not yet
past its handshake), a write the secondary may lack is about to be applied or answered: if our
newest generation is one the secondary may hold (``fresh`` is False: a RESYNC_DONE went out since
we made it, or this process does not know), ``open`` starts a new generation and
asks the adapter to store it (``PersistGeneration``). Until ``persisted`` no op applies locally
and none is answered (``storing``; the core checks it in ``_try_apply``/``_maybe_finish``, and
FLUSH/FUA answers due meanwhile are ``held``). So a secondary promoted meanwhile meets our
lineage as diverged (split brain), never as an older one to fail back over, which would
silently overwrite the writes that started the generation.

A generation stored after a HELLO went out (the link came up during the persist) is one the
secondary would not claim at RESYNC_DONE: the core drops that link (``REGREET``) to greet it again
with it. That happens at most once per reconnection: the new generation is ``fresh`` until the
next RESYNC_DONE, so host writes during the next handshake start none (before, ``greeting`` ran
at every HELLO, and a host writing steadily restarted every handshake: the link never came back
while it wrote).

``claimed`` says the secondary holds our whole lineage: a RESYNC_DONE went out since our newest
generation was stored and none has been started since (with [cluster], the primary then clears
the ``outdated`` mark it wrote in etcd before the generation's first answer, lease.py).

``Generations`` is a plain part owned by ``PrimaryCore`` (as resync.py and verify.py are): it
queues actions through the ``persist`` callback and imports nothing of the core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from foresync.errors import invariant
from foresync.faults import NO_FAULTS, Faults
from foresync.replication.epochs import Lineage

# Why the core drops a link whose HELLO carried a lineage that has since grown (``persisted``).
REGREET = "a new data generation started after the HELLO: greeting the secondary again with it"

_Op = TypeVar("_Op")


class Generations(Generic[_Op]):
    """This primary's lineage and the generation being stored, if any."""

    def __init__(self, lineage: Lineage, new_id: Callable[[], int],
                 persist: Callable[[int, Lineage], None], faults: Faults = NO_FAULTS) -> None:
        self._faults = faults
        self.lineage = lineage
        self._new_id = new_id  # mints a generation id (seeded in the simulator)
        self._persist = persist  # queues PersistGeneration(token, lineage)
        self.fresh = False  # our newest generation is one the secondary never saw
        self.claimed = False  # the secondary holds ``lineage`` whole (see the module notes)
        self._tokens = 0
        self.next: Lineage | None = None  # being stored: no op lands or is answered meanwhile
        self._held: list[_Op] = []  # FUA writes and FLUSHes flushed meanwhile

    @property
    def storing(self) -> bool:
        return self.next is not None

    def greeting(self) -> None:
        """RESYNC_DONE goes out: the secondary may claim the generations our HELLO carried, so
        a write answered after this connection ends needs a new generation. A generation being
        stored is not among them (the HELLO carried the lineage before it) and its ``outdated``
        mark may stand already (a failed store is retried after the mark): not claimed then."""
        self.fresh = False
        self.claimed = self.next is None or self._faults.generation_claimed_while_stored

    def open(self) -> None:
        """A write the secondary may lack is about to land or be answered with the link down:
        start a new generation unless the newest is one the secondary never saw, or one is
        being stored already."""
        if self.fresh or self.next is not None:
            return
        self.claimed = False
        self._tokens += 1
        self.next = self.lineage.with_generation(self._new_id())
        self._persist(self._tokens, self.next)

    def hold(self, op: _Op) -> None:
        """An answer due while a generation is being stored: given back by ``persisted``."""
        self._held.append(op)

    def persisted(self, token: int) -> list[_Op]:
        """``PersistGeneration(token)`` is durable: it is our lineage now. Returns the answers
        held meanwhile, in order."""
        invariant(token == self._tokens and self.next is not None,
                  f"unknown generation persist token {token}")
        assert self.next is not None
        self.lineage, self.next = self.next, None
        self.fresh = True
        self.claimed = False  # a greeting meanwhile carried the lineage before this one
        held, self._held = self._held, []
        return held
