"""The admin API and the guards around a role change (issue 12, items 4, 6 and 7), with real
``foresync run`` processes and the real CLI.

- The metadata lock: an offline ``promote``, ``resolve`` or ``init --force`` (what the CLI does
  when nothing answers on the admin address of its config) refuses while a daemon holds the
  site's metadata, and so does a second ``foresync run``.
- ``promote`` through the admin API refuses, changing nothing, when the NBD port it would serve
  on is taken, instead of answering success for a daemon that then exits.
- Bodies are parsed as JSON: unknown fields, wrong types and non-objects are refused with 400
  naming the field; every state-changing request is logged at WARNING; 202 says ``Accepted``.
- ``promote --force`` during a resync into the secondary answers within seconds (the link is
  aborted first, the unfinished pass rolled back), and the CLI turns any error body into one
  line.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .sites import (
    FORESYNC,
    MiB,
    Settings,
    Site,
    SitePair,
    free_ports,
    run_tool,
    started_pair,
)

pytestmark = pytest.mark.integration

CAPACITY = 16
SMALL = Settings(size="64MiB", capacity=CAPACITY, lookahead=2)
MakePair = Callable[..., SitePair]




def qemu_io(pair: SitePair, site: Site, *commands: str) -> None:
    argv: list[str | Path] = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    run_tool([*argv, pair.nbd_url_of(site)], context=pair.logs())


def with_admin_port(site: Site, port: int, name: str) -> Path:
    """A copy of ``site``'s config whose [admin] listen names another port (nothing answers)."""
    text = site.config_path.read_text().replace(f"127.0.0.1:{site.admin_port}", f"127.0.0.1:{port}")
    path = site.config_path.with_name(name)
    path.write_text(text.replace(f'data = "{site.data_path.name}"', f'data = "{site.data_path}"')
                    .replace(f'meta = "{site.meta_path.name}"', f'meta = "{site.meta_path}"'))
    return path


def no_traceback(result: object) -> None:
    stderr = getattr(result, "stderr", "")
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, f"not one line: {stderr!r}"


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None
         ) -> tuple[int, str, dict[str, object]]:
    """A raw POST: status, reason phrase and JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.reason, json.loads(response.read())
    finally:
        conn.close()


# -- item 4: the metadata lock ------------------------------------------------------------------


def test_offline_commands_refuse_while_a_daemon_holds_the_metadata(make_pair: MakePair) -> None:
    """A config whose admin port is not the running daemon's: the CLI reaches nothing and falls
    back to offline, which must find the daemon's lock and change nothing."""
    pair = started_pair(make_pair)
    secondary = pair.secondary
    before = secondary.site_json()
    wrong = with_admin_port(secondary, free_ports(1)[0], "secondary-wrong-admin.toml")

    refused = pair.cli("promote", "--config", wrong, ok=None)
    assert refused.returncode != 0, refused
    no_traceback(refused)
    assert f"site metadata in {secondary.meta_path} is in use" in refused.stderr, refused.stderr
    assert f"pid {secondary.proc.pid if secondary.proc else '?'}" in refused.stderr, refused.stderr
    assert f"admin API at 127.0.0.1:{secondary.admin_port}" in refused.stderr, refused.stderr
    assert "check [admin] listen" in refused.stderr, refused.stderr
    assert "promoted" not in refused.stdout

    for argv in (["promote", "--force"], ["resolve", "--discard-local"]):
        other = pair.cli(*argv, "--config", wrong, ok=None)
        assert other.returncode != 0 and "is in use" in other.stderr, other
        no_traceback(other)
    forced_init = pair.cli("init", "--config", wrong, "--role", "secondary", "--force", ok=None)
    assert forced_init.returncode != 0 and "is in use" in forced_init.stderr, forced_init
    no_traceback(forced_init)

    assert secondary.site_json() == before  # nothing changed on disk
    assert (secondary.meta_path / "record.journal").exists()
    status = pair.status(secondary)
    assert status["role"] == "secondary" and status["link"] == "connected", status
    qemu_io(pair, pair.primary, "write -P 0x31 0 1M")  # replication goes on unharmed
    pair.wait_in_sync()

    # Once the daemon is gone the lock is free: the same offline promote works.
    pair.stop(pair.primary)
    pair.stop(secondary)
    promoted = pair.cli("promote", "--config", wrong)
    assert "now primary at epoch 2" in promoted.stdout, promoted.stdout


