"""Two real ``foresync run`` processes on loopback: a primary and a secondary, and the tools to
drive and watch them.

``SitePair`` writes one TOML config per site into ``tmp_path``, runs ``foresync init`` for each,
and starts and stops ``foresync run`` processes. Every port is bound free (below the kernel's
ephemeral range, ``testing.processes.bind_free_port``) for all listeners at once, so the two sites never collide with each
other; a restarted site reuses its ports, which the daemon binds with SO_REUSEADDR.

Each site's stdout and stderr go to a file (a chatty daemon cannot block on a full pipe), and a
restart appends to the same file under a marker line. ``close()`` prints both logs: pytest shows
teardown output only for a failed test, so the logs appear exactly when they are needed. Every
failure raised here quotes them too.

Stopping is part of the contract under test: ``stop()`` sends SIGTERM and fails the test unless
the process exits 0 within ``STOP_TIMEOUT_S``. ``kill9()`` is the crash: SIGKILL, no clean-up.

A site's ``role`` is the role it was initialised with (it names the site and its files); what it
is now comes from /status (``role_of()``), since promote, demote and failback change it.

With ``via_proxy=True`` each site dials its peer through its own ``LinkProxy`` (a
``python -m foresync.testing.proxy`` process), so ``cut_link()`` partitions the pair in both
directions while both sites keep running, and ``restore_link()`` heals it.

A missing client tool fails the test (never skips it): a green run must mean every client ran.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from foresync.testing.processes import bind_free_port

FORESYNC = Path(sys.executable).with_name("foresync")
MiB = 1024 * 1024
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 25.0  # the primary may spend up to 15 s draining replication before it exits
TOOL_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 5.0
ROLES = ("primary", "secondary")

Status = dict[str, Any]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"needs {name}: run make setup", pytrace=False)
    return path


def run_tool(argv: Sequence[str | Path], *, ok: Sequence[int] | None = (0,),
             timeout_s: float = TOOL_TIMEOUT_S, context: str = "") -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test if it is missing, hangs, or exits outside ``ok`` (``None``
    accepts any status). ``context`` (the site logs) is quoted in the failure."""
    args = [str(arg) for arg in argv]
    require_tool(args[0])
    try:
        result = subprocess.run(args, capture_output=True, text=True, errors="replace",
                                timeout=timeout_s, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"$ {shlex.join(args)}\ndid not finish within {timeout_s} s\n{exc.stderr!r}\n{context}")
    if ok is not None and result.returncode not in ok:
        pytest.fail(f"{describe(result)}\n{context}")
    return result


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (f"$ {shlex.join(str(arg) for arg in result.args)}\nexit status {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")


def terminate(proc: subprocess.Popen[Any] | None, name: str) -> list[str]:
    """SIGTERM a process still running; the problems found (it must exit 0, within the limit)."""
    if proc is None or proc.poll() is not None:
        return []
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return [f"{name} ignored SIGTERM for {STOP_TIMEOUT_S} s"]
    return [] if status == 0 else [f"{name} exited with status {status} after SIGTERM"]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel considers free right now (all held open together, so
    none repeats)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            ports.append(bind_free_port(sock))  # below the ephemeral range: see its notes
        return ports


