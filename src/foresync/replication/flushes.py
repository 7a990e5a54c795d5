"""Flush tickets and the two durability watermarks of the primary.

Theory of operation. Local durability is an fdatasync the adapter runs for a *ticket*: the core
issues ``FlushLocal(ticket)`` and notes the applied prefix at that moment (every op with a seq
at or below it has been applied locally). The adapter starts the fdatasync after it takes the
action, so when ``flushed(ticket)`` comes back everything in that prefix is on disk: the local
watermark (``local_durable``) moves up to it. Tickets complete in order (the adapter coalesces
concurrent ones into one fdatasync), so a ticket also completes every earlier one.

A host FLUSH, or a FUA write once it is applied, waits for a fresh ticket (``wait``); a failed
fdatasync answers every waiter up to that ticket with EIO and moves no watermark.

The remote watermark (``remote_durable``) is the secondary's DURABLE; ``request_sync`` asks for
it with SYNC, at most once per sequence number. Together the two watermarks say which record
extents are clean (durable on both sites, evictable) and when a resync pass may end.

The early watermark (issue 14: a miss that finds clean slots running short asks at once rather
than at the next timer tick) goes through ``request_early``: it asks only while no SYNC is
unanswered and no local fdatasync is in flight. Asked on every such miss, as it was, it kept
the secondary's image fdatasync running back to back (1,531 image fdatasyncs beside 1,120
journal commits in a 7 s lookahead run at 1/4, 2,000 writes/s), and those share the disk, and
ext4's journal, with the journal commits every miss waits for; on the primary each ask was an
executor hop and an fdatasync. One request in flight per site loses nothing the next one would
not bring: the answer to it covers everything asked for meanwhile up to a round trip later.
A SYNC counts as answered at its DURABLE, or at the ADDED of a miss sent after it: the
secondary has read the SYNC by then. The secondary answers every SYNC with a DURABLE covering it
once the writes it names are applied there (a SYNC sent just before its own miss names a write
not yet there: secondary.py remembers it, ``_sync_ahead``, issue 25; before that it was clamped to
what was applied and the rest never answered). The ADDED rule stays as a belt: it frees the
early request a round trip sooner than a DURABLE that waits for a journal commit and a data sync.

Pure: the owner passes the applied prefix and the last seq in, and takes the waiters released;
FlushLocal and SYNC go out through the ``emit`` and ``send`` callbacks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from foresync.link import wire

W = TypeVar("W")  # what waits for a flush (the core's op)


class Flushes(Generic[W]):
    def __init__(self, flush_local: Callable[[int], None],
                 send: Callable[[wire.Message], None]) -> None:
        self._flush_local = flush_local  # emits FlushLocal(ticket)
        self._send = send
        self.tickets = 0  # FlushLocal actions issued
        self._ticket_prefix: dict[int, int] = {}  # ticket -> applied prefix when issued
        self._waits: deque[tuple[int, W]] = deque()  # (ticket, waiter) waiting for a flush
        self.local_durable = 0  # every seq <= this is applied and durable here
        self.remote_durable = 0  # every seq <= this is durable on the secondary
        self.sync_requested = 0  # the last seq a SYNC asked about (this session)
        self.sync_unanswered = False  # a SYNC went out and neither DURABLE nor a later ADDED came
        self.early_skipped = 0  # early requests not sent: one of their kind was in flight

    def issue(self, applied_prefix: int) -> int:
        """A new flush ticket. The adapter's fdatasync for it starts after this call, so it
        covers every op applied so far."""
        self.tickets += 1
        self._ticket_prefix[self.tickets] = applied_prefix
        self._flush_local(self.tickets)
        return self.tickets

    def request(self, applied_prefix: int) -> None:
        """A flush, unless one issued (or done) already covers the applied prefix."""
        pending = max(self._ticket_prefix.values(), default=self.local_durable)
        if applied_prefix > max(pending, self.local_durable):
            self.issue(applied_prefix)

    @property
    def waiting(self) -> bool:
        """Some FLUSH or FUA write waits for a flush to complete."""
        return bool(self._waits)

    def wait(self, waiter: W, applied_prefix: int) -> None:
        """``waiter`` (a FLUSH or an applied FUA write) is answered once a new ticket is done."""
        self._waits.append((self.issue(applied_prefix), waiter))

    def flushed(self, ticket: int) -> list[W]:
        """The fdatasync for ``ticket`` (or a later one) completed: the waiters it releases."""
        for done in [t for t in self._ticket_prefix if t <= ticket]:
            self.local_durable = max(self.local_durable, self._ticket_prefix.pop(done))
        return self._release(ticket)

    def failed(self, ticket: int) -> list[W]:
        """The fdatasync for ``ticket`` failed: the waiters to answer with EIO (the data may
        not be on disk); nothing it covered counts as durable."""
        self._ticket_prefix.pop(ticket, None)
        return self._release(ticket)

    def _release(self, ticket: int) -> list[W]:
        released: list[W] = []
        waits = self._waits
        while waits and waits[0][0] <= ticket:
            released.append(waits.popleft()[1])
        return released

    def request_sync(self, last_seq: int) -> None:
        """Ask the secondary for DURABLE up to ``last_seq`` (the link is up), once per seq."""
        if last_seq > self.remote_durable and last_seq > self.sync_requested:
            self.sync_requested = last_seq
            self.sync_unanswered = True
            self._send(wire.Sync(last_seq))

    def request_early(self, applied_prefix: int, last_seq: int | None) -> None:
        """Both watermarks, asked ahead of the timer (a miss found clean slots short): a local
        flush unless one is in flight, a SYNC up to ``last_seq`` (None: the link is down)
        unless one is unanswered. Only when they are asked changes, never what counts as
        durable, so no safety rests on it; the timer (``request``, ``request_sync``) still asks
        every interval whatever is in flight."""
        if not self._ticket_prefix:
            self.request(applied_prefix)
        else:
            self.early_skipped += 1
        if last_seq is not None:
            if not self.sync_unanswered:
                self.request_sync(last_seq)
            else:
                self.early_skipped += 1

    def on_durable(self, seq: int) -> None:
        self.remote_durable = max(self.remote_durable, seq)
        self.sync_unanswered = False

    def on_added(self, seq: int) -> None:
        """The ADDED of write ``seq``: a SYNC sent before that write has been read (see above)."""
        if seq >= self.sync_requested:
            self.sync_unanswered = False

    def session_reset(self) -> None:
        """A new session (WELCOME): the secondary reports its watermark afresh."""
        self.remote_durable = self.sync_requested = 0
        self.sync_unanswered = False
