"""The secondary site's promote and its wait for work in flight (daemon/secondary.py).

Regression (issue 12, item 7): ``_drain`` waited with ``asyncio.gather``. Cancelling the caller
(the admin server gave up on a promote after 90 s) cancelled every task it waited for, the link
watcher among them, so when the primary's link later closed nobody noticed: the site counted
that primary as connected for good and refused every unforced promote.

Real ``SecondarySite`` on files in ``tmp_path``; the link is a ``LinkProtocol`` on a transport
that records nothing, closed by ``abort`` as a real one is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

import pytest
import xxhash

from foresync.config import SiteConfig
from foresync.daemon.metadata import SiteMeta
from foresync.daemon.secondary import SecondarySite, extent_hashes
from foresync.errors import RequestRefused, TryAgainLater
from foresync.journal.journal import RecordJournal
from foresync.link.transport import LinkProtocol
from foresync.record.record import Eviction
from foresync.replication.primary import Mode
from foresync.storage.file_backend import FileBackend

EXTENT = 4096
SIZE = 16 * EXTENT
VOLUME = b"V" * 16


class SilentTransport:
    def write(self, data: bytes) -> None:
        pass

    def writelines(self, chunks: list[bytes]) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def config(tmp_path: Path, nbd_port: int = 0) -> SiteConfig:
    (tmp_path / "meta").mkdir(exist_ok=True)
    return SiteConfig(path=str(tmp_path / "c.toml"), name="s", data=str(tmp_path / "img"), size=SIZE,
                      meta=str(tmp_path / "meta"), nbd_listen=("127.0.0.1", nbd_port), export="x",
                      link_listen=("127.0.0.1", 0), link_peer=("127.0.0.1", 1), mode=Mode.LOOKAHEAD,
                      window_bytes=6144, heartbeat_s=1, timeout_s=10, extent_size=EXTENT, capacity=8,
                      lookahead=1, eviction=Eviction.LRU, watermark_interval_s=1,
                      admin_listen=("127.0.0.1", 0))


def secondary(cfg: SiteConfig) -> tuple[SecondarySite, FileBackend]:
    backend = FileBackend(cfg.data, SIZE)
    journal = RecordJournal.create(os.path.join(cfg.meta, "record.journal"), VOLUME)
    return SecondarySite(cfg, SiteMeta("secondary", VOLUME, (1,)), backend, journal), backend


def connect(site: SecondarySite) -> LinkProtocol:
    proto = LinkProtocol(lambda message: None, lambda: None, dialler=False)
    proto.transport = SilentTransport()  # type: ignore[assignment]
    site._take_over(proto)
    site.core.greeted = True  # its HELLO was accepted
    return proto


def test_a_cancelled_drain_leaves_the_link_watcher_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        site, backend = secondary(config(tmp_path))
        proto = connect(site)
        assert site.statistics().link == "connected"
        drain = asyncio.ensure_future(site._drain())
        await asyncio.sleep(0.05)
        assert not drain.done()  # it waits for the watcher, which waits for the link to close
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        proto.abort("the primary went away")
        for _ in range(5):
            await asyncio.sleep(0)
        assert site.link is None, "the link watcher was cancelled with the drain"
        assert site.statistics().link == "disconnected"
        promoted = await site.promote(False)  # no primary connected: no --force needed
        assert promoted.epoch == 2 and promoted.failback_bytes == promoted.failback_extents * EXTENT
        assert site.role_changed.is_set() and site.meta.role == "primary" and site.meta.epoch == 2
        assert site.nbd_sockets
        for sock in site.nbd_sockets:
            sock.close()
        backend.close()

    asyncio.run(scenario())


def test_a_drain_with_a_bound_gives_up_instead_of_waiting_for_the_link(tmp_path: Path) -> None:
    async def scenario() -> None:
        site, backend = secondary(config(tmp_path))
        connect(site)
        assert await site._drain(0.1) is False
        assert site.statistics().link == "connected"  # nothing was cut by giving up
        backend.close()

    asyncio.run(scenario())


def test_forced_promote_with_the_primary_connected_cuts_the_link_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        site, backend = secondary(config(tmp_path))
        proto = connect(site)
        with pytest.raises(RequestRefused, match="--force"):
            await site.promote(False)
        assert proto.is_open and not site.role_changed.is_set()
        promoted = await asyncio.wait_for(site.promote(True), 5)
        assert promoted.epoch == 2
        assert proto.closed.done() and site.link is None
        assert site.meta.role == "primary"
        assert site.nbd_sockets
        for sock in site.nbd_sockets:
            sock.close()
        backend.close()

    asyncio.run(scenario())


def test_promote_refuses_a_taken_nbd_port_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(port: int) -> None:
        site, backend = secondary(config(tmp_path, port))
        with pytest.raises(RequestRefused) as refused:
            await site.promote(False)
        assert f"cannot serve NBD on 127.0.0.1:{port} ([nbd] listen)" in str(refused.value)
        assert "nothing changed" in str(refused.value)
        assert not site.role_changed.is_set() and not site._promoting
        assert site.meta.role == "secondary" and site.meta.epoch == 1
        backend.close()

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        asyncio.run(scenario(squatter.getsockname()[1]))
    assert not (tmp_path / "meta" / "site.json").exists()  # never written


def test_promote_whose_drain_runs_out_says_try_again_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        site, backend = secondary(config(tmp_path))

        async def stuck(timeout_s: float | None = None) -> bool:
            return False  # work in flight outlived the bound

        site._drain = stuck  # type: ignore[method-assign]
        with pytest.raises(TryAgainLater, match="try again"):
            await site.promote(False)
        assert not site.role_changed.is_set() and not site._promoting
        assert site.meta.role == "secondary" and site.nbd_sockets is None
        backend.close()

    asyncio.run(scenario())


def test_extent_hashes_cover_one_chunk_and_hash_holes_as_zeroes(tmp_path: Path) -> None:
    backend = FileBackend(str(tmp_path / "img"), SIZE)
    try:
        backend.write(EXTENT, b"x" * EXTENT)
        hashes = extent_hashes(backend, EXTENT, 0, 3)
        zero, data = xxhash.xxh3_64_intdigest(bytes(EXTENT)), xxhash.xxh3_64_intdigest(b"x" * EXTENT)
        assert hashes == (zero, data, zero)
        assert len(extent_hashes(backend, EXTENT, SIZE // EXTENT - 1, 5)) == 1  # the last one only
    finally:
        backend.close()
