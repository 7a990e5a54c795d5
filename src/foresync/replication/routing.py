"""Routing a link connection to its volume, in a daemon of many volumes (issue 16).

Theory of operation. A daemon with ``[[volume]]`` tables has one link listener for all its
volumes, and each volume's primary dials it with a connection of its own. The dialler's first
message, once TLS and authentication are done, is ROUTE with its volume's name (link protocol
6). ``route`` decides what becomes of the connection from that one message and the volumes the
daemon serves, without changing anything: it is pure, so the daemon's router
(daemon/link_router.py) and the seeded simulator (testing/sim/routing.py) run the same decision.

* ROUTE naming a volume whose runner takes connections now: hand it to that volume, and only
  to it. This is the rule everything rests on: a new secondary adopts the identity, history and
  data of whichever primary greets it first, so a connection handed to the wrong volume would
  make one volume a copy of another.
* ROUTE naming a volume served here that is switching role this moment: refused, retry later.
* ROUTE naming a volume not served here: refused as a stranger.
* Anything else first (a one-volume peer's HELLO, protocol 5): refused; the peer must name its
  volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from foresync.faults import NO_FAULTS, Faults
from foresync.link import wire


class Verdict(Enum):
    ADOPT = "adopt"
    SWITCHING = "switching"
    UNKNOWN = "unknown"
    UNNAMED = "unnamed"


@dataclass(frozen=True, slots=True)
class Routing:
    verdict: Verdict
    volume: str | None  # the volume that takes the connection (ADOPT only)
    reason: str = ""  # for REFUSE and the log, when refused
    code: int = wire.RefuseCode.OTHER


def route(first: wire.Message, serving: Mapping[str, bool], faults: Faults = NO_FAULTS) -> Routing:
    """Where the connection whose first message is ``first`` goes. ``serving``: every volume
    of the daemon -> whether its runner takes connections now (False while it switches role)."""
    if not isinstance(first, wire.Route):
        return Routing(Verdict.UNNAMED, None,
                       "this daemon serves several volumes ([[volume]] tables): the dialler must "
                       "name its volume first (ROUTE, link protocol 6); is the peer a one-volume "
                       "config?", wire.RefuseCode.MISMATCH)
    name = first.volume
    if faults.route_ignores_name:  # deliberately wrong: see faults.py
        taking = [volume for volume, up in serving.items() if up]
        if taking:
            return Routing(Verdict.ADOPT, taking[0])
    if name not in serving:
        return Routing(Verdict.UNKNOWN, None,
                       f"no volume named {name!r} here (serving {', '.join(sorted(serving)) or 'none'})",
                       wire.RefuseCode.STRANGER)
    if not serving[name]:
        return Routing(Verdict.SWITCHING, None, f"volume {name!r} is changing role here; retry")
    return Routing(Verdict.ADOPT, name)
