"""fio's NBD engine (libnbd, 16 requests in flight) writes with checksums, then verifies.

The verify pass runs in a new fio process against a restarted server, so it checks what reached
the data file, not anything held by the client or the first server process. A deliberately
corrupted block must then make the same verify pass fail, which shows that it really checks.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import StartServer, describe, run_tool

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
JOB_BYTES = 32 * MiB
_VERIFY_ERROR_RE = re.compile(r"verify|bad magic|crc32c", re.IGNORECASE)


def fio(url: str, output: Path, *extra: str, ok: tuple[int, ...] = (0,)) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    result = run_tool([
        "fio", "--name=foresync", "--ioengine=nbd", f"--uri={url}", "--rw=randwrite", "--bs=4k",
        "--iodepth=16", f"--size={JOB_BYTES}", "--verify=crc32c", "--randrepeat=1",
        "--verify_state_save=0",  # else a failed verify leaves a state file in the cwd
        "--output-format=json", f"--output={output}", *extra,
    ], ok=ok)
    report: dict[str, Any] = json.loads(output.read_text()) if output.stat().st_size else {}
    return result, report


def test_fio_randwrite_verify(start_server: StartServer, tmp_path: Path) -> None:
    first = start_server()

    result, report = fio(first.url, tmp_path / "write.json")

    [job] = report["jobs"]
    assert job["error"] == 0, describe(result)
    assert job["write"]["io_bytes"] == JOB_BYTES
    assert job["read"]["io_bytes"] == JOB_BYTES  # fio read every block back and checked it
    assert not _VERIFY_ERROR_RE.search(result.stderr), describe(result)

    assert first.stop() == 0, first.log()
    second = start_server(data_path=first.volume.data_path)
    result, report = fio(second.url, tmp_path / "verify.json", "--verify_only")
    [job] = report["jobs"]
    assert job["error"] == 0, describe(result)
    assert job["read"]["io_bytes"] == JOB_BYTES
    assert not _VERIFY_ERROR_RE.search(result.stderr), describe(result)

    with first.volume.data_path.open("r+b") as volume:  # corrupt one 4 KiB block behind fio's back
        volume.seek(5 * MiB)
        volume.write(bytes(4096))
    result, _ = fio(second.url, tmp_path / "corrupt.json", "--verify_only", ok=(1,))
    assert "verify: bad magic header" in result.stderr, describe(result)
