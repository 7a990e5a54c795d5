"""What a site's operator actions return when they succeed; a refusal raises
``errors.RequestRefused``.

The sites know nothing of HTTP: ``daemon/run.py`` turns a result into the admin API's JSON answer
(``answer_of``) and a refusal into its status code, in one place. Each result's JSON fields are
a contract (docs/operations.md, "The admin API"); ``answer_of`` adds the flag that names what
happened (``"promoted": true``) before them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Promoted:
    epoch: int
    failback_extents: int
    failback_bytes: int


@dataclass(frozen=True, slots=True)
class Demoted:
    epoch: int


@dataclass(frozen=True, slots=True)
class Discarded:
    stale_extents: int


@dataclass(frozen=True, slots=True)
class VerifyStarted:
    repair: bool
    total_extents: int


Result = Promoted | Demoted | Discarded | VerifyStarted

# The flag each answer starts with, and the HTTP status of a success (202: verify runs on).
_FLAG: dict[type, tuple[str, int]] = {
    Promoted: ("promoted", 200), Demoted: ("demoted", 200), Discarded: ("discarded", 200),
    VerifyStarted: ("started", 202),
}


def answer_of(result: Result) -> tuple[int, dict[str, Any]]:
    """The admin API's status and JSON body for a successful action."""
    flag, status = _FLAG[type(result)]
    return status, {flag: True, **dataclasses.asdict(result)}
