"""A real ext4 filesystem on the export: nbdfuse turns it into a file, the kernel loop-mounts it.

This drives the server with what a filesystem really sends: mkfs's discards and zeroing, journal
writes and flushes from the kernel, metadata reads by fsck. Everything mounted is unmounted in
``finally`` blocks, innermost first, so a failing assertion leaves no mount behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import ServerProcess, require_tool, run_tool

pytestmark = pytest.mark.integration

NBDFUSE_TIMEOUT_S = 15.0


@contextmanager
def nbdfuse_file(url: str, mount_dir: Path) -> Iterator[Path]:
    """Run nbdfuse in the background and yield the file it exposes (``MOUNTDIR/nbd``)."""
    nbdfuse = require_tool("nbdfuse")
    require_tool("fusermount3")
    mount_dir.mkdir()
    log_path = mount_dir.with_name("nbdfuse.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen([nbdfuse, str(mount_dir), url], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    device = mount_dir / "nbd"
    try:
        deadline = time.monotonic() + NBDFUSE_TIMEOUT_S
        while not device.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nbdfuse did not expose {device} (status {proc.poll()})\n"
                            f"{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield device
    finally:
        status = _stop_nbdfuse(proc, mount_dir)
    # Only reached when the body succeeded, so it never hides the body's own failure.
    assert status == 0, f"nbdfuse exit status {status}\n{log_path.read_text(errors='replace')}"


def _stop_nbdfuse(proc: subprocess.Popen[bytes], mount_dir: Path) -> int | None:
    """Unmount and reap nbdfuse; returns its exit status, or None if it had to be killed."""
    if os.path.ismount(mount_dir):
        subprocess.run(["fusermount3", "-u", str(mount_dir)], check=False, timeout=30)
    try:
        return proc.wait(timeout=NBDFUSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        # A killed nbdfuse leaves a dead FUSE mount behind; detach it lazily.
        subprocess.run(["fusermount3", "-u", "-z", str(mount_dir)], check=False, timeout=30)
        return None


@contextmanager
def loop_mounted(image: Path, mount_dir: Path) -> Iterator[Path]:
    mount_dir.mkdir(exist_ok=True)
    run_tool(["mount", "-o", "loop", image, mount_dir])
    try:
        yield mount_dir
    finally:
        # The loop device was set up by mount, so umount also detaches it (autoclear). A busy
        # mount is detached lazily so that nbdfuse can still be unmounted after it.
        if os.path.ismount(mount_dir) and subprocess.run(
                ["umount", str(mount_dir)], check=False, timeout=60).returncode:
            subprocess.run(["umount", "-l", str(mount_dir)], check=False, timeout=60)


def write_tree(root: Path) -> dict[str, str]:
    """Files of awkward sizes with random content; returns their sha256 by relative path."""
    sizes = {"empty": 0, "one-byte": 1, "unaligned": 4097, "medium": 300 * 1024,
             "nested/deeper/big.bin": 6 * 1024 * 1024 + 123}
    digests = {}
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = os.urandom(size)
        path.write_bytes(content)
        digests[name] = hashlib.sha256(content).hexdigest()
    return digests


def read_tree(root: Path, names: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in names}


def test_ext4_on_the_export(server: ServerProcess, tmp_path: Path) -> None:
    for tool in ("mkfs.ext4", "fsck.ext4", "mount", "umount"):
        require_tool(tool)
    with nbdfuse_file(server.url, tmp_path / "fuse") as device:
        assert device.stat().st_size == server.volume.size
        run_tool(["mkfs.ext4", "-q", "-F", "-L", "foresync", device])

        with loop_mounted(device, tmp_path / "fs") as root:
            digests = write_tree(root)
            run_tool(["sync"])
        fsck = run_tool(["fsck.ext4", "-n", "-f", device], ok=None)
        assert fsck.returncode == 0, f"fsck found problems:\n{fsck.stdout}\n{fsck.stderr}"

        with loop_mounted(device, tmp_path / "fs") as root:
            assert read_tree(root, digests) == digests
            assert sorted(p.name for p in root.iterdir()) == [
                "empty", "lost+found", "medium", "nested", "one-byte", "unaligned"]

    # The server's own file holds the same filesystem, byte for byte where fsck looks.
    fsck = run_tool(["fsck.ext4", "-n", "-f", server.volume.data_path], ok=None)
    assert fsck.returncode == 0, f"fsck of the data file:\n{fsck.stdout}\n{fsck.stderr}"
