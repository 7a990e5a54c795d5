"""A role change through the admin API is answered only once the new role serves (daemon/run.py).

``run_site`` runs in this process on a secondary's files; ``POST /promote`` goes over real HTTP.
When the new primary cannot start (here its ``run`` fails as a taken port would make it fail),
the answer must say so, not "promoted", and the daemon must exit with the error."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from foresync.daemon import metadata as site
from foresync.daemon.primary import PrimarySite
from foresync.daemon.run import init_site, run_site


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def secondary_config(tmp_path: Path) -> tuple[str, int]:
    admin = free_port()
    path = tmp_path / "s.toml"
    path.write_text(f"""[volume]
name = "v"
data = "s.img"
size = "1MiB"
meta = "s.meta"
[nbd]
listen = "127.0.0.1:{free_port()}"
[link]
listen = "127.0.0.1:{free_port()}"
peer = "127.0.0.1:{free_port()}"
[record]
extent_size = "64KiB"
[admin]
listen = "127.0.0.1:{admin}"
""")
    # A secondary that has met its primary and holds a consistent copy: promotable unforced.
    meta = init_site(str(path), "primary", force=False)
    site.store(str(tmp_path / "s.meta"), meta.update(role="secondary"))
    return str(path), admin


async def post(port: int, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


async def wait_listening(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return
    raise AssertionError("the admin API never came up")


def test_promote_reports_a_primary_that_could_not_start(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async def cannot_serve(self: PrimarySite, stop: asyncio.Event) -> str:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(PrimarySite, "run", cannot_serve)
    config, admin = secondary_config(tmp_path)

    async def scenario() -> None:
        daemon = asyncio.ensure_future(run_site(config, asyncio.Event()))
        await wait_listening(admin)
        status, doc = await post(admin, "/promote", b"{}")
        assert status == 500, doc
        error = str(doc["error"])
        assert "the switch to primary is on disk, but the site could not start as primary" in error
        assert "Address already in use" in error and "the daemon exits" in error, error
        with pytest.raises(OSError, match="Address already in use"):
            await asyncio.wait_for(daemon, 30)

    asyncio.run(scenario())


def test_promote_answers_once_the_primary_serves(tmp_path: Path) -> None:
    config, admin = secondary_config(tmp_path)

    async def scenario() -> None:
        stop = asyncio.Event()
        daemon = asyncio.ensure_future(run_site(config, stop))
        await wait_listening(admin)
        status, doc = await post(admin, "/promote", b'{"force": false}')
        assert status == 200 and doc["epoch"] == 2, doc
        nbd_port = int(Path(config).read_text().split("[nbd]\nlisten = \"127.0.0.1:")[1].split('"')[0])
        _, writer = await asyncio.open_connection("127.0.0.1", nbd_port)  # serving already
        writer.close()
        stop.set()
        await asyncio.wait_for(daemon, 30)

    asyncio.run(scenario())


def test_refusals_and_results_become_http_answers_in_one_place(tmp_path: Path) -> None:
    """The sites return typed results or raise RequestRefused / TryAgainLater; run.py alone
    turns them into 200/202 and 409/503 answers with the documented bodies."""
    config, admin = secondary_config(tmp_path)

    async def scenario() -> None:
        stop = asyncio.Event()
        daemon = asyncio.ensure_future(run_site(config, stop))
        await wait_listening(admin)
        assert await post(admin, "/demote", b"{}") == (409, {"error": "this site is not the primary"})
        assert await post(admin, "/verify", b"{}") == (409, {"error": "verify runs on the primary"})
        status, doc = await post(admin, "/promote", b"{}")
        assert (status, doc["promoted"], doc["epoch"]) == (200, True, 2), doc
        assert set(doc) == {"promoted", "epoch", "failback_extents", "failback_bytes"}
        # Now the primary, with no secondary: each refusal is a 409 that changed nothing.
        status, doc = await post(admin, "/promote", b"{}")
        assert (status, doc) == (409, {"error": "this site is already the primary"})
        status, doc = await post(admin, "/verify", b"{}")
        assert status == 409 and "connected secondary" in str(doc["error"]), doc
        status, doc = await post(admin, "/demote", b"{}")
        assert status == 409 and "not connected" in str(doc["error"]), doc
        stop.set()
        await asyncio.wait_for(daemon, 30)

    asyncio.run(scenario())


def test_a_result_names_what_happened_before_its_fields() -> None:
    from foresync.daemon.results import Demoted, Discarded, Promoted, VerifyStarted, answer_of

    assert answer_of(Promoted(3, 2, 2 << 16)) == (
        200, {"promoted": True, "epoch": 3, "failback_extents": 2, "failback_bytes": 2 << 16})
    assert answer_of(Demoted(4)) == (200, {"demoted": True, "epoch": 4})
    assert answer_of(Discarded(7)) == (200, {"discarded": True, "stale_extents": 7})
    assert answer_of(VerifyStarted(True, 16)) == (202, {"started": True, "repair": True,
                                                        "total_extents": 16})
