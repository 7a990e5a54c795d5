"""One error tree for foresync.

Theory: errors say *whose fault* they are. ``LocalProtocolError`` means our own caller misused an
API (a bug here); ``RemoteProtocolError`` means the peer (an NBD client or the other site) sent
something the protocol forbids. Operating errors (disk, journal, config, a site in use) each get their
own class so callers can handle them precisely. ``invariant`` replaces ``assert`` for checks that
must hold even under ``python -O``.
"""

from __future__ import annotations

import errno as _errno
from enum import IntEnum


class ForesyncError(Exception):
    """Base of every error foresync raises on purpose."""


class ProtocolError(ForesyncError):
    """A protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """Our own code used a protocol core in a way the state machine forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message sequence the protocol forbids."""


class StorageError(ForesyncError):
    """The local storage failed or refused an operation."""

    def __init__(self, message: str, errno: int = 5) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def from_os(cls, message: str, exc: OSError) -> StorageError:
        """``message: strerror``, with the errno a host or peer is told: ENOSPC for a full disk
        or quota (EDQUOT), EIO for anything else."""
        full = exc.errno in (_errno.ENOSPC, _errno.EDQUOT)
        return cls(f"{message}: {exc.strerror}", _errno.ENOSPC if full else _errno.EIO)


class JournalCorruption(StorageError):
    """A journal entry failed its checksum or framing at a known byte position."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at byte {position})")
        self.position = position


class ConfigError(ForesyncError):
    """The configuration or a command-line value is invalid."""


class RequestRefused(ForesyncError):
    """An operator's request (promote, demote, verify, resolve) that the site turned down,
    changing nothing; the message says why and what to do. The admin API answers 409."""


class TryAgainLater(RequestRefused):
    """Refused only for now: work in flight did not finish in time, and the same request may
    succeed if repeated. The admin API answers 503."""


class InvariantViolation(ForesyncError):
    """A programmer error: an internal invariant did not hold."""


def invariant(condition: bool, message: str) -> None:
    """Raise ``InvariantViolation`` unless ``condition`` holds. Unlike ``assert``, never elided."""
    if not condition:
        raise InvariantViolation(message)


class SiteInUse(ForesyncError):
    """Another process (a running daemon, as a rule) holds the site metadata's lock."""

    def __init__(self, meta_dir: str, holder: str) -> None:
        super().__init__(f"site metadata in {meta_dir} is in use by another foresync process "
                         f"({holder})")
        self.meta_dir = meta_dir
        self.holder = holder

class Errno(IntEnum):
    """The error a host is answered with: NBD's errno values ("Error values"), which match Linux
    for the ones defined. Defined here, not in ``nbd.wire``, so the replication cores and storage
    answer with it without importing the NBD front end."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108
