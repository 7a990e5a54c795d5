"""QEMU's NBD client (qemu-io, qemu-img) against ``foresync serve``.

Every change is checked twice: by reading it back over NBD in a new qemu-io session (a new
connection, so nothing is served from the client's state) and, where it matters, by reading the
server's data file directly.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import ServerProcess, file_bytes, qemu_io, run_tool

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB


def qemu_img_map(url: str) -> list[dict[str, Any]]:
    extents: list[dict[str, Any]] = json.loads(
        run_tool(["qemu-img", "map", "--output=json", "-f", "raw", url]).stdout)
    return extents


def extent_at(extents: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    for extent in extents:
        if extent["start"] <= offset < extent["start"] + extent["length"]:
            return extent
    raise AssertionError(f"no extent covers offset {offset}: {extents}")


@pytest.mark.parametrize(("offset", "length"), [
    (0, 64 * KiB),
    (1000, 5000),  # unaligned, straddling two 4 KiB blocks
    (3 * MiB + 511, 2 * MiB + 3),
    (64 * MiB - 4 * KiB, 4 * KiB),  # the last block of the export
])
def test_write_then_read_pattern(server: ServerProcess, offset: int, length: int) -> None:
    qemu_io(server.url, f"write -P 0xa5 {offset} {length}")

    qemu_io(server.url, f"read -P 0xa5 {offset} {length}")
    wrong = qemu_io(server.url, f"read -P 0x5a {offset} {length}", ok=None)
    assert wrong.returncode != 0, "read -P accepted a pattern that was never written"
    assert "Pattern verification failed" in wrong.stdout + wrong.stderr
    path = server.volume.data_path
    assert file_bytes(path, offset, length) == b"\xa5" * length
    if offset:
        assert file_bytes(path, offset - 1, 1) == b"\0"  # nothing written before the range


@pytest.mark.parametrize("command", ["write -z", "write -z -u"])
@pytest.mark.parametrize(("offset", "length"), [(64 * KiB, 64 * KiB), (3000, 1000)])
def test_write_zeroes(server: ServerProcess, command: str, offset: int, length: int) -> None:
    qemu_io(server.url, "write -P 0xa5 0 256k")

    qemu_io(server.url, f"{command} {offset} {length}")

    end = offset + length
    qemu_io(server.url, f"read -P 0 {offset} {length}", f"read -P 0xa5 0 {offset}",
            f"read -P 0xa5 {end} {256 * KiB - end}")
    assert file_bytes(server.volume.data_path, offset, length) == bytes(length)
    # Without -u (NBD_CMD_FLAG_NO_HOLE) the server uses FALLOC_FL_ZERO_RANGE; ext4 then reports
    # the range as data, which NBD allows (STATE_ZERO is optional), so the map is not checked here.


def test_write_zeroes_with_unmap_leaves_a_hole(server: ServerProcess) -> None:
    qemu_io(server.url, "write -P 0xa5 0 1M")
    qemu_io(server.url, "write -z -u 256k 512k")
    extent = extent_at(qemu_img_map(server.url), 256 * KiB)
    assert (extent["start"], extent["length"]) == (256 * KiB, 512 * KiB)
    assert (extent["data"], extent["zero"]) == (False, True)


def test_discard(server: ServerProcess) -> None:
    qemu_io(server.url, "write -P 0xa5 0 3M")

    qemu_io(server.url, "discard 1M 1M")

    # NBD leaves trimmed contents unspecified; this server punches a hole, which reads as zeroes.
    qemu_io(server.url, "read -P 0 1M 1M", "read -P 0xa5 0 1M", "read -P 0xa5 2M 1M")
    extents = qemu_img_map(server.url)
    assert (extent_at(extents, 1 * MiB)["data"], extent_at(extents, 1 * MiB)["zero"]) == (False, True)
    assert extent_at(extents, 0)["data"] is True
    assert extent_at(extents, 2 * MiB)["data"] is True


def test_flush_fua_and_pipelined_writes(server: ServerProcess) -> None:
    result = qemu_io(server.url,
                     "write -P 0x42 0 64k", "flush",
                     "write -f -P 0x43 64k 64k",  # FUA
                     "aio_write -P 0x44 1M 64k", "aio_write -P 0x45 2M 64k",
                     "aio_write -P 0x46 3M 64k", "aio_flush", "flush")
    assert result.stdout.count("wrote 65536/65536") == 5

    qemu_io(server.url, "read -P 0x42 0 64k", "read -P 0x43 64k 64k", "read -P 0x44 1M 64k",
            "read -P 0x45 2M 64k", "read -P 0x46 3M 64k")
    assert file_bytes(server.volume.data_path, 3 * MiB, 64 * KiB) == b"\x46" * 64 * KiB


def test_qemu_img_info(server: ServerProcess) -> None:
    info = json.loads(run_tool(["qemu-img", "info", "--output=json", server.url]).stdout)
    assert info["virtual-size"] == server.volume.size
    assert info["format"] == "raw"


def test_qemu_img_map_shows_holes_and_data(server: ServerProcess) -> None:
    qemu_io(server.url, "write -P 0x11 1M 64k", "write -P 0x22 10M 4k")

    extents = qemu_img_map(server.url)

    assert extents[0]["start"] == 0
    for before, after in itertools.pairwise(extents):
        assert before["start"] + before["length"] == after["start"]
    assert extents[-1]["start"] + extents[-1]["length"] == server.volume.size
    for offset in (0, 1 * MiB + 64 * KiB, 10 * MiB + 4 * KiB, server.volume.size - 1):
        hole = extent_at(extents, offset)
        assert (hole["data"], hole["zero"]) == (False, True), f"offset {offset}: {hole}"
    for offset, length in ((1 * MiB, 64 * KiB), (10 * MiB, 4 * KiB)):
        data = extent_at(extents, offset)
        assert data["data"] is True and data["zero"] is False, f"offset {offset}: {data}"
        assert data["start"] == offset and data["length"] == length


def _sparse_source(path: Path, size: int) -> None:
    """Random data in a few ranges, explicit zero bytes in one, holes everywhere else."""
    with path.open("wb") as source:
        source.truncate(size)
        for offset, length in ((0, 1 * MiB), (5 * MiB, 4 * KiB), (20 * MiB + 512, 2 * MiB),
                               (size - 64 * KiB, 64 * KiB)):
            source.seek(offset)
            source.write(os.urandom(length))
        source.seek(30 * MiB)
        source.write(bytes(1 * MiB))


@pytest.mark.parametrize("source_format", ["raw", "qcow2"])
def test_qemu_img_convert_into_export(server: ServerProcess, tmp_path: Path,
                                      source_format: str) -> None:
    raw = tmp_path / "source.raw"
    _sparse_source(raw, server.volume.size)
    source = raw
    if source_format == "qcow2":
        source = tmp_path / "source.qcow2"
        run_tool(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, source])
    # Stale data everywhere: convert -n must overwrite the source's holes with zeroes.
    qemu_io(server.url, "write -P 0xee 0 64M")

    run_tool(["qemu-img", "convert", "-n", "-f", source_format, "-O", "raw", source, server.url])

    run_tool(["cmp", raw, server.volume.data_path])
    run_tool(["qemu-img", "compare", "-f", source_format, "-F", "raw", source, server.url])
