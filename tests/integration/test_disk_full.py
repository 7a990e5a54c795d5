"""A full disk under either site (issue 12, items 2 and 3), with real processes and a real full
filesystem: a small loop-mounted ext4 holds the primary's data file, the secondary's data file or
the secondary's metadata directory (through a symlink at the path the config names). A filler
file takes nearly all of its room, so a write into a hole of the sparse data file, or a journal
append that needs a new block, fails with ENOSPC. qemu-io drives the writes over NBD.

Each test then frees the room (deletes the filler) and requires the pair to recover by itself:
in sync again, ``foresync verify`` finding no mismatch, and, after a clean stop, byte-identical
images holding what the host wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from .sites import MiB, Settings, Site, SitePair, assert_pattern, open_site_pairs, run_tool

pytestmark = pytest.mark.integration

VOLUME = "64MiB"
MISSES = 200
MakePair = Callable[..., SitePair]
MakeFs = Callable[[str], Path]


@contextmanager
def small_ext4(directory: Path, name: str, size_mib: int = 32) -> Iterator[Path]:
    """A fresh ext4 of ``size_mib`` MiB, loop-mounted at ``directory/name`` (needs root)."""
    image, mount = directory / f"{name}.ext4", directory / name
    mount.mkdir()
    with image.open("wb") as handle:
        handle.truncate(size_mib * MiB)
    run_tool(["mkfs.ext4", "-q", "-F", image])
    run_tool(["mount", "-o", "loop", image, mount], context="a loop mount needs root")
    try:
        yield mount
    finally:
        if run_tool(["umount", mount], ok=None).returncode != 0:
            run_tool(["umount", "-l", mount])


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[MakePair, MakeFs]]:
    """Site pairs, and small filesystems that outlive them (unmounted after the sites stop)."""
    with ExitStack() as mounts, open_site_pairs(tmp_path) as make:
        yield make, lambda name: mounts.enter_context(small_ext4(tmp_path, name))


def fill(mount: Path, leave_bytes: int) -> Path:
    """Take all but about ``leave_bytes`` of the filesystem's room with one file (delete it to
    free the room). The block map takes room of its own, so ask again for less until no block
    is left beyond ``leave_bytes``."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    size = 0
    try:
        while True:
            stat = os.statvfs(mount)
            chunk = stat.f_bfree * stat.f_frsize - leave_bytes
            while chunk >= 4096:
                try:
                    os.posix_fallocate(fd, size, chunk)
                    size += chunk
                    break
                except OSError:
                    chunk //= 2
            else:
                return filler
    finally:
        os.close(fd)


def data_on(site: Site, mount: Path) -> None:
    """The site's data file lives on ``mount``: a sparse file there, symlinked from its path."""
    target = mount / site.data_path.name
    with target.open("wb") as handle:
        handle.truncate(64 * MiB)
    site.data_path.symlink_to(target)


def meta_on(site: Site, mount: Path) -> None:
    target = mount / site.meta_path.name
    target.mkdir()
    site.meta_path.symlink_to(target)


