"""TLS contexts from a certificate directory laid out the way qemu and libnbd expect.

A directory holds ``ca-cert.pem`` (the CA that signs both ends), ``server-cert.pem`` and
``server-key.pem`` (what a listening side presents) and, optionally, ``client-cert.pem`` and
``client-key.pem`` (what a dialling side presents; the server pair is used when they are absent).
Every problem is a ``ConfigError`` naming the file, never a traceback from ``ssl``. TLS 1.2 is the
floor. TLS-PSK would need Python 3.13's ``ssl`` PSK callbacks, so it is not offered yet.
"""

from __future__ import annotations

import os
import ssl

from foresync.errors import ConfigError

CA_CERT = "ca-cert.pem"
SERVER_CERT, SERVER_KEY = "server-cert.pem", "server-key.pem"
CLIENT_CERT, CLIENT_KEY = "client-cert.pem", "client-key.pem"


def _need(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise ConfigError(f"TLS directory {directory}: {name} is missing")
    return path


def _load_chain(ctx: ssl.SSLContext, directory: str, cert: str, key: str) -> None:
    cert_path, key_path = _need(directory, cert), _need(directory, key)
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"TLS directory {directory}: cannot load {cert} with {key}: "
                          f"{getattr(exc, 'reason', None) or exc}") from None


def _load_ca(ctx: ssl.SSLContext, directory: str) -> None:
    ca_path = _need(directory, CA_CERT)
    try:
        ctx.load_verify_locations(cafile=ca_path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"TLS directory {directory}: cannot load {CA_CERT}: "
                          f"{getattr(exc, 'reason', None) or exc}") from None


def server_context(directory: str, verify_client: bool = False) -> ssl.SSLContext:
    """The listening side: presents server-cert.pem; with ``verify_client`` it also demands a
    client certificate signed by ca-cert.pem."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, directory, SERVER_CERT, SERVER_KEY)
    if verify_client:
        _load_ca(ctx, directory)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(directory: str) -> ssl.SSLContext:
    """The dialling side: verifies the peer against ca-cert.pem (and its name against the
    address dialled) and presents client-cert.pem, or server-cert.pem when there is none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(ctx, directory)
    if os.path.isfile(os.path.join(directory, CLIENT_CERT)):
        _load_chain(ctx, directory, CLIENT_CERT, CLIENT_KEY)
    else:
        _load_chain(ctx, directory, SERVER_CERT, SERVER_KEY)
    return ctx


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed TLS handshake, for logs and /status."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else (str(exc) or type(exc).__name__)
