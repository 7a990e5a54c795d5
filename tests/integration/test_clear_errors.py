"""Clear errors instead of tracebacks (issue 12, item 8), through the real CLI in a subprocess.

Each bad setting or broken disk must end the command with a non-zero exit status and one
``Error:`` line on stderr that names the config key or the file, and no traceback. Read-only and
full file systems are real: small ext4 images, loop-mounted (read-only with ``-o ro``, full by
writing a filler file until ENOSPC).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from .sites import FORESYNC, TOOL_TIMEOUT_S, MiB, Settings, SitePair, run_tool

pytestmark = pytest.mark.integration

MakePair = Callable[..., SitePair]
Mount = Callable[..., Path]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """Factory: a fresh ext4 image (8 MiB by default) loop-mounted at ``where`` (created), optionally
    read-only; every mount is undone at the end (after the site pairs, which are set up later
    and so torn down first)."""
    mounted: list[Path] = []

    def make(where: Path, *, read_only: bool = False, image: Path | None = None,
             size: str = "8M") -> Path:
        if image is None:
            image = tmp_path / f"fs{len(mounted)}.img"
            image.write_bytes(b"")
            run_tool(["truncate", "-s", size, image])
            run_tool(["mkfs.ext4", "-q", image])
        where.mkdir(parents=True, exist_ok=True)
        run_tool(["mount", "-o", "loop,ro" if read_only else "loop", image, where])
        mounted.append(where)
        return image

    yield make
    with ExitStack() as stack:
        for where in reversed(mounted):
            stack.callback(unmount, where)


def unmount(where: Path) -> None:
    if subprocess.run(["mountpoint", "-q", str(where)], check=False).returncode == 0:
        subprocess.run(["umount", str(where)], check=False)
        if subprocess.run(["mountpoint", "-q", str(where)], check=False).returncode == 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def fill(where: Path) -> None:
    """Write filler files until the file system under ``where`` has no block left. A running
    site may free a block meanwhile (its atomic metadata writes replace a file), so fill again
    until a probe write fails, a few rounds at most."""
    for attempt in range(5):
        for block, name in (("1M", "filler"), ("1k", "filler-small")):
            run_tool(["dd", "if=/dev/zero", f"of={where / f'{name}-{attempt}'}", f"bs={block}"], ok=None)
        probe = subprocess.run(["sh", "-c", f"echo x > {where / 'probe'}"], check=False,
                               capture_output=True)
        if probe.returncode != 0:
            return
        (where / "probe").unlink()
    pytest.fail(f"the file system under {where} still takes writes after 5 rounds of filling")


def unfill(where: Path) -> None:
    """Remove what ``fill`` wrote: the file system has room again."""
    for filler in where.glob("filler*"):
        filler.unlink()


def foresync(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_tool([FORESYNC, *args], ok=None)


def assert_clear_error(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """Non-zero exit, no traceback, one ``Error:`` line that names everything in ``named``."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for text in named:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def write_config(path: Path, volume: str, link_listen: str = "127.0.0.1:0") -> Path:
    path.write_text(f"[volume]\n{volume}\n[nbd]\nlisten = \"127.0.0.1:0\"\n"
                    f"[link]\nlisten = \"{link_listen}\"\npeer = \"127.0.0.1:1\"\n"
                    "[admin]\nlisten = \"127.0.0.1:0\"\n")
    return path


# -- the config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["[1, 2]", "1.5", "{ a = 1 }"])
@pytest.mark.parametrize("command", ["init", "run"])
def test_a_size_of_the_wrong_type_names_the_key(tmp_path: Path, size: str, command: str) -> None:
    config = write_config(tmp_path / "site.toml", f'data = "v.img"\nsize = {size}\nmeta = "m"')
    args = ["--role", "primary"] if command == "init" else []
    result = foresync(command, "--config", config, *args)
    assert_clear_error(result, "[volume] size", size.split()[0].rstrip(","))
    assert result.stderr.strip().count("\n") == 0, result.stderr  # the error is all it says
    assert not (tmp_path / "v.img").exists() and not (tmp_path / "m").exists()


# -- the metadata directory ---------------------------------------------------------------------------


