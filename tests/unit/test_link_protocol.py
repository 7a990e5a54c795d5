"""The link adapter's gate, in memory: a fake transport stands in for the socket."""

from __future__ import annotations

import asyncio
from typing import Any

from foresync.link import wire
from foresync.sites.link import LinkProtocol, LinkSecurity

SECRET = b"0123456789abcdef-link-secret"


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 4242) if name == "peername" else default

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def test_a_challenge_relayed_from_our_own_dialler_is_refused() -> None:
    """A primary dials and listens with one secret: its dialler's challenge, relayed to its own
    listener, must not be answered (the answer would authenticate the relay)."""

    async def body() -> None:
        security = LinkSecurity(secret=SECRET)
        errors: list[str] = []
        delivered: list[wire.Message] = []
        dialler = LinkProtocol(delivered.append, lambda: None, security, dialler=True)
        dialler.connection_made(FakeTransport())  # type: ignore[arg-type]
        challenge = next(m for m in wire.FrameDecoder().feed(b"".join(dialler._out)))
        assert isinstance(challenge, wire.AuthChallenge)
        listener_transport = FakeTransport()
        listener = LinkProtocol(delivered.append, lambda: None, security, dialler=False,
                                on_error=errors.append)
        listener.connection_made(listener_transport)  # type: ignore[arg-type]
        listener.data_received(wire.encode_frame(challenge))
        assert errors == ["authentication failed: the peer relayed our own challenge"]
        assert listener_transport.aborted and not delivered
        assert not any(isinstance(m, wire.AuthResponse)
                       for m in wire.FrameDecoder().feed(b"".join(listener._out)))
        # A fresh challenge from elsewhere is answered as usual.
        other = LinkProtocol(delivered.append, lambda: None, security, dialler=False)
        other.connection_made(FakeTransport())  # type: ignore[arg-type]
        other.data_received(wire.encode_frame(wire.AuthChallenge(b"\x05" * 32)))
        assert isinstance(wire.FrameDecoder().feed(b"".join(other._out))[0], wire.AuthResponse)
        for proto in (dialler, listener, other):
            proto.connection_lost(None)
        assert not LinkProtocol._in_setup_order and not LinkProtocol._dialler_nonces

    asyncio.run(body())


def test_the_oldest_unauthenticated_connection_gives_way() -> None:
    async def body() -> None:
        security = LinkSecurity(secret=SECRET, max_pending_setups=2)
        transports = [FakeTransport() for _ in range(3)]
        protos = [LinkProtocol(lambda m: None, lambda: None, security, dialler=False) for _ in range(3)]
        for proto, transport in zip(protos, transports, strict=True):
            proto.connection_made(transport)  # type: ignore[arg-type]
        assert [t.aborted for t in transports] == [True, False, False]
        assert list(LinkProtocol._in_setup_order) == protos[1:]
        for proto in protos:
            proto.connection_lost(None)
        assert not LinkProtocol._in_setup_order

    asyncio.run(body())
