"""libnbd's tools (nbdinfo, nbdcopy) and its Python bindings against ``foresync serve``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    ServerProcess,
    StartServer,
    qemu_io,
    require_python_libnbd,
    run_tool,
)

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
NBDINFO_TRUE, NBDINFO_FALSE = 0, 2  # nbdinfo --can/--is exit statuses (nbdinfo(1), "Test for flags")

# What every export offers; a read-only one refuses everything that changes data.
READ_WRITE_ANSWERS = {
    "--can connect": NBDINFO_TRUE, "--can read": NBDINFO_TRUE, "--can write": NBDINFO_TRUE,
    "--can flush": NBDINFO_TRUE, "--can fua": NBDINFO_TRUE, "--can trim": NBDINFO_TRUE,
    "--can zero": NBDINFO_TRUE, "--can fast-zero": NBDINFO_TRUE, "--can cache": NBDINFO_TRUE,
    "--can multi-conn": NBDINFO_TRUE, "--can df": NBDINFO_TRUE,
    "--can structured-reply": NBDINFO_TRUE,
    "--is read-only": NBDINFO_FALSE, "--is rotational": NBDINFO_FALSE, "--is tls": NBDINFO_FALSE,
}
READ_ONLY_ANSWERS = READ_WRITE_ANSWERS | {
    "--can write": NBDINFO_FALSE, "--can trim": NBDINFO_FALSE, "--can zero": NBDINFO_FALSE,
    "--can fast-zero": NBDINFO_FALSE, "--is read-only": NBDINFO_TRUE,
}


def nbdinfo_json(*args: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(run_tool(["nbdinfo", "--json", *args]).stdout)
    return info


def test_nbdinfo_json(server: ServerProcess) -> None:
    info = nbdinfo_json(server.url)
    assert info["protocol"] == "newstyle-fixed"
    assert info["structured"] is True
    [export] = info["exports"]
    assert export["export-name"] == "vol0"
    assert export["export-size"] == server.volume.size
    assert (export["block_size_minimum"], export["block_size_preferred"],
            export["block_size_maximum"]) == (1, 4096, 32 * MiB)
    assert "base:allocation" in export["contexts"]
    assert export["is_read_only"] is False


def test_nbdinfo_list(server: ServerProcess) -> None:
    [export] = nbdinfo_json("--list", server.base_url)["exports"]
    assert export["export-name"] == "vol0"
    assert export["export-size"] == server.volume.size
    assert str(server.volume.data_path) in export["description"]

    text = run_tool(["nbdinfo", "--list", server.base_url]).stdout
    assert 'export="vol0"' in text


def test_nbdinfo_map_shows_holes_and_data(server: ServerProcess) -> None:
    qemu_io(server.url, "write -P 0x11 4M 1M", "write -P 0x22 20M 4k")

    extents = json.loads(run_tool(["nbdinfo", "--map", "--json", server.url]).stdout)

    position = 0
    for extent in extents:
        assert extent["offset"] == position
        position += extent["length"]
    assert position == server.volume.size

    def type_at(offset: int) -> int:
        [kind] = [e["type"] for e in extents if e["offset"] <= offset < e["offset"] + e["length"]]
        return int(kind)

    hole_zero, data = 3, 0  # NBD_STATE_HOLE | NBD_STATE_ZERO, and neither
    for offset in (0, 4 * MiB - 1, 5 * MiB, 20 * MiB - 1, 20 * MiB + 4 * KiB, server.volume.size - 1):
        assert type_at(offset) == hole_zero, f"offset {offset}: {extents}"
    for offset in (4 * MiB, 5 * MiB - 1, 20 * MiB, 20 * MiB + 4 * KiB - 1):
        assert type_at(offset) == data, f"offset {offset}: {extents}"
    text = run_tool(["nbdinfo", "--map", server.url]).stdout
    assert "hole,zero" in text and "data" in text


def _flag_answers(url: str) -> dict[str, int]:
    return {flag: run_tool(["nbdinfo", *flag.split(), url], ok=(0, 2)).returncode
            for flag in READ_WRITE_ANSWERS}


def test_nbdinfo_can_flags_read_write(server: ServerProcess) -> None:
    assert _flag_answers(server.url) == READ_WRITE_ANSWERS


def test_nbdinfo_can_flags_read_only(start_server: StartServer) -> None:
    server = start_server(read_only=True)
    assert _flag_answers(server.url) == READ_ONLY_ANSWERS


# libnbd normally refuses, client side, any command the server did not advertise. With strict mode
# off the requests reach the server, so this checks the server's own enforcement (NBD spec,
# "Error values": EPERM for writes to a read-only export, EINVAL/ENOSPC beyond the end).
_RAW_REQUESTS = r"""
import errno, json, sys
import nbd

