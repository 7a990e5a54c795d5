"""daemon/link_router.py on LinkProtocol with a fake transport: ROUTE hands a connection to its
volume, and the HELLO behind it reaches that volume alone; a one-volume site's own listener takes
a ROUTE naming its volume and refuses another name."""

from __future__ import annotations

import asyncio

from test_link_protocol import FakeTransport

from foresync.daemon.link_router import LinkRouter, Route, gate_one_volume
from foresync.link import wire
from foresync.link.transport import LinkProtocol, LinkSecurity

HELLO = wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, bytes(16), 1 << 20, 1 << 20, 1)


def sent(proto: LinkProtocol, transport: FakeTransport) -> list[wire.Message]:
    proto._flush()
    return wire.FrameDecoder().feed(b"".join(transport.written))


def test_the_router_hands_each_connection_to_the_volume_it_names() -> None:
    async def body() -> None:
        router = LinkRouter(LinkSecurity(), ("127.0.0.1", 0))
        got: dict[str, list[wire.Message]] = {"a": [], "b": []}

        def adopt(name: str) -> Route:
            def take(proto: LinkProtocol) -> None:
                proto.rebind(got[name].append, lambda: None, lambda _: None)
            return Route(take, lambda _: None)

        router.route("a", adopt("a"))
        router.route("b", adopt("b"))
        router.route("c", None)  # switching role
        for name in ("b", "c", "z"):
            transport = FakeTransport()
            proto = router._new_connection()
            proto.connection_made(transport)  # type: ignore[arg-type]
            proto.data_received(wire.encode_frame(wire.Route(name)) + wire.encode_frame(HELLO))
            refusals = [m for m in sent(proto, transport) if isinstance(m, wire.Refuse)]
            if name == "b":
                assert not refusals
            else:
                assert len(refusals) == 1 and transport.aborted
            proto.connection_lost(None)
        assert got == {"a": [], "b": [HELLO]}
        unnamed = router._new_connection()
        transport = FakeTransport()
        unnamed.connection_made(transport)  # type: ignore[arg-type]
        unnamed.data_received(wire.encode_frame(HELLO))
        assert [m.code for m in sent(unnamed, transport) if isinstance(m, wire.Refuse)] == [
            wire.RefuseCode.MISMATCH]
        unnamed.connection_lost(None)

    asyncio.run(body())


def test_a_one_volume_listener_takes_its_own_name_and_refuses_another() -> None:
    async def body() -> None:
        for name, expected in (("vol0", [HELLO]), ("other", [])):
            delivered: list[wire.Message] = []
            proto = LinkProtocol(delivered.append, lambda: None, LinkSecurity(), dialler=False)
            gate_one_volume(proto, "vol0", delivered.append, lambda: None, lambda _: None)
            transport = FakeTransport()
            proto.connection_made(transport)  # type: ignore[arg-type]
            proto.data_received(wire.encode_frame(wire.Route(name)) + wire.encode_frame(HELLO))
            assert delivered == expected
            assert transport.aborted == (name == "other")
            proto.connection_lost(None)
        delivered = []  # a one-volume dialler names nothing: as before
        proto = LinkProtocol(delivered.append, lambda: None, LinkSecurity(), dialler=False)
        gate_one_volume(proto, "vol0", delivered.append, lambda: None, lambda _: None)
        proto.connection_made(FakeTransport())  # type: ignore[arg-type]
        proto.data_received(wire.encode_frame(HELLO))
        assert delivered == [HELLO]
        proto.connection_lost(None)

    asyncio.run(body())