def fetch_status(port: int) -> Status:
    """GET /status from the admin HTTP on ``port``; raises OSError if nothing answers."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=HTTP_TIMEOUT_S) as response:
        doc: Status = json.loads(response.read())
        return doc


@dataclass(frozen=True, slots=True)
class Settings:
    """The TOML values of one site. The two sites of a pair share them unless a test overrides
    one side (a mismatch test)."""

    mode: str = "lookahead"
    eviction: str = "generations"
    size: str = "256MiB"
    extent_size: str = "1MiB"
    capacity: int = 64
    lookahead: int = 4
    on_disconnect: str = "continue"
    block_timeout_s: float = 30.0
    resync_rate_max: str | None = None  # "[link] resync_rate_max"; None leaves it unset (unlimited)
    # Extra TOML lines appended to a section (security tests: tls_dir, secret_file, token_file)
    nbd_extra: str = ""
    link_extra: str = ""
    record_extra: str = ""
    admin_extra: str = ""
    admin_host: str = "127.0.0.1"


@dataclass
class Site:
    role: str
    settings: Settings
    config_path: Path
    data_path: Path
    meta_path: Path
    log_path: Path
    nbd_port: int
    link_port: int
    peer_port: int
    admin_port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log yet)"

    def site_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.meta_path / "site.json").read_text())
        return doc

    def toml(self) -> str:
        s = self.settings
        rate = f'resync_rate_max = "{s.resync_rate_max}"\n' if s.resync_rate_max is not None else ""
        return (
            "[volume]\n"
            'name = "vol0"\n'
            f'data = "{self.data_path.name}"\n'
            f'size = "{s.size}"\n'
            f'meta = "{self.meta_path.name}"\n'
            "[nbd]\n"
            f'listen = "127.0.0.1:{self.nbd_port}"\n'
            f"{s.nbd_extra}"
            "[link]\n"
            f'listen = "127.0.0.1:{self.link_port}"\n'
            f'peer = "127.0.0.1:{self.peer_port}"\n'
            f'mode = "{s.mode}"\n'
            f'on_disconnect = "{s.on_disconnect}"\n'
            f"block_timeout = {s.block_timeout_s}\n"
            f"{rate}"
            f"{s.link_extra}"
            "[record]\n"
            f'extent_size = "{s.extent_size}"\n'
            f"capacity = {s.capacity}\n"
            f"lookahead = {s.lookahead}\n"
            f'eviction = "{s.eviction}"\n'
            f"{s.record_extra}"
            "[admin]\n"
            f'listen = "{s.admin_host}:{self.admin_port}"\n'
            f"{s.admin_extra}"
        )


class LinkProxy:
    """One ``python -m foresync.testing.proxy`` process between a site and its peer's link
    listener. SIGUSR1 cuts (aborts every connection, refuses new ones), SIGUSR2 restores; each
    is confirmed by the line the proxy logs, so a test never races its own signal."""

    def __init__(self, name: str, listen_port: int, target_port: int, log_path: Path,
                 extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.extra_args = tuple(extra_args)  # --delay-ms, --rate
        self.listen_port = listen_port
        self.target_port = target_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log yet)"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "foresync.testing.proxy", "--listen", f"127.0.0.1:{self.listen_port}",
                 "--target", f"127.0.0.1:{self.target_port}", *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._wait_logged("delay proxy listening", 1)

    def _wait_logged(self, line: str, count: int) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while self.log().count(line) < count:
            if self.proc.poll() is not None:
                pytest.fail(f"proxy {self.name} exited with status {self.proc.returncode}\n{self.log()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"proxy {self.name} did not log {line!r} within {STARTUP_TIMEOUT_S} s\n{self.log()}")
            time.sleep(0.01)

    def _signal(self, sig: signal.Signals, line: str) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"proxy {self.name} is not running"
        seen = self.log().count(line)
        self.proc.send_signal(sig)
        self._wait_logged(line, seen + 1)

    def cut(self) -> None:
        self._signal(signal.SIGUSR1, "cut: connections aborted")

    def restore(self) -> None:
        self._signal(signal.SIGUSR2, "proxy: restored")

    def close(self) -> list[str]:
        return terminate(self.proc, f"proxy {self.name}")


class SitePair:
    """A primary and a secondary site in ``directory``, configs written, not yet initialised.
    With ``via_proxy`` each site reaches its peer's link listener through a ``LinkProxy``
    (started here), so the link can be cut while both sites run."""

    def __init__(self, directory: Path, settings: Settings = Settings(), *,
                 primary: Settings | None = None, secondary: Settings | None = None,
                 via_proxy: bool = False, proxy_args: Sequence[str] = ()) -> None:
        nbd_p, nbd_s, link_p, link_s, admin_p, admin_s, proxy_p, proxy_s = free_ports(8)
        self.proxies: list[LinkProxy] = []
        if via_proxy:
            self.proxies = [LinkProxy("primary->secondary", proxy_p, link_s, directory / "proxy-p.log",
                                      proxy_args),
                            LinkProxy("secondary->primary", proxy_s, link_p, directory / "proxy-s.log",
                                      proxy_args)]
            peer_of_primary, peer_of_secondary = proxy_p, proxy_s
        else:
            peer_of_primary, peer_of_secondary = link_s, link_p
        self.primary = self._site(directory, "primary", primary or settings, nbd_p, link_p, peer_of_primary,
                                  admin_p)
        self.secondary = self._site(directory, "secondary", secondary or settings, nbd_s, link_s,
                                    peer_of_secondary, admin_s)
        for proxy in self.proxies:
            proxy.start()

    @staticmethod
    def _site(directory: Path, role: str, settings: Settings, nbd: int, link: int, peer: int,
              admin: int) -> Site:
        site = Site(role, settings, directory / f"{role}.toml", directory / f"{role}.img",
                    directory / f"{role}.meta", directory / f"{role}.log", nbd, link, peer, admin)
        site.config_path.write_text(site.toml())
        return site

    @property
    def sites(self) -> tuple[Site, Site]:
        return self.primary, self.secondary

    @property
    def nbd_url(self) -> str:
        return self.nbd_url_of(self.primary)

    @staticmethod
    def nbd_url_of(site: Site) -> str:
        """The NBD export a site serves while it is the primary (its [nbd] listen)."""
        return f"nbd://127.0.0.1:{site.nbd_port}/"

    def other(self, site: Site) -> Site:
        return self.secondary if site is self.primary else self.primary

    def logs(self) -> str:
        sites = "\n".join(f"===== {site.role} log ({site.log_path})\n{site.log()}" for site in self.sites)
        proxies = "".join(f"\n===== proxy {proxy.name} log\n{proxy.log()}" for proxy in self.proxies)
        return sites + proxies

    # -- the CLI ----------------------------------------------------------------------------------

    def cli(self, *args: str | Path, ok: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
        if not FORESYNC.exists():
            pytest.fail(f"needs {FORESYNC} (the foresync entry point): run make setup", pytrace=False)
        return run_tool([FORESYNC, *args], ok=ok, context=self.logs())

    def init(self, site: Site, *, role: str | None = None, force: bool = False,
             ok: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
        extra = ["--force"] if force else []
        return self.cli("init", "--config", site.config_path, "--role", role or site.role, *extra, ok=ok)

    def promote(self, site: Site, *, force: bool = False,
                ok: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
        """``foresync promote`` (through the running daemon's admin HTTP, or offline)."""
        return self.cli("promote", "--config", site.config_path, *(["--force"] if force else []), ok=ok)

    def demote(self, site: Site, ok: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
        return self.cli("demote", "--config", site.config_path, ok=ok)

    def resolve_discard_local(self, site: Site,
                              ok: Sequence[int] | None = (0,)) -> subprocess.CompletedProcess[str]:
        return self.cli("resolve", "--discard-local", "--config", site.config_path, ok=ok)

    def init_both(self) -> None:
        """``foresync init`` for both sites at once (each one is mostly interpreter start-up)."""
        procs = [subprocess.Popen([str(FORESYNC), "init", "--config", str(site.config_path), "--role",
                                   site.role], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for site in self.sites]
        for site, proc in zip(self.sites, procs, strict=True):
            output, _ = proc.communicate(timeout=TOOL_TIMEOUT_S)
            if proc.returncode != 0:
                pytest.fail(f"foresync init of the {site.role} exited {proc.returncode}:\n{output}")

    # -- processes --------------------------------------------------------------------------------

    def start(self, site: Site, *run_args: str) -> None:
        """Start ``foresync run`` for ``site`` (with ``run_args``, e.g. a flag) and wait until it
        answers /status (and, for the primary, accepts NBD connections)."""
        self._launch(site, *run_args)
        self._wait_up(site)

    def _launch(self, site: Site, *run_args: str) -> None:
        assert not site.running, f"{site.role} is already running"
        site.starts += 1
        with site.log_path.open("ab") as log:
            log.write(f"===== foresync run, start #{site.starts}\n".encode())
            log.flush()
            site.proc = subprocess.Popen([str(FORESYNC), "run", "--config", str(site.config_path), *run_args],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def _wait_up(self, site: Site) -> None:
        assert site.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if site.proc.poll() is not None:
                pytest.fail(f"{site.role} exited with status {site.proc.returncode} while starting\n"
                            f"{self.logs()}")
            if self._answers(site):
                return
            time.sleep(0.02)
        pytest.fail(f"{site.role} did not come up within {STARTUP_TIMEOUT_S} s\n{self.logs()}")

    def _answers(self, site: Site) -> bool:
        try:
            # What the site is now, not what it was initialised as: only a primary serves NBD.
            if fetch_status(site.admin_port)["role"] == "primary":
                socket.create_connection(("127.0.0.1", site.nbd_port), timeout=1).close()
        except OSError:
            return False
        return True

    def start_both(self) -> None:
        for site in self.sites:
            self._launch(site)
        for site in self.sites:
            self._wait_up(site)

    def stop(self, site: Site, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send ``sig`` and require exit status 0: a clean stop is part of the contract."""
        proc = site.proc
        assert proc is not None and proc.poll() is None, f"{site.role} is not running\n{self.logs()}"
        proc.send_signal(sig)
        try:
            status = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{site.role} ignored {sig.name} for {STOP_TIMEOUT_S} s\n{self.logs()}")
        if status != 0:
            pytest.fail(f"{site.role} exited with status {status} after {sig.name}\n{self.logs()}")

    def stop_both(self) -> None:
        self.stop(self.primary)
        self.stop(self.secondary)

    def kill9(self, site: Site) -> None:
        """The crash: SIGKILL, nothing flushed or stored on the way out."""
        proc = site.proc
        assert proc is not None and proc.poll() is None, f"{site.role} is not running\n{self.logs()}"
        proc.kill()
        assert proc.wait(timeout=STOP_TIMEOUT_S) == -signal.SIGKILL

    def restart(self, site: Site) -> None:
        """Start ``site`` again with the same ``foresync run --config`` (after a stop or a kill)."""
        assert not site.running, f"{site.role} is still running"
        self.start(site)

    # -- the link proxies -------------------------------------------------------------------------

    def cut_link(self) -> None:
        """Partition the pair: both proxies abort their connections and refuse new ones."""
        assert self.proxies, "cut_link() needs SitePair(..., via_proxy=True)"
        for proxy in self.proxies:
            proxy.cut()

    def restore_link(self) -> None:
        assert self.proxies, "restore_link() needs SitePair(..., via_proxy=True)"
        for proxy in self.proxies:
            proxy.restore()

    def close(self) -> list[str]:
        """Stop whatever still runs; return the problems found. Prints both logs (shown by pytest
        only when the test failed)."""
        problems = []
        for site in self.sites:
            problems += terminate(site.proc, site.role)
        for proxy in self.proxies:
            problems += proxy.close()
        print(self.logs())
        return problems

    # -- watching ---------------------------------------------------------------------------------

    def status(self, site: Site) -> Status:
        try:
            return fetch_status(site.admin_port)
        except (OSError, urllib.error.URLError) as exc:
            pytest.fail(f"{site.role} /status on port {site.admin_port} failed: {exc}\n{self.logs()}")

    def wait_for(self, what: str, check: Callable[[], bool], timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                running = {site.role: self.status(site) for site in self.sites if site.running}
                pytest.fail(f"not {what} after {timeout_s} s; last status:\n"
                            f"{json.dumps(running, indent=1)}\n{self.logs()}")
            time.sleep(0.05)

    def wait_link(self, site: Site, state: str, timeout_s: float = 15.0) -> Status:
        self.wait_for(f"{site.role} link {state}", lambda: self.status(site)["link"] == state, timeout_s)
        return self.status(site)

    def role_of(self, site: Site) -> str:
        role: str = self.status(site)["role"]
        return role

    def wait_role(self, site: Site, role: str, timeout_s: float = 15.0) -> Status:
        self.wait_for(f"{site.role} site acting as {role}", lambda: self.role_of(site) == role, timeout_s)
        return self.status(site)

    def wait_in_sync(self, timeout_s: float = 30.0) -> tuple[Status, Status]:
        """Wait until both sites report ``in_sync`` over a connected link, exactly one of them
        as the primary (whichever it is now), with nothing in flight; return both statuses in
        ``(self.primary, self.secondary)`` order."""

        def synced() -> bool:
            p, s = self.status(self.primary), self.status(self.secondary)
            return bool(p["in_sync"] and s["in_sync"] and p["link"] == s["link"] == "connected"
                        and sorted((p["role"], s["role"])) == ["primary", "secondary"]
                        and all(doc["lag"]["bytes"] == doc["lag"]["writes"] == 0 for doc in (p, s)))

        self.wait_for("in sync", synced, timeout_s)
        return self.status(self.primary), self.status(self.secondary)

    # -- comparing the images ---------------------------------------------------------------------

    def assert_identical(self) -> None:
        """Both sites stopped, their data files byte for byte the same (``cmp``)."""
        for site in self.sites:
            assert not site.running, f"stop {site.role} before comparing the images"
        result = run_tool(["cmp", self.primary.data_path, self.secondary.data_path], ok=None)
        if result.returncode != 0:
            pytest.fail(f"the images differ:\n{result.stdout}{result.stderr}\n{self.logs()}")


def read_bytes(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as image:
        image.seek(offset)
        return image.read(length)


def assert_pattern(path: Path, offset: int, length: int, byte: int) -> None:
    """The file holds ``length`` bytes of ``byte`` at ``offset`` (a qemu-io ``-P`` write)."""
    data = read_bytes(path, offset, length)
    if data != bytes([byte]) * length:
        first = next(i for i, b in enumerate(data) if b != byte) if len(data) == length else len(data)
        pytest.fail(f"{path.name}: expected 0x{byte:02x} at {offset}+{length}, first difference at "
                    f"{offset + first}")


@contextmanager
def open_site_pairs(directory: Path) -> Iterator[Callable[..., SitePair]]:
    """A factory of ``SitePair``s in ``directory``; on exit every process still running gets
    SIGTERM and must exit 0, and the logs are printed."""
    pairs: list[SitePair] = []

    def make(settings: Settings = Settings(), *, via_proxy: bool = False,
             proxy_args: Sequence[str] = (), **overrides: Settings | None) -> SitePair:
        sub = directory / f"pair{len(pairs)}"
        sub.mkdir()
        pairs.append(SitePair(sub, settings, via_proxy=via_proxy, proxy_args=proxy_args, **overrides))
        return pairs[-1]

    try:
        yield make
    finally:
        problems = [problem for pair in pairs for problem in pair.close()]
        assert not problems, "\n".join(problems)


class StatusPoller:
    """Polls /status of both sites every ``interval_s`` in a background thread while active,
    keeping every sample, so a test can assert an invariant held throughout a run rather than
    only at the end. Use as a context manager."""

    def __init__(self, pair: SitePair, interval_s: float = 0.1) -> None:
        self.pair = pair
        self.interval_s = interval_s
        self.samples: list[tuple[str, Status]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-poller", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for site in self.pair.sites:
                try:
                    self.samples.append((site.role, fetch_status(site.admin_port)))
                except (OSError, ValueError) as exc:
                    self.errors.append(f"{site.role}: {exc}")
            self._stop.wait(self.interval_s)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HTTP_TIMEOUT_S * 2)

    def of(self, role: str) -> list[Status]:
        return [status for r, status in self.samples if r == role]


MakePair = Callable[..., SitePair]
SMALL = Settings(size="64MiB", capacity=16, lookahead=2)


def started_pair(make_pair: MakePair, settings: Settings = SMALL, *, via_proxy: bool = False) -> SitePair:
    """A pair initialised, started and in sync."""
    pair = make_pair(settings, via_proxy=via_proxy)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    return pair