def test_a_second_run_on_the_same_metadata_fails_clearly(make_pair: MakePair) -> None:
    pair = started_pair(make_pair)
    secondary = pair.secondary
    wrong = with_admin_port(secondary, free_ports(1)[0], "secondary-twin.toml")
    twin = run_tool([FORESYNC, "run", "--config", wrong], ok=None, timeout_s=30, context=pair.logs())
    assert twin.returncode != 0, twin
    no_traceback(twin)
    assert f"site metadata in {secondary.meta_path} is in use" in twin.stderr, twin.stderr
    assert "foresync run" in twin.stderr, twin.stderr
    assert pair.status(secondary)["link"] == "connected"  # the first one carries on
    pair.stop_both()


def test_a_killed_daemon_leaves_no_lock_behind(make_pair: MakePair) -> None:
    pair = started_pair(make_pair)
    pair.kill9(pair.primary)
    pair.kill9(pair.secondary)
    promoted = pair.promote(pair.secondary)  # offline: the kernel dropped the dead daemon's lock
    assert "now primary at epoch 2" in promoted.stdout, promoted.stdout
    pair.restart(pair.secondary)
    assert pair.status(pair.secondary)["role"] == "primary"


# -- item 4: promote when the NBD port is taken -----------------------------------------------


def test_promote_refuses_when_its_nbd_port_is_taken_and_changes_nothing(make_pair: MakePair) -> None:
    pair = started_pair(make_pair)
    old, new = pair.primary, pair.secondary
    qemu_io(pair, old, "write -P 0x32 0 2M")
    pair.wait_in_sync()
    pair.stop(old)
    pair.wait_link(new, "disconnected")

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", new.nbd_port))
    squatter.listen(1)
    try:
        refused = pair.promote(new, ok=None)
        assert refused.returncode != 0, refused
        no_traceback(refused)
        assert f"127.0.0.1:{new.nbd_port} ([nbd] listen)" in refused.stderr, refused.stderr
        assert "nothing changed" in refused.stderr, refused.stderr
        assert "promoted" not in refused.stdout
        time.sleep(1)  # a daemon that took the answer for a switch would be exiting now
        assert new.running, pair.logs()
        status = pair.status(new)
        assert status["role"] == "secondary" and status["epoch"] == 1, status
        assert new.site_json()["role"] == "secondary" and new.site_json()["epoch"] == 1
    finally:
        squatter.close()

    promoted = pair.promote(new)  # the port is free again: the same promote works
    assert "now primary at epoch 2" in promoted.stdout, promoted.stdout
    assert pair.status(new)["role"] == "primary"
    qemu_io(pair, new, "read -P 0x32 0 2M")  # served on the NBD port at once
    pair.start(old)  # steps down to secondary of epoch 2
    pair.wait_in_sync()
    pair.stop_both()
    pair.assert_identical()


# -- item 6: request bodies, the audit log, reason phrases ---------------------------------------


def test_bodies_are_parsed_refused_by_field_and_audited(make_pair: MakePair) -> None:
    pair = started_pair(make_pair)
    primary, secondary = pair.primary, pair.secondary

    status, reason, doc = post(secondary.admin_port, "/resolve", b"no-discard-local-please")
    assert (status, reason) == (400, "Bad Request"), doc
    assert "not JSON" in str(doc["error"]), doc
    assert secondary.site_json()["discard_local"] is False

    status, _, doc = post(secondary.admin_port, "/resolve", b'{"discard-local": "yes"}')
    assert status == 400 and "'discard-local'" in str(doc["error"]) and "boolean" in str(doc["error"]), doc
    status, _, doc = post(secondary.admin_port, "/resolve", b"{}")
    assert status == 400 and "discard-local" in str(doc["error"]), doc
    status, _, doc = post(secondary.admin_port, "/promote", b'{"forse": true}')
    assert status == 400 and "unknown field 'forse'" in str(doc["error"]), doc
    status, _, doc = post(secondary.admin_port, "/promote", b"[true]")
    assert status == 400 and "JSON object" in str(doc["error"]), doc
    status, _, doc = post(secondary.admin_port, "/promote", b'{"force": 1}')
    assert status == 400 and "'force'" in str(doc["error"]), doc
    assert secondary.site_json()["discard_local"] is False
    assert pair.status(secondary)["role"] == "secondary"

    # Two spaces are still JSON: the repair is asked for, and 202 carries its reason phrase.
    status, reason, doc = post(primary.admin_port, "/verify", b'{"repair":  true}')
    assert (status, reason) == (202, "Accepted"), doc
    assert doc["repair"] is True, doc
    status, reason, doc = post(primary.admin_port, "/verify", b"")  # empty body: {}
    assert status in (202, 409) and reason in ("Accepted", "Conflict"), doc

    log = secondary.log()
    assert 'WARNING' in log and "admin: POST /resolve from 127.0.0.1:" in log, log
    assert "answered 400 Bad Request: the body is not JSON" in log, log
    assert "admin: POST /promote from 127.0.0.1:" in log and "unknown field 'forse'" in log, log
    assert 'body {"repair": true}: answered 202 Accepted' in primary.log(), primary.log()
    status, reason, doc = post(primary.admin_port, "/verify", b"{}", {"Origin": "http://evil.example"})
    assert (status, reason) == (403, "Forbidden"), doc
    pair.wait_in_sync()
    pair.stop_both()


