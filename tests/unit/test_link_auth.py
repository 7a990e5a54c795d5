"""LinkAuth: the shared-secret challenge-response, driven in memory between two instances."""

from __future__ import annotations

import itertools

import pytest

from foresync.errors import LocalProtocolError
from foresync.link import wire
from foresync.link.auth import AuthState, LinkAuth

SECRET = b"correct horse battery staple 42"
HELLO = wire.Hello(1, 0, 0, bytes(16), 1 << 20, 4096, 1)


def nonces(seed: int):  # type: ignore[no-untyped-def]
    counter = itertools.count(seed)
    return lambda n: bytes([next(counter) % 256]) * n


def run(dialler: LinkAuth, listener: LinkAuth) -> list[str]:
    """Exchange frames until neither side has anything to send; return failures seen."""
    failures: list[str] = []
    to_listener = list(dialler.start())
    to_dialler: list[wire.Message] = list(listener.start())
    while to_listener or to_dialler:
        for message in to_listener:
            result = listener.receive(message)
            to_dialler += result.send
            if result.failure:
                failures.append(f"listener: {result.failure}")
        to_listener = []
        for message in to_dialler:
            result = dialler.receive(message)
            to_listener += result.send
            if result.failure:
                failures.append(f"dialler: {result.failure}")
        to_dialler = []
    return failures


def test_same_secret_authenticates_both_sides() -> None:
    dialler = LinkAuth(SECRET, dialler=True, nonce=nonces(1))
    listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    assert run(dialler, listener) == []
    assert dialler.authenticated and listener.authenticated
    # After authentication ordinary messages pass through to the site.
    assert listener.receive(HELLO).deliver


def test_wrong_secret_is_refused_by_the_dialler_before_it_sends_anything_else() -> None:
    dialler = LinkAuth(SECRET, dialler=True, nonce=nonces(1))
    listener = LinkAuth(b"another secret of enough bytes!", dialler=False, nonce=nonces(100))
    failures = run(dialler, listener)
    assert failures == ["dialler: authentication failed: the peer does not know the link secret"]
    assert dialler.state is AuthState.FAILED and not listener.authenticated


def test_a_dialler_with_a_wrong_secret_cannot_forge_the_proof() -> None:
    listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    response = listener.receive(wire.AuthChallenge(b"\x07" * 32)).send[0]
    assert isinstance(response, wire.AuthResponse)
    forged = listener.receive(wire.AuthProof(b"\x00" * 32))
    assert forged.failure == "authentication failed: the peer does not know the link secret"
    assert not listener.authenticated


def test_messages_before_authentication_are_never_delivered() -> None:
    listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    result = listener.receive(HELLO)
    assert not result.deliver
    assert result.failure is not None and "did not authenticate" in result.failure
    with pytest.raises(LocalProtocolError):
        listener.receive(HELLO)


def test_data_before_the_proof_is_refused() -> None:
    listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    listener.receive(wire.AuthChallenge(b"\x07" * 32))
    result = listener.receive(wire.Write(1, 0, 0, 0, (), b"data"))
    assert not result.deliver and result.failure is not None


def test_a_recorded_exchange_does_not_replay() -> None:
    """Record an honest exchange, then replay the dialler's frames to a new listener."""
    dialler = LinkAuth(SECRET, dialler=True, nonce=nonces(1))
    listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    challenge = dialler.start()[0]
    response = listener.receive(challenge).send[0]
    proof = dialler.receive(response).send[0]
    assert listener.receive(proof).failure is None
    fresh = LinkAuth(SECRET, dialler=False, nonce=nonces(200))  # a new nonce for a new connection
    fresh.receive(challenge)
    assert fresh.receive(proof).failure == "authentication failed: the peer does not know the link secret"


def test_the_listeners_response_reflected_back_is_not_a_proof() -> None:
    listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    response = listener.receive(wire.AuthChallenge(b"\x07" * 32)).send[0]
    assert isinstance(response, wire.AuthResponse)
    assert listener.receive(wire.AuthProof(response.mac)).failure is not None


def test_a_reflected_challenge_is_refused() -> None:
    listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    own_nonce = nonces(100)(32)
    assert listener.receive(wire.AuthChallenge(own_nonce)).failure is not None


def test_secret_on_one_side_only_is_refused_with_a_clear_reason() -> None:
    dialler = LinkAuth(SECRET, dialler=True, nonce=nonces(1))
    listener = LinkAuth(None, dialler=False, nonce=nonces(100))
    assert run(dialler, listener) == [
        "listener: the peer authenticates with a shared secret but this site has no [link] "
        "secret_file; configure the same secret on both sites"]
    plain_dialler = LinkAuth(None, dialler=True, nonce=nonces(1))
    assert plain_dialler.start() == []
    guarded = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
    failure = guarded.receive(HELLO).failure
    assert failure is not None and "[link] secret_file on both sites" in failure


def test_a_refusal_during_authentication_is_reported_not_answered() -> None:
    dialler = LinkAuth(SECRET, dialler=True, nonce=nonces(1))
    dialler.start()
    result = dialler.receive(wire.Refuse("authentication failed"))
    assert result.peer_refused and result.failure == "the peer refused the connection: authentication failed"
    assert not result.deliver


def test_no_secret_means_trusted_from_the_start() -> None:
    listener = LinkAuth(None, dialler=False, nonce=nonces(100))
    assert listener.authenticated and listener.receive(HELLO).deliver


def test_the_secret_never_appears_in_a_failure() -> None:
    for peer_secret in (b"x" * 20, None):
        dialler = LinkAuth(peer_secret, dialler=True, nonce=nonces(1))
        listener = LinkAuth(SECRET, dialler=False, nonce=nonces(100))
        for failure in run(dialler, listener):
            assert SECRET.decode() not in failure and "x" * 20 not in failure