def test_meta_that_is_a_plain_file_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("not a directory\n")
    config = write_config(tmp_path / "site.toml", 'data = "v.img"\nsize = "4MiB"\nmeta = "m"')
    for args in (["init", "--role", "primary"], ["run"]):
        result = foresync(*args[:1], "--config", config, *args[1:])
        assert_clear_error(result, f"[volume] meta = {tmp_path / 'm'}", "is not a directory")
        assert not (tmp_path / "v.img").exists(), "the volume file was created anyway"


def test_meta_that_cannot_be_created_creates_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "site.toml",
                          'data = "v.img"\nsize = "4MiB"\nmeta = "/proc/foresync-test/meta"')
    result = foresync("init", "--config", config, "--role", "primary")
    assert_clear_error(result, "[volume] meta = /proc/foresync-test/meta", "cannot create it")
    assert not (tmp_path / "v.img").exists()


def test_meta_on_a_read_only_file_system(tmp_path: Path, mount: Mount) -> None:
    meta = tmp_path / "ro"
    image = mount(meta)  # read-write first: init works there
    config = write_config(tmp_path / "site.toml", 'data = "v.img"\nsize = "4MiB"\nmeta = "ro"')
    assert foresync("init", "--config", config, "--role", "primary").returncode == 0
    (tmp_path / "v.img").unlink()
    unmount(meta)
    mount(meta, read_only=True, image=image)

    result = foresync("run", "--config", config)
    assert_clear_error(result, f"[volume] meta = {meta}", "cannot write there",
                       "Read-only file system")
    assert not (tmp_path / "v.img").exists(), "run created the volume file anyway"
    result = foresync("init", "--config", config, "--role", "primary", "--force")
    assert_clear_error(result, f"[volume] meta = {meta}", "Read-only file system")
    assert not (tmp_path / "v.img").exists(), "init created the volume file anyway"


# -- ports already in use -----------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "key"), [("primary", "[admin] listen"), ("primary", "[nbd] listen"),
                                           ("primary", "[link] listen"),
                                           ("secondary", "[link] listen")])
def test_a_port_in_use_names_the_key_and_the_address(make_pair: MakePair, role: str, key: str) -> None:
    pair = make_pair(Settings(size="16MiB", capacity=8))
    pair.init_both()
    site = pair.primary if role == "primary" else pair.secondary
    port = {"[admin] listen": site.admin_port, "[nbd] listen": site.nbd_port,
            "[link] listen": site.link_port}[key]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = run_tool([FORESYNC, "run", "--config", site.config_path], ok=None,
                          timeout_s=TOOL_TIMEOUT_S)
    assert_clear_error(result, f"{key} = 127.0.0.1:{port}", "cannot listen there",
                       "Address already in use")


# -- a stop while the metadata disk is full -----------------------------------------------------------


def stop_expecting_failure(pair: SitePair, role: str) -> str:
    """SIGTERM the site; it must exit non-zero, without a traceback; its log."""
    site = pair.primary if role == "primary" else pair.secondary
    assert site.proc is not None
    site.proc.terminate()
    status = site.proc.wait(timeout=60)
    assert status != 0, pair.logs()
    log = site.log()
    assert "Traceback" not in log, log
    return log


def test_a_primary_stopped_with_its_meta_disk_full(mount: Mount, make_pair: MakePair) -> None:
    """oos.json cannot be written: one ERROR naming it, exit status 1, no clean-stop marker (so
    the next start treats the stop as unclean: in async mode it copies every extent again)."""
    pair = make_pair(Settings(size="16MiB", capacity=8, mode="async"))
    meta = pair.primary.meta_path
    mount(meta)
    pair.init_both()
    pair.start_both()
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x2d 0 3M", pair.nbd_url], context=pair.logs())
    pair.wait_in_sync()
    fill(meta)

    log = stop_expecting_failure(pair, "primary")
    oos = meta / "oos.json"
    assert f"ERROR vol=vol0 foresync.daemon.primary: clean stop failed: cannot write {oos}: No space " \
           "left on device; the next start treats this stop as unclean" in log, log
    assert f"Error: cannot write {oos}: No space left on device" in log, log
    assert not (meta / "clean-stop").exists() and not (meta / "oos.json.tmp").exists()

    unfill(meta)
    pair.restart(pair.primary)
    pair.wait_in_sync()
    assert "async mode after an unclean stop" in pair.primary.log().split("start #2")[1], pair.logs()
    pair.stop_both()
    pair.assert_identical()


