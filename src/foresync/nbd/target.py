"""What the NBD server acts on: an interface between the protocol and the volume behind it.

The standalone server plugs in a local file; a replicating primary plugs in a target that mirrors
each write first. The server decodes a request's command and flags once (``NbdConnection._serve``)
and calls the typed method for it, so no target switches on raw NBD command numbers or flag bits.

Reads and block status are answered synchronously from local storage. Every other command
completes through a ``done(errno)`` callback, which may run immediately or later (after a flush,
or after the secondary acknowledges), so the fast path costs no task or future. ``done`` is
always the last argument, and each method calls it exactly once with 0 or an NBD errno.

A target may also offer ``write_many(items)``: plain (non-FUA) WRITEs parsed together, as a list
of (offset, data, done) in request order, each answered through its own ``done``. The server
calls it for two or more such writes in a row when the target has it (the replicating primary:
one core call and one link frame for the group, issue 15), and ``write`` otherwise. It is not
part of this Protocol, so that a target without it (the standalone server's) keeps the per-write
call.

A wrapping target (the fence, the trace, an export's window) offers ``write_many`` exactly when
the target it wraps does (``group_call``), and applies its own rule to each write of a group as
to a lone write: without it the wrapper would hide the groups, and one that passed the group on
untouched would skip its rule for grouped writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from foresync.geometry import Extent

Done = Callable[[int], None]  # called once with 0 or an NBD errno
WriteItems = Sequence[tuple[int, bytes, Done]]  # a group: (offset, data, done) in request order
WriteMany = Callable[[WriteItems], None]  # the optional group call


def group_call(target: object) -> WriteMany | None:
    """``target``'s ``write_many``, or None when it has none (or has it set to None, as a
    wrapper around a target without one does)."""
    call: WriteMany | None = getattr(target, "write_many", None)
    return call


class NbdTarget(Protocol):
    size: int
    read_only: bool

    def read(self, offset: int, length: int) -> bytes: ...

    def extents(self, offset: int, length: int) -> list[Extent]: ...

    def write(self, offset: int, data: bytes, fua: bool, done: Done) -> None:
        """NBD_CMD_WRITE; with ``fua`` the data is durable before ``done``."""

    def zero(self, offset: int, length: int, fua: bool, may_punch: bool, fast_only: bool,
             done: Done) -> None:
        """NBD_CMD_WRITE_ZEROES. ``may_punch`` is the absence of NO_HOLE; ``fast_only`` is
        FAST_ZERO: answer ENOTSUP rather than zero slowly."""

    def trim(self, offset: int, length: int, fua: bool, done: Done) -> None:
        """NBD_CMD_TRIM."""

    def flush(self, done: Done) -> None:
        """NBD_CMD_FLUSH: every write answered before it is durable when ``done`` runs."""

    def cache(self, offset: int, length: int, done: Done) -> None:
        """NBD_CMD_CACHE: a hint to read the range ahead."""
