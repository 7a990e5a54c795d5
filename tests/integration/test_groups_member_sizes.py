"""A consistency group's members must match between the sites byte for byte in size (issue 16
part 2), with real daemons: a member that differs only within its last extent pads to the same
span, so the unit's size and extent size agree and only the HELLO's member sizes tell. The
secondary refuses that HELLO, naming the group, the member and both sizes, and the pair is never
reported in sync.
"""

from __future__ import annotations

from pathlib import Path

from .group_sites import GroupDaemon, group_pair
from .volume_sites import start_up, wait

REASON = "group 'db' member 'wal' is 3000000 bytes at the primary, 3000512 bytes here"


def test_a_member_differing_within_its_last_extent_is_refused_at_hello(tmp_path: Path) -> None:
    p, s = group_pair(tmp_path, ["data", "wal"], {"db": ["data", "wal"]},
                      sizes={"data": "8MiB", "wal": "3000000"}, secondary_sizes={"wal": "3000512"})
    assert_refused(p, s, REASON)


def test_members_of_one_size_listed_in_another_order_are_refused_at_hello(tmp_path: Path) -> None:
    """Two members of one size, listed in another order on the secondary: the sizes agree, so
    only their names tell that each member's writes would land in the other's file there."""
    p, s = group_pair(tmp_path, ["data", "wal"], {"db": ["data", "wal"]},
                      sizes={"data": "4MiB", "wal": "4MiB"}, secondary_groups={"db": ["wal", "data"]})
    assert_refused(p, s, "group 'db' has members wal, data here, in this order; the primary's are data, wal")


def assert_refused(p: GroupDaemon, s: GroupDaemon, reason: str) -> None:
    """Both sites started: the secondary refuses the primary's HELLO for ``reason``, both say
    why (status and log), and neither is ever connected or in sync."""
    both = (p, s)
    try:
        start_up(p, s)
        wait("the secondary refuses the primary's HELLO",
             lambda: reason in str(s.status()["volumes"]["db"]["link_error"]), both)
        wait("the primary is told why", lambda: reason in str(p.status()["volumes"]["db"]["link_error"]),
             both)
        assert reason in s.log() and reason in p.log()
        for daemon in both:
            volume = daemon.status()["volumes"]["db"]
            assert volume["link"] != "connected" and not volume["in_sync"], volume
    finally:
        errors = p.stop() + s.stop()
    assert not errors, errors


def test_members_of_equal_sizes_still_pair(tmp_path: Path) -> None:
    p, s = group_pair(tmp_path, ["data", "wal"], {"db": ["data", "wal"]},
                      sizes={"data": "8MiB", "wal": "3000000"})
    both = (p, s)
    try:
        start_up(p, s)
        wait("db in sync", lambda: bool(p.status()["volumes"]["db"]["in_sync"]
                                        and s.status()["volumes"]["db"]["in_sync"]), both)
    finally:
        errors = p.stop() + s.stop()
    assert not errors, errors
