"""Strangers on the link port (issue 12, items 5 and 10), against two real ``foresync run``
processes without a link secret (the default).

A stranger that speaks the protocol well (a real HELLO of another volume, built with the link
codec) must be refused on its own connection: the healthy primary's link stays up, the record is
not resent, the refusal does not tell the stranger our volume identity, and a flood of them
fills neither the log nor /status.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

import pytest

from foresync.link import wire

from .sites import MiB, Settings, SitePair, run_tool

pytestmark = pytest.mark.integration

MakePair = Callable[..., SitePair]
SIZE = "64MiB"
STRANGERS = 40
IO_TIMEOUT_S = 10.0



def stranger_hello(volume_id: bytes, history: tuple[int, ...] = (12345,)) -> bytes:
    """A well-formed HELLO of a primary of another volume, same geometry as ours."""
    return wire.encode_frame(wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, volume_id,
                                        64 * MiB, MiB, len(history), history))


def send_and_read_until_closed(port: int, data: bytes) -> list[wire.Message]:
    """Connect, send ``data``, read until the site closes the connection; the frames it sent."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return wire.FrameDecoder().feed(bytes(received))


def test_a_stranger_hello_is_refused_without_touching_the_healthy_link(make_pair: MakePair) -> None:
    pair = make_pair(Settings(size=SIZE, capacity=16, lookahead=2))
    pair.init_both()
    pair.start_both()
    # After the initial sync: writes during it are covered by its resync set, not the record.
    pair.wait_in_sync()
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 4M", pair.nbd_url], context=pair.logs())
    primary_before, _ = pair.wait_in_sync()
    ours = pair.primary.site_json()["volume_id"]
    assert pair.status(pair.secondary)["record"]["extents"] > 0  # a takeover would resend these

    started = time.monotonic()
    for n in range(STRANGERS):
        theirs = bytes([n + 1]) * 16
        replies = send_and_read_until_closed(pair.secondary.link_port, stranger_hello(theirs))
        refusals = [m for m in replies if isinstance(m, wire.Refuse)]
        assert len(refusals) == 1 and len(replies) == 1, replies
        assert theirs.hex() in refusals[0].reason and "is not ours" in refusals[0].reason
        assert ours not in refusals[0].reason, refusals[0].reason  # never tell a stranger
    elapsed_s = time.monotonic() - started
    assert elapsed_s < STRANGERS * 1.0, f"refusals took {elapsed_s:.1f} s: not closed promptly"

    primary, secondary = pair.status(pair.primary), pair.status(pair.secondary)
    assert primary["link"] == "connected" and secondary["link"] == "connected", (primary, secondary)
    assert primary["counters"]["resync_bytes"] == primary_before["counters"]["resync_bytes"], primary
    assert secondary["link_error"] == "" and not secondary["split_brain"], secondary
    assert pair.primary.log().count("link: lost the secondary") == 0, pair.logs()
    # Logged here with both identities, but only ten a minute, then counted.
    refused_lines = [line for line in pair.secondary.log().splitlines() if "refused a HELLO" in line]
    assert 1 <= len(refused_lines) <= 10, refused_lines
    assert ours in refused_lines[0] and (bytes([1]) * 16).hex() in refused_lines[0]
    assert re.search(r"over 10 in 60 s; the rest are counted", pair.secondary.log()), pair.secondary.log()

    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 8M 1M", pair.nbd_url], context=pair.logs())
    pair.wait_in_sync()
    pair.stop_both()
    pair.assert_identical()
    for site in pair.sites:
        assert "Traceback" not in site.log(), pair.logs()


def test_the_primary_refuses_a_stranger_without_naming_its_volume(make_pair: MakePair) -> None:
    pair = make_pair(Settings(size=SIZE, capacity=16))
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    ours = pair.primary.site_json()["volume_id"]
    replies = send_and_read_until_closed(pair.primary.link_port, stranger_hello(bytes(range(16))))
    assert [type(m) for m in replies] == [wire.Refuse], replies
    assert isinstance(replies[0], wire.Refuse) and ours not in replies[0].reason
    pair.wait_for("the refusal logged", lambda: "refused a peer" in pair.primary.log())
    line = next(line for line in pair.primary.log().splitlines() if "refused a peer" in line)
    assert ours in line and bytes(range(16)).hex() in line, line
    assert pair.status(pair.primary)["link"] == "connected"
    pair.stop_both()


# -- item 10: what a setup timeout says ------------------------------------------------------------

SHORT_TIMEOUT = Settings(size=SIZE, capacity=16, link_extra="timeout = 3\n")


def test_a_planned_switchover_leaves_no_stalled_peer_warning(make_pair: MakePair) -> None:
    """After demote and promote nothing may run into the link setup deadline: connections the
    demoted primary was dialling, or that reached a listener as it closed, are closed at once."""
    pair = make_pair(SHORT_TIMEOUT)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    old, new = pair.primary, pair.secondary
    pair.demote(old)
    pair.wait_role(old, "secondary")
    pair.promote(new)
    pair.wait_role(new, "primary")
    pair.wait_in_sync()
    time.sleep(3 * 2)  # twice the setup deadline
    for site in pair.sites:
        assert "within 3 s" not in site.log() and "did not finish" not in site.log(), pair.logs()
    assert pair.status(old)["link"] == "connected"
    pair.stop_both()


def test_a_silent_peer_is_reported_for_what_it_did_not_do(make_pair: MakePair) -> None:
    """No TLS, no secret: a peer that connects and says nothing 'sent no HELLO'."""
    pair = make_pair(SHORT_TIMEOUT)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    with socket.create_connection(("127.0.0.1", pair.secondary.link_port), timeout=IO_TIMEOUT_S) as sock:
        assert sock.recv(100) == b""  # closed at the deadline
    pair.wait_for("the timeout logged", lambda: "sent no HELLO within 3 s" in pair.secondary.log())
    line = next(line for line in pair.secondary.log().splitlines() if "sent no HELLO" in line)
    assert "TLS" not in line and "authentication" not in line, line
    assert pair.status(pair.secondary)["link"] == "connected"
    pair.stop_both()
