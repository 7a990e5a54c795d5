"""Real etcd processes on loopback for the cluster tests and demos (issue 16): Debian's
``etcd-server`` package, one member or several, each with its own data directory (kept across a
restart), ports bound free below the ephemeral range (``processes.bind_free_port``)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from foresync.testing.processes import free_port, stop_process, wait_listening


class EtcdMember:
    def __init__(self, directory: Path, name: str, client_port: int, peer_port: int,
                 initial_cluster: str, tls_dir: Path | None = None) -> None:
        self.directory = directory
        self.tls_dir = tls_dir  # ca-cert.pem, server-*.pem, client-*.pem: clients need a certificate
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self.log_path = directory / f"etcd-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.client_port}"

    def _tls_args(self) -> list[str]:
        if self.tls_dir is None:
            return []
        return ["--cert-file", str(self.tls_dir / "server-cert.pem"),
                "--key-file", str(self.tls_dir / "server-key.pem"),
                "--client-cert-auth", "--trusted-ca-file", str(self.tls_dir / "ca-cert.pem")]

    def _context(self) -> ssl.SSLContext | None:
        if self.tls_dir is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_dir / "ca-cert.pem"))
        context.load_cert_chain(str(self.tls_dir / "client-cert.pem"),
                                str(self.tls_dir / "client-key.pem"))
        return context

    def post(self, path: str, body: dict[str, object], token: str = "") -> dict[str, object]:
        """A call to etcd's JSON gateway (``/v3/...``), e.g. to add a user."""
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         method="POST")
        if token:
            request.add_header("Authorization", token)
        with urllib.request.urlopen(request, timeout=5, context=self._context()) as answer:
            doc: dict[str, object] = json.loads(answer.read())
            return doc

    def enable_auth(self, password: str) -> None:
        """User ``root`` with ``password``, and authentication on."""
        self.post("/v3/auth/user/add", {"name": "root", "password": password})
        self.post("/v3/auth/role/add", {"name": "root"})
        self.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.post("/v3/auth/enable", {})

    def start(self, wait: bool = True) -> None:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise RuntimeError("needs etcd (Debian's etcd-server): run make setup")
        argv = [etcd, "--name", self.name, "--data-dir", str(self.directory / f"{self.name}.etcd"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", self.initial_cluster,
                *self._tls_args(),
                "--initial-cluster-state", "new", "--initial-cluster-token", "foresync-test",
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--log-level", "warn", "--logger", "zap"]
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Until the member serves clients and its cluster has a leader (``/health``)."""
        assert self.proc is not None
        wait_listening(self.client_port, self.proc, f"etcd {self.name}", timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2,
                                            context=self._context()) as answer:
                    if json.loads(answer.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd {self.name} not healthy within {timeout_s} s\n{self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class EtcdCluster:
    """``size`` members; ``start()`` starts them all and waits until each serves clients."""

    def __init__(self, directory: Path, size: int = 1, tls_dir: Path | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        ports = [(free_port(), free_port()) for _ in range(size)]
        initial = ",".join(f"e{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        self.members = [EtcdMember(directory, f"e{i}", client, peer, initial, tls_dir)
                        for i, (client, peer) in enumerate(ports)]

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self.members]

    def start(self) -> None:
        for member in self.members:
            member.start(wait=False)
        for member in self.members:
            member.wait_healthy()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def leader(self) -> EtcdMember:
        """The member that is the raft leader now (each member's /v3/maintenance/status)."""
        for member in self.members:
            if member.proc is None or member.proc.poll() is not None:
                continue
            request = urllib.request.Request(f"{member.url}/v3/maintenance/status", data=b"{}",
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:
                    doc = json.loads(answer.read())
            except (OSError, ValueError):
                continue
            if doc.get("leader") and doc["leader"] == doc.get("header", {}).get("member_id"):
                return member
        raise RuntimeError("no etcd member says it is the leader")

    def logs(self) -> str:
        return "\n".join(f"--- etcd {m.name}\n{m.log()[-3000:]}" for m in self.members)
