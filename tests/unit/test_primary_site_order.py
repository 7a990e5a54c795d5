"""The primary site's hot path never lets a host write overtake frames the core already emitted.

Regression: ``PrimarySite._write_hit`` sent its WRITE at once, even when ``submit`` was called
from inside the site's action pump (an answered write lets the NBD connection start a queued
one). A resync WRITE the core had emitted, with a lower seq, then reached the link after the
newer host write, and the secondary applied the old resync data over it while the primary
counted the extent as resynced.

Real ``PrimarySite``, real ``NbdServer`` connection (``max_in_flight=1``, so a request waits in
its queue), a link that records frames, a transport that records replies; the secondary is a
bytearray that applies WRITEs in arrival order, as the real one does.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from foresync.config import SiteConfig
from foresync.daemon.metadata import SiteMeta
from foresync.daemon.primary import PrimarySite
from foresync.link import wire
from foresync.nbd import wire as nwire
from foresync.nbd.connection import Transmission
from foresync.nbd.handshake import ExportInfo
from foresync.nbd.server import NbdConnection, NbdServer, ServerLimits
from foresync.record.record import Eviction
from foresync.replication.primary import Mode
from foresync.storage.file_backend import FileBackend

EXTENT = 4096
SIZE = 16 * EXTENT
VOLUME = b"V" * 16


class RecordingLink:
    def __init__(self) -> None:
        self.sent: list[wire.Message] = []

    def send(self, message: wire.Message) -> None:
        self.sent.append(message)

    def abort(self, reason: str) -> None:
        raise AssertionError(f"link aborted: {reason}")


class RecordingTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.out.extend(bytes(c) for c in chunks)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def nbd_write(cookie: int, offset: int, data: bytes) -> bytes:
    return struct.pack(">IHHQQI", nwire.REQUEST_MAGIC, 0, int(nwire.Command.WRITE), cookie,
                       offset, len(data)) + data


async def _scenario(tmp_path: Path) -> tuple[list[wire.Write], PrimarySite, FileBackend]:
    (tmp_path / "meta").mkdir()
    cfg = SiteConfig(path=str(tmp_path / "c.toml"), name="p", data=str(tmp_path / "img"), size=SIZE,
                     meta=str(tmp_path / "meta"), nbd_listen=("127.0.0.1", 0), export="x",
                     link_listen=("127.0.0.1", 0), link_peer=("127.0.0.1", 1), mode=Mode.LOOKAHEAD,
                     window_bytes=6144, heartbeat_s=1, timeout_s=10, extent_size=EXTENT, capacity=8,
                     lookahead=1, eviction=Eviction.LRU, watermark_interval_s=1,
                     admin_listen=("127.0.0.1", 0))
    backend = FileBackend(cfg.data, SIZE)
    site = PrimarySite(cfg, SiteMeta("primary", VOLUME, (1,)), backend, set())
    link = RecordingLink()
    site.link = link  # type: ignore[assignment]
    site.core.connected()
    site.pump()
    # The secondary's record holds extents 0 and 1, so both are resynced: extent 0 at once,
    # extent 1 once the 6 KiB window has room again.
    site._on_message(wire.Welcome(VOLUME, 1, 0, (0, 1)))
    export = ExportInfo(name="x", size=SIZE)
    connection = NbdConnection(NbdServer(site, export, ServerLimits(max_in_flight=1)))
    connection.transport = RecordingTransport()  # type: ignore[assignment]
    connection.tx = Transmission(export, False)
    # X touches extents 1 and 2 (2 is not recorded: a miss); Y, a plain hit on extent 1, waits
    # in the connection's queue behind X. Y is submitted from inside the pump when X is answered.
    connection.data_received(nbd_write(1, EXTENT + 3584, b"X" * 1024) + nbd_write(2, EXTENT, b"Y" * 512))
    site._on_message(wire.Applied(2))
    site._on_message(wire.Added(2, (2, 3)))
    return [m for m in link.sent if isinstance(m, wire.Write)], site, backend


def test_a_write_submitted_from_inside_the_pump_goes_out_after_what_the_pump_holds(tmp_path: Path) -> None:
    writes, site, backend = asyncio.run(_scenario(tmp_path))
    seqs = [m.seq for m in writes]
    assert seqs == sorted(seqs), f"frames left out of seq order: {seqs}"
    assert any(m.flags & wire.WriteFlag.RESYNC and m.offset == EXTENT for m in writes)  # extent 1
    assert any(not m.flags and m.offset == EXTENT and m.data == b"Y" * 512 for m in writes)
    secondary = bytearray(SIZE)
    for message in writes:  # applied in arrival order, as the secondary does
        secondary[message.offset : message.offset + len(message.data)] = message.data
    primary = backend.read(0, SIZE)
    assert primary[EXTENT : 2 * EXTENT] == bytes(secondary[EXTENT : 2 * EXTENT])
    assert primary[EXTENT : EXTENT + 512] == b"Y" * 512
    assert not site.core._resync.set
