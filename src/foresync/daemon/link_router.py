"""A daemon's one link listener for many volumes (issue 16): each connection names its volume.

With ``[[volume]]`` tables the dialler's first message (after TLS and authentication) is ROUTE,
the volume's name (link/wire.py). The router hands the connection to that volume's current
runner (``adopt_link``: the secondary's link, or a primary's listener for an old primary coming
back), which then sees the HELLO and everything after it as on a listener of its own. Each
volume keeps its own connection, record, window and epoch: one busy volume's frames never
queue in front of another's (docs/benchmarks.md measures why this is the choice).

A connection that names no volume, or one not served here, gets REFUSE and is closed. One that
names a volume changing role right now (no runner takes connections for a moment) is refused
too; the dialler retries. A failure before any volume is named (TLS, authentication) goes to
every volume's runner, as its own listener would have reported it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from foresync.config import listen_error
from foresync.link import wire
from foresync.link.transport import LinkListener, LinkProtocol, LinkSecurity
from foresync.logctx import LogBudget, VolumeContext
from foresync.replication import routing

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a volume's connections go now: its runner's ``adopt_link`` and ``link_refused``."""

    adopt: Callable[[LinkProtocol], None]
    refused: Callable[[str], None]


class LinkRouter:
    def __init__(self, security: LinkSecurity, listen: tuple[str, int]) -> None:
        self._security = security
        self._listen = listen
        self._listener = LinkListener(self._new_connection, security, self._refused)
        self.volumes: dict[str, Route | None] = {}  # every volume served; None while switching
        self._refusals = LogBudget(log, logging.WARNING, "unroutable link connections")

    async def start(self) -> None:
        try:
            await self._listener.start(*self._listen)
        except OSError as exc:
            raise listen_error("[link] listen", self._listen, exc) from None

    def close(self) -> None:
        self._listener.close()

    def route(self, volume: str, route: Route | None) -> None:
        self.volumes[volume] = route

    def remove(self, volume: str) -> None:
        self.volumes.pop(volume, None)

    def _new_connection(self) -> LinkProtocol:
        proto = LinkProtocol(lambda m: self._first(proto, m), lambda: None, self._security,
                             dialler=False, on_error=self._refused)
        return proto

    def _refused(self, reason: str) -> None:
        for route in list(self.volumes.values()):
            if route is not None:
                route.refused(reason)

    def _first(self, proto: LinkProtocol, message: wire.Message) -> None:
        serving = {name: route is not None for name, route in self.volumes.items()}
        decision = routing.route(message, serving)
        target = self.volumes.get(decision.volume) if decision.volume is not None else None
        if decision.verdict is not routing.Verdict.ADOPT or target is None:
            self._refuse(proto, wire.RefuseCode(decision.code), decision.reason)
            return
        # This connection's callbacks run in the context its transport was made in, one of its
        # own (the listener's accept task): its log lines now name the volume.
        VolumeContext.current.set(decision.volume)
        target.adopt(proto)

    def _refuse(self, proto: LinkProtocol, code: wire.RefuseCode, reason: str) -> None:
        self._refusals("link: refused a connection from %s: %s", proto.peer, reason)
        proto.rebind(_ignore, _nothing, _ignore)  # frames behind the refused one (its HELLO)
        proto.send(wire.Refuse(reason, code))
        proto.close_after_flush(reason)


def gate_one_volume(proto: LinkProtocol, name: str, on_message: Callable[[wire.Message], None],
                    on_batch_end: Callable[[], None], on_error: Callable[[str], None]) -> None:
    """A one-volume site's own listener: a dialler from a daemon of many volumes names its
    volume first (ROUTE). Ours is taken (and the ROUTE dropped); another name is refused as a
    stranger. A dialler that names none (another one-volume site) goes on as before. After the
    first message the connection is the site's, at no cost per message."""
    def first(message: wire.Message) -> None:
        proto.rebind(on_message, on_batch_end, on_error)
        if not isinstance(message, wire.Route):
            on_message(message)
            return
        if message.volume != name:
            reason = f"this site serves volume {name!r}, not {message.volume!r}"
            log.warning("link: refused a connection from %s: %s", proto.peer, reason)
            proto.rebind(_ignore, _nothing, _ignore)
            proto.send(wire.Refuse(reason, wire.RefuseCode.STRANGER))
            proto.close_after_flush(reason)

    proto.rebind(first, on_batch_end, on_error)


def _ignore(_: object) -> None:
    pass


def _nothing() -> None:
    pass
