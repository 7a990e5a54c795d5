"""``foresync demo``: the standalone NBD server exercised by real clients on loopback.

It starts ``foresync serve`` on a temporary sparse file, writes and reads back a pattern with
qemu-io, inspects the export with nbdinfo, copies it out with nbdcopy and compares the bytes.
Everything it starts is stopped and removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from foresync.testing.processes import free_port, stop_process, wait_listening

SIZE = "64MiB"


def _step(title: str, argv: list[str]) -> str:
    print(f"\n== {title}\n$ {' '.join(argv)}", flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).strip()
    if output:
        print(output)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed with status {result.returncode}")
    return output


def run_standalone_demo(keep: bool = False) -> int:
    missing = [tool for tool in ("qemu-io", "nbdinfo", "nbdcopy") if shutil.which(tool) is None]
    if missing:
        print(f"demo needs {', '.join(missing)}: run `make setup` first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="foresync-demo-"))
    port = free_port()
    data = workdir / "vol0.img"
    url = f"nbd://127.0.0.1:{port}/vol0"
    argv = [sys.executable, "-m", "foresync.cli", "serve", "--data", str(data), "--size", SIZE,
            "--listen", f"127.0.0.1:{port}", "--export", "vol0"]
    print(f"$ foresync serve --data {data} --size {SIZE} --listen 127.0.0.1:{port} --export vol0")
    proc = subprocess.Popen(argv)
    try:
        wait_listening(port, proc, "foresync serve", timeout_s=10.0)
        _step("a host writes 1 MiB of pattern 0xa5 at 4 MiB", ["qemu-io", "-f", "raw", "-c",
              "write -P 0xa5 4M 1M", url])
        _step("and reads it back, checking every byte", ["qemu-io", "-f", "raw", "-c",
              "read -P 0xa5 4M 1M", url])
        _step("zeroes and discards go through too", ["qemu-io", "-f", "raw", "-c",
              "write -z 8M 1M", "-c", "discard 12M 1M", "-c", "flush", url])
        _step("what the export offers", ["nbdinfo", url])
        _step("allocation map: only written ranges hold data", ["nbdinfo", "--map", url])
        copy = workdir / "copy.img"
        _step("copy the whole export out with nbdcopy", ["nbdcopy", url, str(copy)])
        same = copy.read_bytes() == data.read_bytes()
        print(f"\n== copy and volume file identical: {same}")
        if not same:
            return 1
        if keep:
            print(f"\nserver left running (pid {proc.pid}):\n  nbdinfo {url}\n  kill {proc.pid}  # to stop it"
                  f"\n  rm -r {workdir}")
            return 0
        print("\ndemo finished: a real NBD client wrote, read, zeroed, discarded and copied the volume")
        return 0
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"demo stopped: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            stop_process(proc, timeout_s=10.0)
            shutil.rmtree(workdir, ignore_errors=True)
