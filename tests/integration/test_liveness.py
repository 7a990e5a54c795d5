"""The link's heartbeat and timeout (replication/liveness.py), against two real ``foresync run``
processes: a site that stops answering (SIGSTOP: its socket stays open, only silence shows it)
is declared gone after ``[link] timeout``, with the reason operators know, and the pair comes
back in sync once it runs again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from .sites import Settings, Site, SitePair

pytestmark = pytest.mark.integration

MakePair = Callable[..., SitePair]
SHORT_TIMEOUT = Settings(size="64MiB", capacity=16, link_extra="timeout = 3\n")


def _frozen(pair: SitePair, site: Site, observer: Site, line: str) -> None:
    """Stop ``site`` until ``observer`` logs ``line``; then let it run again."""
    assert site.proc is not None
    os.kill(site.proc.pid, signal.SIGSTOP)
    try:
        pair.wait_for(f"{observer.role} logs {line!r}", lambda: line in observer.log(), timeout_s=60)
    finally:
        os.kill(site.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize(("silent", "line"), [
    ("secondary", "no frame from the secondary for 3 s"),
    ("primary", "primary disconnected (no frame from the primary for 3 s)"),
])
def test_a_silent_site_is_timed_out_by_the_other_and_the_pair_recovers(
        make_pair: MakePair, silent: str, line: str) -> None:
    """The other site's core ends the link with the reason operators know, and the pair comes
    back in sync once the silent one wakes."""
    pair = make_pair(SHORT_TIMEOUT)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    frozen, observer = ((pair.secondary, pair.primary) if silent == "secondary"
                        else (pair.primary, pair.secondary))
    _frozen(pair, frozen, observer, line)
    pair.wait_in_sync(timeout_s=60)
    pair.stop_both()
