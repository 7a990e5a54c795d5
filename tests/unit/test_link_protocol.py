"""The link adapter's gate, in memory: a fake transport stands in for the socket."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from foresync.link import wire
from foresync.link.transport import LinkListener, LinkProtocol, LinkSecurity, setup_timeout_reason

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


@pytest.mark.parametrize(("dialler", "secret", "authenticated", "expected"), [
    (False, False, True, "192.0.2.1:4242 connected but sent no HELLO within 10 s"),
    (True, False, True, "192.0.2.1:4242 accepted the connection but did not answer our HELLO "
                        "within 10 s"),
    (False, True, False, "192.0.2.1:4242 did not complete link authentication within 10 s"),
    (True, True, False, "192.0.2.1:4242 did not complete link authentication within 10 s"),
    (False, True, True, "192.0.2.1:4242 connected but sent no HELLO within 10 s"),
])
def test_a_setup_timeout_names_what_did_not_happen(dialler: bool, secret: bool, authenticated: bool,
                                                    expected: str) -> None:
    reason = setup_timeout_reason("192.0.2.1:4242", 10.0, dialler=dialler, secret=secret,
                                  authenticated=authenticated)
    assert reason == expected
    assert "TLS" not in reason  # the deadline starts after any TLS handshake


async def _listen(security: LinkSecurity, errors: list[str]) -> tuple[LinkListener, int]:
    listener = LinkListener(lambda: LinkProtocol(lambda m: None, lambda: None, security,
                                                 dialler=False, on_error=errors.append),
                            security, errors.append)
    await listener.start("127.0.0.1", 0)
    return listener, listener._socks[0].getsockname()[1]


def test_a_silent_peer_is_reported_as_sending_no_hello(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        errors: list[str] = []
        listener, port = await _listen(LinkSecurity(setup_timeout_s=0.3), errors)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed by the deadline
        writer.close()
        listener.close()
        assert len(errors) == 1 and "connected but sent no HELLO within 0.3 s" in errors[0], errors

    with caplog.at_level(logging.WARNING):
        asyncio.run(body())
    assert "sent no HELLO" in caplog.text
    assert "TLS" not in caplog.text and "authentication" not in caplog.text


def test_closing_the_listener_closes_connections_in_setup_quietly(
        caplog: pytest.LogCaptureFixture) -> None:
    """A site changing role closes its listener: a connection still in setup there is closed
    at once, not left to run into the deadline and be reported as a stalled peer."""
    async def body() -> None:
        errors: list[str] = []
        listener, port = await _listen(LinkSecurity(setup_timeout_s=0.5), errors)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)  # accepted
        listener.close()
        assert await asyncio.wait_for(reader.read(), timeout=0.4) == b""  # before the deadline
        writer.close()
        await asyncio.sleep(0.6)  # past the deadline: nothing more happens
        assert errors == []

    with caplog.at_level(logging.WARNING):
        asyncio.run(body())
    assert caplog.text == ""
