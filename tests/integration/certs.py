"""Test certificates made with the openssl CLI, in the directory layout qemu and libnbd use:
ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem. The server
certificate names 127.0.0.1 and localhost, so hostname checks pass on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .sites import require_tool


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls_dir(directory: Path, ca_name: str) -> Path:
    """A CA named ``ca_name`` and a server and a client certificate it signed."""
    directory.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out",
             "ca-cert.pem", "-days", "3", "-subj", f"/CN={ca_name}", cwd=directory)
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who, subject, ext in (("server", "/CN=localhost", ["-extfile", "server.ext"]),
                              ("client", "/CN=foresync-client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}-key.pem", "-out",
                 f"{who}.csr", "-subj", subject, cwd=directory)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-out", f"{who}-cert.pem", "-days", "3", *ext, cwd=directory)
    return directory


def ca_only(source: Path, directory: Path) -> Path:
    """A client directory that trusts ``source``'s CA but has no client certificate."""
    directory.mkdir(parents=True)
    (directory / "ca-cert.pem").write_bytes((source / "ca-cert.pem").read_bytes())
    return directory