def qemu_io(pair: SitePair, commands: Sequence[str],
            ok: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
    argv: list[str | Path] = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    return run_tool([*argv, pair.nbd_url], ok=ok, context=pair.logs())


def writes(first_mib: int, count: int, pattern: int) -> list[str]:
    """One 1 MiB write per extent (1 MiB extents), each into a hole of the sparse file."""
    return [f"write -P 0x{pattern + i:02x} {first_mib + i}M 1M" for i in range(count)]


def check_recovered(pair: SitePair, first_mib: int, count: int, pattern: int) -> None:
    """In sync by itself, verify clean, and identical images holding the last writes."""
    pair.wait_in_sync(timeout_s=90)
    pair.cli("verify", "--config", pair.primary.config_path)  # exit 1 on any mismatch
    pair.stop_both()
    pair.assert_identical()
    for i in range(count):
        assert_pattern(pair.primary.data_path, (first_mib + i) * MiB, MiB, pattern + i)


def started(make_pair: MakePair, settings: Settings, prepare: Callable[[SitePair], None]) -> SitePair:
    pair = make_pair(settings)
    prepare(pair)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    return pair


# -- item 2: the primary's data file -----------------------------------------------------------------


def test_a_full_disk_under_the_primary_fails_the_write_and_keeps_the_copies_equal(
        env: tuple[MakePair, MakeFs]) -> None:
    """The WRITE frame reaches the secondary before the local write fails (ENOSPC, maybe half
    done): the host gets the error, and the pair is not in sync until the extents are copied
    again from the primary, which happens at once (a slow resync rate keeps it observable).
    Before the fix the pair stayed in_sync while `verify` found the extents mismatched."""
    make_pair, make_fs = env
    fs = make_fs("primary-fs")
    pair = started(make_pair, Settings(size=VOLUME, capacity=16, lookahead=2, resync_rate_max="512KiB"),
                   lambda pair: data_on(pair.primary, fs))
    filler = fill(fs, leave_bytes=512 * 1024)
    result = qemu_io(pair, writes(8, 4, 0x40), ok=(1,))
    assert "No space left on device" in result.stdout + result.stderr, result.stdout
    status = pair.status(pair.primary)
    assert not status["in_sync"], "in sync while the failed extents are not copied again yet"
    assert status["counters"]["storage_errors"] >= 1, status
    assert "local write failed" in pair.primary.log()
    pair.wait_in_sync(timeout_s=90)
    pair.cli("verify", "--config", pair.primary.config_path)  # copies equal, disk still full
    filler.unlink()
    qemu_io(pair, writes(8, 4, 0x60))
    check_recovered(pair, 8, 4, 0x60)


# -- item 3: the secondary's data file and its metadata --------------------------------------------


def wait_secondary_error(pair: SitePair) -> dict[str, object]:
    pair.wait_for("the secondary's storage failure reported",
                  lambda: bool(pair.status(pair.primary).get("secondary_error")), timeout_s=30)
    return pair.status(pair.primary)


@pytest.mark.parametrize("mode", ["lookahead", "sync"])
def test_a_full_disk_under_the_secondary_is_reported_and_heals_itself(
        env: tuple[MakePair, MakeFs], mode: str) -> None:
    """The secondary cannot write its image: it tells the primary and drops the link; the
    primary logs it at ERROR, shows it in /status and /metrics, keeps serving (on_disconnect =
    continue) with the extents out of sync, and once there is room the pair heals by itself.
    Before the fix the secondary reported the writes applied and later misses failed with EIO."""
    make_pair, make_fs = env
    fs = make_fs("secondary-fs")
    pair = started(make_pair, Settings(size=VOLUME, capacity=16, lookahead=2, mode=mode),
                   lambda pair: data_on(pair.secondary, fs))
    filler = fill(fs, leave_bytes=512 * 1024)
    qemu_io(pair, writes(8, 4, 0x40))  # the host does not notice: answered as after a link loss
    primary = wait_secondary_error(pair)
    assert "No space left on device" in str(primary["secondary_error"]), primary
    assert primary["counters"]["secondary_storage_errors"] >= 1
    assert not primary["in_sync"] and primary["out_of_sync_extents"] > 0, primary
    secondary = pair.status(pair.secondary)
    assert "No space left on device" in secondary["storage_error"], secondary
    assert " ERROR " in pair.primary.log() and "could not write its image" in pair.primary.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{pair.primary.admin_port}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    # Labels volume and site (issue 17): match the sample, not one label set's spelling.
    assert re.search(r'^foresync_secondary_storage_failed\{[^}]*volume="vol0"[^}]*\} 1\.0$', metrics,
                     re.M), metrics
    qemu_io(pair, writes(16, 2, 0x50))  # writes go on while the secondary cannot take them
    time.sleep(3)  # the primary redials meanwhile; every attempt fails the same way
    assert not pair.status(pair.primary)["in_sync"]
    filler.unlink()
    qemu_io(pair, writes(8, 4, 0x60))
    check_recovered(pair, 8, 4, 0x60)
    assert_pattern(pair.secondary.data_path, 16 * MiB, MiB, 0x50)


def test_a_full_meta_disk_under_the_secondary_is_reported_and_heals_itself(
        env: tuple[MakePair, MakeFs]) -> None:
    """The secondary's journal cannot grow: it must not answer ADDED for an add it cannot make
    durable, so it reports the failure and drops the link; the pair heals once there is room
    (which must hold the undo log of the resync that follows: 64 KiB per extent it copies)."""
    make_pair, make_fs = env
    fs = make_fs("secondary-meta-fs")
    settings = Settings(size=VOLUME, extent_size="64KiB", capacity=16, lookahead=0)
    pair = started(make_pair, settings, lambda pair: meta_on(pair.secondary, fs))
    filler = fill(fs, leave_bytes=0)
    # Each 4 KiB write into another 64 KiB extent is a miss: an add and a removal to journal,
    # 17 bytes each, so the journal needs a new block within about 120 of them.
    misses = [f"write -P 0x{0x20 + i % 64:02x} {i * 64}K 4K" for i in range(MISSES)]
    qemu_io(pair, misses)
    primary = wait_secondary_error(pair)
    assert "record journal" in str(primary["secondary_error"]), primary
    assert not primary["in_sync"]
    filler.unlink()
    pair.wait_in_sync(timeout_s=90)
    pair.cli("verify", "--config", pair.primary.config_path)
    pair.stop_both()
    pair.assert_identical()
    for i in (0, 1, MISSES - 1):
        assert_pattern(pair.primary.data_path, i * 64 * 1024, 4096, 0x20 + i % 64)