h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
calls = {
    "pwrite": lambda: h.pwrite(b"x" * 4096, 0),
    "pwrite_fua": lambda: h.pwrite(b"x" * 4096, 0, nbd.CMD_FLAG_FUA),
    "trim": lambda: h.trim(4096, 0),
    "zero": lambda: h.zero(4096, 0),
    "flush": lambda: h.flush(),
    "pread_past_end": lambda: h.pread(4096, size - 512),
    "pwrite_past_end": lambda: h.pwrite(b"x" * 4096, size - 512),
    "pread": lambda: h.pread(4096, 0),
}
answers = {}
for name, call in calls.items():
    try:
        call()
        answers[name] = "ok"
    except nbd.Error as exc:  # libnbd gives the errno as a name ("EPERM") or a number
        code = exc.errno
        answers[name] = code if isinstance(code, str) else errno.errorcode.get(code, str(code))
h.shutdown()
print(json.dumps(answers))
"""


def _raw_answers(url: str) -> dict[str, str]:
    python = require_python_libnbd()
    answers: dict[str, str] = json.loads(run_tool([python, "-c", _RAW_REQUESTS, url]).stdout)
    return answers


def test_read_only_server_refuses_writes_itself(start_server: StartServer) -> None:
    server = start_server(read_only=True)
    before = server.volume.data_path.read_bytes()

    answers = _raw_answers(server.url)

    assert answers == {
        "pwrite": "EPERM", "pwrite_fua": "EPERM", "trim": "EPERM", "zero": "EPERM",
        "flush": "ok", "pread_past_end": "EINVAL", "pwrite_past_end": "EPERM", "pread": "ok",
    }
    assert server.volume.data_path.read_bytes() == before


def test_read_write_server_answers_out_of_range_and_keeps_serving(server: ServerProcess) -> None:
    answers = _raw_answers(server.url)
    assert answers == {
        "pwrite": "ok", "pwrite_fua": "ok", "trim": "ok", "zero": "ok", "flush": "ok",
        "pread_past_end": "EINVAL", "pwrite_past_end": "ENOSPC", "pread": "ok",
    }
    qemu_io(server.url, "read -P 0 0 4k", f"read -P 0 {server.volume.size - 4096} 4k")


# Thousands of small writes in flight at once: they reach the server in large TCP segments, so
# hundreds are parsed from one read and served in one pass. fio and qemu keep far fewer in flight.
_PIPELINED_WRITES = r"""
import json, sys
import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
count, stride = 3000, 4096
for i in range(count):
    h.aio_pwrite(i.to_bytes(4, "big") * 128, i * stride)
while h.aio_in_flight() > 0:
    h.poll(-1)
mismatches = [i for i in range(count) if h.pread(512, i * stride) != i.to_bytes(4, "big") * 128]
h.shutdown()
print(json.dumps({"count": count, "mismatches": mismatches[:10]}))
"""


def test_thousands_of_pipelined_small_writes(server: ServerProcess) -> None:
    python = require_python_libnbd()

    result = json.loads(run_tool([python, "-c", _PIPELINED_WRITES, server.url]).stdout)

    assert result == {"count": 3000, "mismatches": []}
    assert "Traceback" not in server.log()
    qemu_io(server.url, f"read -P 0 {3000 * 4096} 4k")  # the connection's end left the server fine


def _sparse_random_file(path: Path, size: int) -> None:
    """Random bytes with a 2 MiB hole in the middle, so nbdcopy sends zeroes as well as data."""
    with path.open("wb") as source:
        source.truncate(size)
        source.write(os.urandom(3 * MiB))
        source.seek(5 * MiB)
        source.write(os.urandom(size - 5 * MiB))


def test_nbdcopy_round_trip(start_server: StartServer, tmp_path: Path) -> None:
    size = 8 * MiB
    server = start_server(size)
    source, copy = tmp_path / "source.bin", tmp_path / "copy.bin"
    _sparse_random_file(source, size)
    qemu_io(server.url, "write -P 0xff 0 8M")  # stale data the hole must overwrite

    run_tool(["nbdcopy", "--flush", source, server.url])
    run_tool(["nbdcopy", server.url, copy])

    assert copy.stat().st_size == size
    run_tool(["cmp", source, copy])
    run_tool(["cmp", source, server.volume.data_path])


_REFUSED_LARGE_WRITE = r"""
import json, sys
import nbd

h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
answers = {}
try:
    h.pwrite(b"x" * (8 * 1024 * 1024), 0)
    answers["pwrite"] = "ok"
except nbd.Error as exc:
    answers["pwrite"] = str(exc.errno)
    answers["message"] = str(exc)
try:
    h.pread(4096, 0)
    answers["pread_after"] = "ok"
except nbd.Error as exc:
    answers["pread_after"] = str(exc)
print(json.dumps(answers))
"""


def test_refused_large_write_is_answered_after_its_payload(start_server: StartServer) -> None:
    server = start_server(read_only=True)
    python = require_python_libnbd()

    answers = json.loads(run_tool([python, "-c", _REFUSED_LARGE_WRITE, server.url]).stdout)

    assert answers["pwrite"] == "EPERM", answers
    assert answers["pread_after"] == "ok", answers
