"""A PostgreSQL server as a host of foresync exports (test_groups.py): its data directory on ext4
on one member export, its WAL (``initdb --waldir``) on ext4 on another, each through nbdfuse and
a loop mount. Runs as the ``postgres`` user (it refuses root); every process is ended by its id."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .sites import require_tool, run_tool

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/nonexistent"))
ACCOUNTS = 500
START_BALANCE = 1000
TRANSFER = """\\set src random(1, {n})
\\set dst random(1, {n})
\\set amount random(1, 100)
BEGIN;
UPDATE accounts SET balance = balance - :amount WHERE id = :src;
UPDATE accounts SET balance = balance + :amount WHERE id = :dst;
INSERT INTO ledger (src, dst, amount) VALUES (:src, :dst, :amount);
COMMIT;
"""


def require_postgres() -> None:
    if not (PG_BIN / "initdb").exists():
        pytest.fail("needs PostgreSQL (apt postgresql): run make setup", pytrace=False)
    for tool in ("nbdfuse", "fusermount3", "mkfs.ext4", "runuser"):
        require_tool(tool)


def as_postgres(*argv: str | Path, ok: tuple[int, ...] | None = (0,), timeout_s: float = 120,
                context: str = "") -> subprocess.CompletedProcess[str]:
    return run_tool(["runuser", "-u", "postgres", "--", *map(str, argv)], ok=ok, timeout_s=timeout_s,
                    context=context)


@contextlib.contextmanager
def ext4_export(url: str, fuse_dir: Path, mount_dir: Path, make_fs: bool) -> Iterator[Path]:
    """nbdfuse ``url``, loop-mount the ext4 on it at ``mount_dir``; always undone, by pid."""
    fuse_dir.mkdir(exist_ok=True)
    mount_dir.mkdir(exist_ok=True)
    fuse = subprocess.Popen(["nbdfuse", str(fuse_dir), url], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    device = fuse_dir / "nbd"
    try:
        deadline = time.monotonic() + 15
        while not device.exists():
            if time.monotonic() > deadline or fuse.poll() is not None:
                pytest.fail(f"nbdfuse did not expose {url}")
            time.sleep(0.05)
        if make_fs:
            run_tool(["mkfs.ext4", "-q", "-F", device])
        run_tool(["mount", "-o", "loop", device, mount_dir])
        yield mount_dir
    finally:
        if os.path.ismount(mount_dir):
            subprocess.run(["umount", "-l", str(mount_dir)], check=False, timeout=60)
        subprocess.run(["fusermount3", "-u", "-z", str(fuse_dir)], check=False, timeout=30)
        fuse.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            fuse.wait(timeout=10)
        if fuse.poll() is None:
            fuse.kill()
            fuse.wait()


def work_dir() -> Path:
    """A directory the postgres user can reach (pytest's tmp_path is root's alone)."""
    path = Path(subprocess.run(["mktemp", "-d", "/tmp/foresync-pg-XXXXXX"], check=True,
                               capture_output=True, text=True).stdout.strip())
    path.chmod(0o755)
    return path


def remove_work_dir(path: Path) -> None:
    """Remove it unless something is still mounted in it (a lazy unmount detaches at once)."""
    if not any(os.path.ismount(child) for child in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


class Postgres:
    def __init__(self, data: Path, wal: Path, sockets: Path, port: int) -> None:
        self.pgdata = data / "pgdata"
        self.waldir = wal / "pg_wal"
        self.sockets = sockets
        self.port = port
        self.log = sockets.parent / f"postgres-{port}.log"
        self.pids: list[int] = []
        self.killed: list[int] = []  # SIGKILLed, maybe not yet gone

    def init(self) -> None:
        for where in (self.pgdata.parent, self.waldir.parent, self.sockets):
            shutil.chown(where, "postgres", "postgres")
        as_postgres(PG_BIN / "initdb", "-D", self.pgdata, "--waldir", self.waldir,
                    "--wal-segsize", "1", "-A", "trust", "-U", "postgres")
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = ''\n"
                       f"unix_socket_directories = '{self.sockets}'\n"
                       "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
                       "shared_buffers = 16MB\nmin_wal_size = 4MB\nmax_wal_size = 16MB\n"
                       "checkpoint_timeout = 30s\n")
        os.sync()  # nothing fsyncs postgresql.conf: a failover must not lose it

    def start(self) -> None:
        self.log.touch()
        shutil.chown(self.log, "postgres", "postgres")
        # Port and socket on the command line as well: never the system's 5432.
        started = as_postgres(PG_BIN / "pg_ctl", "start", "-w", "-t", "120", "-D", self.pgdata,
                              "-l", self.log, "-o", f"-p {self.port} -k {self.sockets} -c listen_addresses=''",
                              ok=None)
        if started.returncode != 0:
            pytest.fail(f"PostgreSQL did not start: {started.stdout}{started.stderr}\n{self.log_text()}")
        self.pids = [int((self.pgdata / "postmaster.pid").read_text().split()[0])]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sql(self, query: str) -> str:
        out = as_postgres("psql", "-h", self.sockets, "-p", str(self.port), "-d", "postgres", "-At",
                          "-v", "ON_ERROR_STOP=1", "-c", query, context=self.log_text())
        return out.stdout.strip()

    def bench(self, seconds: int) -> subprocess.Popen[str]:
        script = self.sockets.parent / "transfer.sql"
        script.write_text(TRANSFER.format(n=ACCOUNTS))
        proc = subprocess.Popen(["runuser", "-u", "postgres", "--", str(PG_BIN / "pgbench"), "-n",
                                 "-h", str(self.sockets), "-p", str(self.port), "-c", "4", "-T",
                                 str(seconds), "-f", str(script), "postgres"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return proc

    def kill9(self) -> None:
        """SIGKILL the postmaster and every backend of it, by pid."""
        if not self.pids:
            return
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pids[0])],
                                  capture_output=True, text=True, check=False).stdout.split()
        for pid in [self.pids[0], *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
        self.pids = []

    def wait_gone(self, timeout_s: float = 60) -> None:
        """Until every killed process is gone: one blocked on I/O to a dead export dies only
        once its filesystem is detached, and until then it holds the data directory."""
        deadline = time.monotonic() + timeout_s
        while any(Path(f"/proc/{pid}").exists() for pid in self.killed):
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL processes {self.killed} outlived SIGKILL")
            time.sleep(0.1)
        self.killed = []

    def stop(self) -> None:
        as_postgres(PG_BIN / "pg_ctl", "stop", "-w", "-m", "fast", "-D", self.pgdata, ok=None)
        self.pids = []