def test_a_secondary_stopped_with_its_meta_disk_full(mount: Mount, make_pair: MakePair) -> None:
    pair = make_pair(Settings(size="16MiB", capacity=8))
    meta = pair.secondary.meta_path
    mount(meta, size="32M")  # room for the undo log of the resync after the restart
    pair.init_both()
    pair.start_both()
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x2e 0 3M", pair.nbd_url], context=pair.logs())
    pair.wait_in_sync()
    fill(meta)

    log = stop_expecting_failure(pair, "secondary")
    journal = meta / "record.journal"
    assert (f"clean stop failed: cannot write the record checkpoint for {journal} (the journal "
            "itself is intact): No space left on device") in log, log
    assert "Error: cannot write the record checkpoint" in log, log
    assert not (meta / "record.journal.tmp").exists()

    unfill(meta)
    pair.restart(pair.secondary)
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x2f 4M 1M", pair.nbd_url], context=pair.logs())
    pair.wait_in_sync()
    pair.stop_both()
    pair.assert_identical()
    assert pair.secondary.data_path.read_bytes()[4 * MiB:5 * MiB] == b"\x2f" * MiB


def test_writes_wait_while_the_primary_cannot_store_its_out_of_sync_set(mount: Mount,
                                                                        make_pair: MakePair) -> None:
    """With the secondary gone, a write outside the record must be stored as out-of-sync before
    it is acknowledged. The meta disk is full: the write waits (never acknowledged unrecorded),
    an ERROR names oos.json, and once space is freed it completes and the pair resyncs."""
    pair = make_pair(Settings(size="16MiB", capacity=8, lookahead=0))
    meta = pair.primary.meta_path
    mount(meta)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    pair.stop(pair.secondary)
    pair.wait_link(pair.primary, "disconnected")
    fill(meta)

    writer = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "write -P 0x6a 12M 1M", pair.nbd_url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        oos = meta / "oos.json"
        pair.wait_for("the ERROR", lambda: f"cannot write {oos}: No space left on device: writes "
                      "to extents the secondary may lack wait" in pair.primary.log())
        assert writer.poll() is None, "the write was answered while its extent was unrecorded"
        unfill(meta)
        output, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, output
    assert "out-of-sync set stored again" in pair.primary.log()
    assert pair.status(pair.primary)["out_of_sync_extents"] >= 1
    errors = [line for line in pair.primary.log().splitlines() if " ERROR " in line]
    assert len(errors) <= 12, errors  # ten a minute, and the notice that more were left out
    pair.start(pair.secondary)
    pair.wait_in_sync()
    pair.stop_both()
    pair.assert_identical()
    assert "Traceback" not in pair.logs()


def test_fd_exhaustion_is_logged_and_clients_get_in_once_it_clears(tmp_path: Path) -> None:
    """``foresync serve`` with room for a few connections only: accept() fails with EMFILE.
    That is an ERROR in the log (ten a minute, no traceback), the clients wait in the backlog,
    and once connections close a real client gets in."""
    import resource
    import time

    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [FORESYNC, "serve", "--data", tmp_path / "v.img", "--size", "16MiB", "--listen",
             "127.0.0.1:0"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24)))
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        while "serving " not in log_path.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        port = int(log_path.read_text().split("nbd://127.0.0.1:")[1].split("/")[0])
        for _ in range(30):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        deadline = time.monotonic() + 15
        while "cannot accept client connections" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        time.sleep(1.5)  # the accept loop retries every 0.1 s: the log must not grow with it
        for client in clients:
            client.close()
        clients.clear()
        result = run_tool(["nbdinfo", f"nbd://127.0.0.1:{port}/foresync"], ok=None)
        assert result.returncode == 0, (result.stderr, log_path.read_text())
    finally:
        for client in clients:
            client.close()
        server.terminate()
        status = server.wait(timeout=30)
    text = log_path.read_text()
    assert status == 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert errors and "NBD: cannot accept client connections: Too many open files" in errors[0], text
    assert len(errors) <= 11, errors


def test_any_os_error_a_command_meets_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """The CLI's last line of defence: an OSError no command explained itself (here inspect
    meets a journal that is a directory) is one Error line naming the file, not a traceback."""
    meta = tmp_path / "m"
    (meta / "record.journal").mkdir(parents=True)
    (meta / "site.json").write_text('{"format": 1, "role": "secondary", "volume_id": null}\n')
    result = foresync("inspect", "--meta", meta)
    assert_clear_error(result, f"{meta / 'record.journal'}: Is a directory")
