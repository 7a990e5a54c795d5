"""replication/routing.py: a link connection goes to the volume its ROUTE names, or is refused."""

from __future__ import annotations

from foresync.faults import Faults
from foresync.link import wire
from foresync.replication.routing import Verdict, route

SERVING = {"a": True, "b": False}
HELLO = wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, bytes(16), 1 << 20, 1 << 20, 1)


def test_a_named_volume_taking_connections_gets_it() -> None:
    decision = route(wire.Route("a"), SERVING)
    assert (decision.verdict, decision.volume) == (Verdict.ADOPT, "a")


def test_refusals_say_why_with_their_code() -> None:
    switching = route(wire.Route("b"), SERVING)
    assert (switching.verdict, switching.volume) == (Verdict.SWITCHING, None)
    assert "changing role" in switching.reason
    stranger = route(wire.Route("z"), SERVING)
    assert stranger.verdict is Verdict.UNKNOWN and stranger.code == wire.RefuseCode.STRANGER
    assert "no volume named 'z' here (serving a, b)" in stranger.reason
    unnamed = route(HELLO, SERVING)
    assert unnamed.verdict is Verdict.UNNAMED and unnamed.code == wire.RefuseCode.MISMATCH


def test_the_deliberate_bug_hands_it_to_another_volume() -> None:
    decision = route(wire.Route("b"), {"a": True, "b": True}, Faults(route_ignores_name=True))
    assert decision.volume == "a"
