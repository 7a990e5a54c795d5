"""FORCEDTLS negotiation in ``ServerHandshake`` (proto.md "TLS support"): what a server that
requires TLS answers before STARTTLS, how STARTTLS hands over to the adapter, and that nothing
negotiated in plaintext survives the upgrade."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_nbd_handshake import (
    C_FIXED_NEWSTYLE,
    C_NO_ZEROES,
    DISK,
    EXPORTS,
    FEEDS,
    Feed,
    client_flags,
    decode_replies,
    go_disk,
    info_payload,
    meta_payload,
    option,
    selected,
    types,
)

from foresync.errors import LocalProtocolError
from foresync.nbd.handshake import HandshakeFailed, HandshakeState, ServerHandshake, StartTls
from foresync.nbd.wire import Option, Reply


def forced() -> ServerHandshake:
    hs = ServerHandshake(EXPORTS, default_export="disk", tls=True)
    hs.data_to_send()
    hs.receive_data(client_flags(C_FIXED_NEWSTYLE | C_NO_ZEROES))
    return hs


def upgraded() -> ServerHandshake:
    hs = forced()
    hs.receive_data(option(Option.STARTTLS))
    assert types(decode_replies(hs.data_to_send())) == [(Option.STARTTLS, Reply.ACK)]
    assert isinstance(hs.next_event(), StartTls)
    hs.tls_established()
    return hs


@FEEDS
@pytest.mark.parametrize(
    ("opt", "payload"),
    [(Option.GO, info_payload("disk")), (Option.INFO, info_payload("disk")), (Option.LIST, b""),
     (Option.STRUCTURED_REPLY, b""), (Option.LIST_META_CONTEXT, meta_payload("disk")),
     (Option.SET_META_CONTEXT, meta_payload("disk", "base:allocation")), (99, b"junk")])
def test_every_option_but_starttls_and_abort_needs_tls_first(feed: Feed, opt: int, payload: bytes) -> None:
    hs = forced()
    feed(hs, option(opt, payload))
    (reply,) = decode_replies(hs.data_to_send())
    assert (reply.option, reply.type) == (opt, Reply.ERR_TLS_REQD)
    assert b"TLS" in reply.data
    assert hs.state is HandshakeState.NEGOTIATING and hs.next_event() is None


def test_export_name_before_tls_is_a_hard_disconnect() -> None:
    hs = forced()
    hs.receive_data(option(Option.EXPORT_NAME, b"disk"))
    assert hs.data_to_send() == b""  # EXPORT_NAME has no error reply: the only answer is to close
    event = hs.next_event()
    assert isinstance(event, HandshakeFailed) and "STARTTLS" in event.reason
    assert hs.state is HandshakeState.ERROR


def test_abort_is_allowed_before_tls() -> None:
    hs = forced()
    hs.receive_data(option(Option.ABORT))
    assert types(decode_replies(hs.data_to_send())) == [(Option.ABORT, Reply.ACK)]
    assert hs.state is HandshakeState.CLOSED


@FEEDS
def test_starttls_hands_over_to_the_adapter_then_negotiation_goes_on(feed: Feed) -> None:
    hs = forced()
    feed(hs, option(Option.STARTTLS))
    assert types(decode_replies(hs.data_to_send())) == [(Option.STARTTLS, Reply.ACK)]
    assert isinstance(hs.next_event(), StartTls)
    assert hs.state is HandshakeState.TLS_STARTING
    with pytest.raises(LocalProtocolError):
        hs.receive_data(b"\x16\x03\x01")  # the adapter must not feed the TLS handshake to us
    hs.tls_established()
    assert hs.tls_active and hs.state is HandshakeState.NEGOTIATING
    hs.receive_data(go_disk())
    assert selected(hs).export == DISK


def test_plaintext_pipelined_behind_starttls_is_a_violation() -> None:
    hs = forced()
    hs.receive_data(option(Option.STARTTLS) + go_disk())
    event = hs.next_event()
    assert isinstance(event, HandshakeFailed) and "after STARTTLS" in event.reason
    assert hs.state is HandshakeState.ERROR


def test_state_negotiated_before_tls_is_forgotten() -> None:
    """Plaintext negotiation is refused in FORCEDTLS mode, but even a state reached some other way
    must not survive: tls_established() resets structured replies and meta contexts."""
    hs = forced()
    hs._structured = True  # as if a man in the middle had negotiated it before TLS
    hs.receive_data(option(Option.STARTTLS))
    hs.data_to_send()
    hs.next_event()
    hs.tls_established()
    hs.receive_data(go_disk())
    assert selected(hs).structured_replies is False


def test_after_tls_options_work_and_a_second_starttls_is_invalid() -> None:
    hs = upgraded()
    hs.receive_data(option(Option.STRUCTURED_REPLY))
    hs.receive_data(option(Option.STARTTLS))
    replies = decode_replies(hs.data_to_send())
    assert types(replies) == [(Option.STRUCTURED_REPLY, Reply.ACK), (Option.STARTTLS, Reply.ERR_INVALID)]
    hs.receive_data(go_disk())
    assert selected(hs).structured_replies is True


def test_starttls_with_data_is_invalid() -> None:
    hs = forced()
    hs.receive_data(option(Option.STARTTLS, b"x"))
    assert types(decode_replies(hs.data_to_send())) == [(Option.STARTTLS, Reply.ERR_INVALID)]
    assert hs.state is HandshakeState.NEGOTIATING and not hs.tls_active


def test_a_server_without_tls_answers_starttls_unsupported() -> None:
    hs = ServerHandshake(EXPORTS, default_export="disk")
    hs.data_to_send()
    hs.receive_data(client_flags() + option(Option.STARTTLS))
    (reply,) = decode_replies(hs.data_to_send())
    assert (reply.option, reply.type) == (Option.STARTTLS, Reply.ERR_UNSUP)
    hs.receive_data(go_disk())
    assert selected(hs).export == DISK


def test_greeting_is_unchanged_in_forcedtls_mode() -> None:
    plain = ServerHandshake(EXPORTS).data_to_send()
    tls = ServerHandshake(EXPORTS, tls=True).data_to_send()
    assert plain == tls and struct.unpack(">QQH", tls)[2] & 1


_OPTIONS = st.tuples(
    st.sampled_from([o for o in range(0, 13) if o not in (Option.EXPORT_NAME, Option.ABORT, Option.STARTTLS)]
                    + [0xFFFF, 0xFFFFFFFF]),
    st.binary(max_size=64))


@settings(max_examples=200, deadline=None)
@given(options=st.lists(_OPTIONS, max_size=8), cut=st.integers(0, 64), bytewise=st.booleans())
def test_no_plaintext_option_gets_through_before_tls(options: list[tuple[int, bytes]], cut: int,
                                                     bytewise: bool) -> None:
    """Whatever options a client sends before STARTTLS, each complete one is answered
    ERR_TLS_REQD (exactly one reply, in order) and no export is ever selected."""
    hs = forced()
    stream = b"".join(option(opt, payload) for opt, payload in options)
    stream = stream[: len(stream) - cut] if cut < len(stream) else stream
    chunks = [stream[i : i + 1] for i in range(len(stream))] if bytewise else [stream]
    for chunk in chunks:
        hs.receive_data(chunk)
    replies = decode_replies(hs.data_to_send())
    complete, pos = [], 0
    for opt, payload in options:
        end = pos + 16 + len(payload)
        if end > len(stream):
            break
        complete.append(opt)
        pos = end
    assert types(replies) == [(opt, Reply.ERR_TLS_REQD) for opt in complete]
    assert hs.next_event() is None and hs.state is HandshakeState.NEGOTIATING and not hs.tls_active