# -- item 7: promote --force during a resync --------------------------------------------------


def test_forced_promote_during_a_resync_answers_at_once_and_rolls_back(make_pair: MakePair) -> None:
    """The secondary is receiving a resync (slowed by resync_rate_max) from a connected primary.
    ``promote --force`` aborts the link, rolls the unfinished pass back and promotes within
    seconds. The old primary acknowledged the 0x68 writes while cut off and the rolled-back copy
    lacks them: when it redials that is a split brain (issue 13), and only the operator's
    ``resolve --discard-local`` makes it step down and take the promoted copy."""
    pair = started_pair(make_pair, dataclasses.replace(SMALL, resync_rate_max="1MiB"), via_proxy=True)
    old, new = pair.primary, pair.secondary
    qemu_io(pair, old, "write -P 0x67 0 12M")
    pair.wait_in_sync()
    pair.cut_link()
    pair.wait_link(new, "disconnected")
    qemu_io(pair, old, "write -P 0x68 0 12M")  # the secondary now lacks 12 extents
    pair.restore_link()
    pair.wait_for("a resync under way",
                  lambda: pair.status(old)["counters"]["resync_bytes"] >= 2 * MiB)
    during = pair.status(new)
    assert during["link"] == "connected" and during["consistent"] is False, during

    began = time.monotonic()
    promoted = run_tool([FORESYNC, "promote", "--config", new.config_path, "--force"], timeout_s=40,
                        context=pair.logs())
    took_s = time.monotonic() - began
    assert took_s < 20, f"promote --force took {took_s:.1f} s\n{pair.logs()}"
    assert "now primary at epoch 2" in promoted.stdout, promoted.stdout
    status = pair.wait_role(new, "primary")
    assert status["epoch"] == 2, status
    qemu_io(pair, new, "read -P 0x67 0 12M")  # the copy from before the pass, not a mix

    for site in pair.sites:
        pair.wait_for(f"{site.role} site to report split brain",
                      lambda s=site: pair.status(s)["split_brain"] is True)
    assert "stepping down" not in old.log(), "the old primary's acknowledged writes were failed back over"
    pair.resolve_discard_local(old)
    pair.wait_in_sync(timeout_s=60)
    assert pair.status(old)["role"] == "secondary"
    pair.stop_both()
    pair.assert_identical()


class _AnswerWith(BaseHTTPRequestHandler):
    answer: tuple[int, str, bytes] = (400, "text/html", b"<html>no</html>")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, ctype, body = self.answer
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("answer", [
    (400, "text/plain", b"bad request\n"),
    (500, "text/html", b"<html><body><h1>500</h1>\n<p>boom</p></body></html>"),
    (502, "application/json", b""),
    (409, "application/json", b'["not", "an", "object"]'),
    (200, "application/json", b"not json at all"),
])
def test_the_cli_turns_any_error_body_into_one_line(make_pair: MakePair,
                                                    answer: tuple[int, str, bytes]) -> None:
    pair = make_pair(SMALL)
    handler = type("Handler", (_AnswerWith,), {"answer": answer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = with_admin_port(pair.secondary, server.server_address[1], "fake-admin.toml")
        for argv in (["promote", "--force"], ["demote"], ["verify"], ["resolve", "--discard-local"]):
            result = pair.cli(*argv, "--config", config, ok=None)
            assert result.returncode == 1, result
            no_traceback(result)
            assert f"HTTP {answer[0]}" in result.stderr, result.stderr
    finally:
        server.shutdown()
        server.server_close()
