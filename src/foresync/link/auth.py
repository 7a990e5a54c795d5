"""Mutual authentication of the two sites: HMAC-SHA256 challenge-response over a shared secret.

Theory of operation (DRBD's cram-hmac, with the gaps closed). The dialler D and the listener L
share a secret K from ``[link] secret_file``; each draws a fresh 32-byte nonce per connection.

    D -> L  AUTH_CHALLENGE  nD
    L -> D  AUTH_RESPONSE   nL, HMAC(K, "foresync-link-v1 listener" | nD | nL)
    D -> L  AUTH_PROOF      HMAC(K, "foresync-link-v1 dialler"  | nL | nD)

- Both sides prove knowledge of K, each over the other's fresh nonce, so a recorded exchange
  cannot be replayed (it would need the new nonce's MAC).
- The role label differs per direction, so a listener's own response cannot be reflected back
  to it as a proof. A primary both dials and listens with the same secret, so a challenge relayed
  from its dialler to its own listener would be answered for it: the adapter keeps this
  process's outstanding dialler nonces and refuses such a challenge (link/transport.py).
- Nothing but these frames (and REFUSE) is accepted before authentication succeeds: the site
  never sees a HELLO, record or data message from an unauthenticated peer, and the adapter keeps
  the frame size limit small until then. MACs are compared in constant time.
- K never leaves this module: errors say *that* authentication failed, never with what.

A site without a secret talks plaintext HELLO at once; a mismatch (one side has a secret) is
refused with a message saying which side is missing it. Pure: nonces come in from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from foresync.errors import LocalProtocolError
from foresync.link import wire

_LISTENER_LABEL = b"foresync-link-v1 listener"
_DIALLER_LABEL = b"foresync-link-v1 dialler"
AUTH_MAX_FRAME_BYTES = 4096  # the frame size limit while a peer is unauthenticated


class AuthState(Enum):
    AWAIT_CHALLENGE = "await_challenge"  # listener
    AWAIT_PROOF = "await_proof"  # listener
    AWAIT_RESPONSE = "await_response"  # dialler
    AUTHENTICATED = "authenticated"
    FAILED = "failed"


@dataclass(slots=True)
class AuthResult:
    """What one received message led to: frames to send, whether to hand the message on to the
    site, and a failure reason (the connection must then be refused and closed)."""

    send: list[wire.Message] = field(default_factory=list)
    deliver: bool = False
    failure: str | None = None
    peer_refused: bool = False  # the failure is the peer's REFUSE: nothing to answer


def _mac(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, label + first + second, hashlib.sha256).digest()


class LinkAuth:
    """One connection's authentication. ``dialler`` is the side that connected."""

    def __init__(self, secret: bytes | None, dialler: bool, nonce: Callable[[int], bytes]) -> None:
        self._secret = secret
        self._dialler = dialler
        self._nonce = nonce(wire.NONCE_BYTES)
        self._peer_nonce = b""
        if secret is None:
            self.state = AuthState.AUTHENTICATED
        else:
            self.state = AuthState.AWAIT_RESPONSE if dialler else AuthState.AWAIT_CHALLENGE

    @property
    def nonce(self) -> bytes:
        """This side's nonce (not secret: it goes out in the clear)."""
        return self._nonce

    @property
    def authenticated(self) -> bool:
        return self.state is AuthState.AUTHENTICATED

    def start(self) -> list[wire.Message]:
        """What the dialler sends first (nothing without a secret, or on the listening side)."""
        if self._dialler and self._secret is not None:
            return [wire.AuthChallenge(self._nonce)]
        return []

    def receive(self, message: wire.Message) -> AuthResult:
        if self.state is AuthState.FAILED:
            raise LocalProtocolError("receive() after authentication failed")
        if self.state is AuthState.AUTHENTICATED:
            if isinstance(message, wire.AuthChallenge | wire.AuthResponse | wire.AuthProof):
                if self._secret is None:
                    return self._fail("the peer authenticates with a shared secret but this site has "
                                      "no [link] secret_file; configure the same secret on both sites")
                return self._fail("the peer sent an authentication frame after authenticating")
            return AuthResult(deliver=True)
        if isinstance(message, wire.Refuse):
            self.state = AuthState.FAILED
            return AuthResult(failure=f"the peer refused the connection: {message.reason}",
                              peer_refused=True)
        if self.state is AuthState.AWAIT_CHALLENGE:
            if not isinstance(message, wire.AuthChallenge):
                return self._fail("the peer did not authenticate: this site requires the shared "
                                  "secret of [link] secret_file on both sites")
            return self._answer_challenge(message)
        if self.state is AuthState.AWAIT_RESPONSE:
            if not isinstance(message, wire.AuthResponse):
                return self._fail(f"the peer sent {type(message).__name__} instead of answering "
                                  "the authentication challenge")
            return self._check_response(message)
        if not isinstance(message, wire.AuthProof):
            return self._fail(f"the peer sent {type(message).__name__} instead of its proof")
        assert self._secret is not None
        expected = _mac(self._secret, _DIALLER_LABEL, self._nonce, self._peer_nonce)
        if not hmac.compare_digest(expected, message.mac):
            return self._fail("authentication failed: the peer does not know the link secret")
        self.state = AuthState.AUTHENTICATED
        return AuthResult()

    def _answer_challenge(self, message: wire.AuthChallenge) -> AuthResult:
        assert self._secret is not None
        if message.nonce == self._nonce:  # a reflected nonce: someone is replaying us to ourselves
            return self._fail("authentication failed: the peer echoed our own nonce")
        self._peer_nonce = message.nonce
        self.state = AuthState.AWAIT_PROOF
        mac = _mac(self._secret, _LISTENER_LABEL, message.nonce, self._nonce)
        return AuthResult(send=[wire.AuthResponse(self._nonce, mac)])

    def _check_response(self, message: wire.AuthResponse) -> AuthResult:
        assert self._secret is not None
        expected = _mac(self._secret, _LISTENER_LABEL, self._nonce, message.nonce)
        if not hmac.compare_digest(expected, message.mac):
            return self._fail("authentication failed: the peer does not know the link secret")
        if message.nonce == self._nonce:
            return self._fail("authentication failed: the peer echoed our own nonce")
        self.state = AuthState.AUTHENTICATED
        proof = _mac(self._secret, _DIALLER_LABEL, message.nonce, self._nonce)
        return AuthResult(send=[wire.AuthProof(proof)])

    def _fail(self, reason: str) -> AuthResult:
        self.state = AuthState.FAILED
        return AuthResult(failure=reason)
