"""What a site needs to guard its three doors, loaded once at start so a bad file fails fast.

NBD: an optional TLS context (FORCEDTLS) and the server limits. Link: an optional shared secret
for HMAC challenge-response (link/auth.py) and optional mutual TLS. Admin: an optional token that
mutating endpoints demand. Secrets are read here and handed on as bytes; no error message, log
line or /status field ever includes them, only the file's path.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from dataclasses import dataclass

from foresync import tls
from foresync.config import SiteConfig, is_loopback
from foresync.errors import ConfigError
from foresync.link.transport import LinkSecurity
from foresync.nbd.server import ServerLimits

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16


def read_secret(path: str, what: str) -> bytes:
    """The file's bytes without trailing whitespace; at least 16 of them."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            secret = f.read(64 * 1024).rstrip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{what} {path}: holds {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
                          "(for example: head -c 32 /dev/urandom | base64 > FILE)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s can be read by other users (mode %03o); chmod 600 it", what, path,
                    stat.S_IMODE(mode))
    return secret


@dataclass(frozen=True, slots=True)
class SiteSecurity:
    nbd_tls: ssl.SSLContext | None
    nbd_limits: ServerLimits
    link: LinkSecurity
    admin_token: bytes | None

    @classmethod
    def plain(cls) -> SiteSecurity:
        """No TLS, no secrets, default limits (tests and the simulator)."""
        return cls(nbd_tls=None, nbd_limits=ServerLimits(), link=LinkSecurity(), admin_token=None)

    def describe(self) -> dict[str, bool]:
        """What is switched on, for /status (never the secrets themselves)."""
        return {"nbd_tls": self.nbd_tls is not None,
                "nbd_tls_verify_client": self.nbd_tls is not None
                and self.nbd_tls.verify_mode == ssl.CERT_REQUIRED,
                "link_tls": self.link.server_tls is not None, "link_secret": self.link.secret is not None,
                "admin_token": self.admin_token is not None}

    def __repr__(self) -> str:  # never print a secret, even by accident in a debug line
        return (f"SiteSecurity(nbd_tls={self.nbd_tls is not None}, link={self.link!r}, "
                f"admin_token={'set' if self.admin_token else 'none'})")


def setup_frame_bytes(cfg: SiteConfig) -> int:
    """The largest first message: a HELLO or WELCOME lists up to every extent (out-of-sync and
    stale extents at 4 bytes, checksums at 8), the record (4 bytes an extent), pending ranges and
    the epoch history; 1 MiB covers the last two with room to spare."""
    extents = -(-cfg.size // cfg.extent_size)
    return 1024 * 1024 + 16 * extents + 4 * cfg.capacity


def warn_if_link_is_open(cfg: SiteConfig) -> bool:
    """Without a secret or TLS, anyone who reaches the link port can speak to the site: it
    checks identity before it lets a connection replace its primary, but a peer that knows the
    volume identity (or a new secondary's first caller) is believed. Fine on loopback or a
    private link; say so loudly anywhere else. True when the warning was logged."""
    host = cfg.link_listen[0]
    if is_loopback(host) or cfg.link_secret_file or cfg.link_tls_dir:
        return False
    log.warning("[link] listen = %s:%d is not a loopback address and neither [link] secret_file "
                "nor [link] tls_dir is set: anyone who can reach that port can talk to this site "
                "(see docs/security.md)", host, cfg.link_listen[1])
    return True


def load_security(cfg: SiteConfig) -> SiteSecurity:
    warn_if_link_is_open(cfg)
    link_tls_dir = cfg.link_tls_dir
    return SiteSecurity(
        nbd_tls=tls.server_context(cfg.nbd_tls_dir, cfg.nbd_tls_verify_client) if cfg.nbd_tls_dir else None,
        nbd_limits=ServerLimits(
            max_connections=cfg.nbd_max_connections, max_in_flight=cfg.nbd_max_in_flight,
            max_in_flight_bytes=cfg.nbd_max_in_flight_bytes, max_option_bytes=cfg.nbd_max_option_bytes,
            handshake_timeout_s=cfg.nbd_handshake_timeout_s, idle_timeout_s=cfg.nbd_idle_timeout_s),
        link=LinkSecurity(
            secret=read_secret(cfg.link_secret_file, "[link] secret_file") if cfg.link_secret_file else None,
            server_tls=tls.server_context(link_tls_dir, verify_client=True) if link_tls_dir else None,
            client_tls=tls.client_context(link_tls_dir) if link_tls_dir else None,
            max_frame_bytes=cfg.link_max_frame_bytes,
            setup_frame_bytes=setup_frame_bytes(cfg),
            setup_timeout_s=cfg.timeout_s,
        ),
        admin_token=read_secret(cfg.admin_token_file, "[admin] token_file") if cfg.admin_token_file else None,
    )
