"""Security with real clients and real processes: NBD over TLS (qemu-img, qemu-io, nbdinfo), the
link's shared-secret authentication and mutual TLS, and the admin token."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .certs import ca_only, make_tls_dir
from .conftest import StartServer
from .sites import FORESYNC, Settings, Site, SitePair, open_site_pairs, run_tool

pytestmark = pytest.mark.integration
SECRET = "s3cret-link-key-that-is-long-enough"
OTHER_SECRET = "a-different-link-key-of-enough-bytes"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("certs")
    good = make_tls_dir(base / "good", "foresync test CA")
    return {"good": good, "other_ca": make_tls_dir(base / "other", "some other CA"),
            "ca_only": ca_only(good, base / "ca-only")}


@pytest.fixture
def site_pairs(tmp_path: Path) -> Iterator[Callable[..., SitePair]]:
    with open_site_pairs(tmp_path) as make:
        yield make


def tls_opts(port: int, cert_dir: Path) -> list[str]:
    return ["--object", f"tls-creds-x509,id=tls0,endpoint=client,dir={cert_dir}", "--image-opts",
            f"driver=nbd,host=127.0.0.1,port={port},tls-creds=tls0"]


def nbds(port: int, cert_dir: Path) -> str:
    return f"nbds://127.0.0.1:{port}/?tls-certificates={cert_dir}"


# -- NBD over TLS ----------------------------------------------------------------------------------


def test_serve_with_tls_works_for_qemu_and_libnbd_and_refuses_plain(start_server: StartServer,
                                                                     certs: dict[str, Path]) -> None:
    server = start_server(extra_args=["--tls-dir", str(certs["good"])])
    port = server.volume.port
    info = run_tool(["qemu-img", "info", *tls_opts(port, certs["good"])])
    assert "virtual size: 64 MiB" in info.stdout
    run_tool(["qemu-io", *tls_opts(port, certs["good"]), "-c", "write -P 0x5a 1M 64k",
              "-c", "read -P 0x5a 1M 64k"])
    listing = run_tool(["nbdinfo", "--json", nbds(port, certs["good"])])
    doc = json.loads(listing.stdout)
    assert doc["TLS"] is True and doc["exports"][0]["export-size"] == 64 << 20
    with server.volume.data_path.open("rb") as f:
        f.seek(1 << 20)
        assert f.read(64 << 10) == b"\x5a" * (64 << 10)

    plain = run_tool(["nbdinfo", f"nbd://127.0.0.1:{port}/"], ok=None)
    assert plain.returncode != 0
    qemu_plain = run_tool(["qemu-img", "info", "--image-opts", f"driver=nbd,host=127.0.0.1,port={port}"],
                          ok=None)
    assert qemu_plain.returncode != 0
    assert "this server requires TLS: use STARTTLS first" in qemu_plain.stderr

    wrong_ca = run_tool(["nbdinfo", nbds(port, certs["other_ca"])], ok=None)
    assert wrong_ca.returncode != 0 and "certificate" in wrong_ca.stderr.lower()
    wrong_ca_qemu = run_tool(["qemu-img", "info", *tls_opts(port, certs["other_ca"])], ok=None)
    assert wrong_ca_qemu.returncode != 0

    # Still serving after every refusal, and the refusals were logged as such.
    assert "virtual size: 64 MiB" in run_tool(["qemu-img", "info", *tls_opts(port, certs["good"])]).stdout
    assert "TLS handshake failed" in server.log()


def test_serve_can_demand_client_certificates(start_server: StartServer, certs: dict[str, Path]) -> None:
    server = start_server(extra_args=["--tls-dir", str(certs["good"]), "--tls-verify-client"])
    port = server.volume.port
    assert json.loads(run_tool(["nbdinfo", "--json", nbds(port, certs["good"])]).stdout)["TLS"] is True
    anonymous = run_tool(["nbdinfo", nbds(port, certs["ca_only"])], ok=None)
    assert anonymous.returncode != 0
    assert "virtual size" in run_tool(["qemu-img", "info", *tls_opts(port, certs["good"])]).stdout


def test_serve_refuses_a_tls_dir_without_its_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_tool([FORESYNC, "serve", "--data", tmp_path / "v.img", "--size", "1MiB",
                       "--listen", "127.0.0.1:0", "--tls-dir", empty], ok=None)
    assert result.returncode != 0
    assert f"TLS directory {empty}: server-cert.pem is missing" in result.stderr


# -- the link ---------------------------------------------------------------------------------------


def secured(settings: Settings, directory: Path, *, secret: str | None = None, link_tls: Path | None = None,
            nbd_tls: Path | None = None, verify_client: bool = False, name: str = "secret") -> Settings:
    link = ""
    if secret is not None:
        path = directory / name
        path.write_text(secret + "\n")
        path.chmod(0o600)
        link += f'secret_file = "{path}"\n'
    if link_tls is not None:
        link += f'tls_dir = "{link_tls}"\n'
    nbd = f'tls_dir = "{nbd_tls}"\n' if nbd_tls is not None else ""
    if verify_client:
        nbd += "tls_verify_client = true\n"
    return dataclasses.replace(settings, link_extra=link, nbd_extra=nbd)


def image_digest(site: Site) -> str:
    return hashlib.sha256(site.data_path.read_bytes()).hexdigest()


def wait_for_link_error_on_both(pair: SitePair, text: str) -> None:
    pair.wait_for(f"{text!r} in both sites' link_error", lambda: all(
        text in pair.status(site)["link_error"] for site in pair.sites))


def assert_no_secret_leaked(pair: SitePair, *secrets: str) -> None:
    text = pair.logs() + json.dumps([pair.status(site) for site in pair.sites if site.running])
    for secret in secrets:
        assert secret not in text


def test_fully_secured_pair_replicates(site_pairs: Callable[..., SitePair], tmp_path: Path,
                                       certs: dict[str, Path]) -> None:
    """NBD over TLS with client certificates, link over mutual TLS, and the shared secret: data
    flows as usual, and a host without a client certificate is turned away."""
    base = Settings(size="64MiB", capacity=32)
    settings = secured(base, tmp_path, secret=SECRET, link_tls=certs["good"], nbd_tls=certs["good"],
                       verify_client=True)
    pair = site_pairs(settings)
    pair.init_both()
    pair.start_both()
    pair.wait_link(pair.primary, "connected")
    run_tool(["qemu-io", *tls_opts(pair.primary.nbd_port, certs["good"]),
              "-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 20M 1M"], context=pair.logs())
    anonymous = run_tool(["nbdinfo", nbds(pair.primary.nbd_port, certs["ca_only"])], ok=None)
    assert anonymous.returncode != 0
    primary, secondary = pair.wait_in_sync()
    assert primary["link_error"] == "" and secondary["link_error"] == ""
    assert primary["counters"]["writes"] == 2
    expected = {"nbd_tls": True, "nbd_tls_verify_client": True, "link_tls": True, "link_secret": True,
                "admin_token": False}
    assert primary["security"] == secondary["security"] == expected
    assert_no_secret_leaked(pair, SECRET)
    pair.stop_both()
    pair.assert_identical()


def test_wrong_secret_is_refused_before_any_data(site_pairs: Callable[..., SitePair], tmp_path: Path) -> None:
    base = Settings(size="64MiB", capacity=32)
    pair = site_pairs(base, primary=secured(base, tmp_path, secret=SECRET, name="p-secret"),
                      secondary=secured(base, tmp_path, secret=OTHER_SECRET, name="s-secret"))
    pair.init_both()
    pair.start_both()
    before = image_digest(pair.secondary)
    wait_for_link_error_on_both(pair, "authentication failed")
    # The host keeps writing to the primary; nothing reaches the secondary.
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x33 0 2M", pair.nbd_url], context=pair.logs())
    primary = pair.status(pair.primary)
    assert primary["link"] != "connected" and primary["counters"]["writes"] >= 1
    assert pair.status(pair.secondary)["link"] != "connected"
    assert image_digest(pair.secondary) == before
    assert pair.secondary.site_json()["volume_id"] is None  # it never even adopted the identity
    assert_no_secret_leaked(pair, SECRET, OTHER_SECRET)


def test_secret_on_one_side_only_names_the_missing_setting(site_pairs: Callable[..., SitePair],
                                                            tmp_path: Path) -> None:
    base = Settings(size="64MiB", capacity=32)
    pair = site_pairs(base, secondary=secured(base, tmp_path, secret=SECRET))
    pair.init_both()
    pair.start_both()
    wait_for_link_error_on_both(pair, "secret_file")
    assert pair.status(pair.primary)["link"] != "connected"


def test_link_tls_with_a_certificate_from_another_ca_is_refused(site_pairs: Callable[..., SitePair],
                                                                tmp_path: Path,
                                                                certs: dict[str, Path]) -> None:
    base = Settings(size="64MiB", capacity=32)
    pair = site_pairs(base, primary=secured(base, tmp_path, link_tls=certs["other_ca"]),
                      secondary=secured(base, tmp_path, link_tls=certs["good"]))
    pair.init_both()
    pair.start_both()
    before = image_digest(pair.secondary)
    wait_for_link_error_on_both(pair, "TLS handshake")
    assert "certificate" in pair.status(pair.primary)["link_error"]
    assert pair.status(pair.secondary)["link"] != "connected"
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x44 0 1M", pair.nbd_url], context=pair.logs())
    assert image_digest(pair.secondary) == before


# -- the admin token --------------------------------------------------------------------------------


def post(port: int, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_admin_off_loopback_needs_a_token_file(site_pairs: Callable[..., SitePair], tmp_path: Path) -> None:
    base = Settings(size="64MiB", capacity=32)
    pair = site_pairs(base, primary=dataclasses.replace(base, admin_host="0.0.0.0"))
    result = pair.cli("init", "--config", pair.primary.config_path, "--role", "primary", ok=None)
    assert result.returncode != 0
    assert "is not loopback: set [admin] token_file" in result.stderr


def test_mutating_endpoints_need_the_token(site_pairs: Callable[..., SitePair], tmp_path: Path) -> None:
    token_path = tmp_path / "admin-token"
    token_path.write_text("admin-token-0123456789abcdef\n")
    token_path.chmod(0o600)
    base = Settings(size="64MiB", capacity=32)
    guarded = dataclasses.replace(base, admin_host="0.0.0.0", admin_extra=f'token_file = "{token_path}"\n')
    pair = site_pairs(base, primary=guarded)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    port = pair.primary.admin_port
    for path in ("/verify", "/demote", "/promote", "/resolve"):
        assert post(port, path) == 401
        assert post(port, path, token="wrong-token-0123456789") == 401
    assert pair.status(pair.primary)["role"] == "primary"  # nothing happened
    # The CLI reads the token from the config and gets through.
    out = pair.cli("verify", "--config", pair.primary.config_path)
    assert "both sites hold identical data" in out.stdout
    assert post(port, "/verify", token="admin-token-0123456789abcdef") == 202  # accepted, runs on
    assert "admin-token-0123456789abcdef" not in pair.logs()


def test_an_unknown_volume_identity_is_refused_with_the_reason(site_pairs: Callable[..., SitePair],
                                                              tmp_path: Path) -> None:
    """A secondary paired with one volume refuses a primary of another (re-initialised with
    --force), with both identities in /status, and takes none of its data."""
    base = secured(Settings(size="64MiB", capacity=32), tmp_path, secret=SECRET)
    pair = site_pairs(base)
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    pair.stop(pair.primary)
    pair.init(pair.primary, force=True)  # a new volume identity on the same address
    new_identity = pair.primary.site_json()["volume_id"]
    before = image_digest(pair.secondary)
    pair.start(pair.primary)
    pair.wait_for("the identity refusal in the secondary's /status",
                  lambda: "is not ours" in pair.status(pair.secondary)["link_error"])
    assert new_identity in pair.status(pair.secondary)["link_error"]
    pair.wait_for("the refusal in the primary's /status",
                  lambda: "is not ours" in pair.status(pair.primary)["link_error"])
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 1M", pair.nbd_url], context=pair.logs())
    assert pair.status(pair.primary)["link"] != "connected"
    assert image_digest(pair.secondary) == before


def test_a_plaintext_primary_is_refused_by_a_tls_secondary(site_pairs: Callable[..., SitePair],
                                                           tmp_path: Path, certs: dict[str, Path]) -> None:
    """The listener speaks TLS from the first byte: a plaintext HELLO is a failed TLS handshake,
    never a frame the secondary decodes."""
    base = Settings(size="64MiB", capacity=32)
    pair = site_pairs(base, secondary=secured(base, tmp_path, link_tls=certs["good"]))
    pair.init_both()
    pair.start_both()
    before = image_digest(pair.secondary)
    pair.wait_for("the TLS failure in the secondary's /status",
                  lambda: "TLS handshake" in pair.status(pair.secondary)["link_error"])
    assert pair.status(pair.secondary)["link"] != "connected"
    assert pair.secondary.site_json()["volume_id"] is None
    assert "bad link frame magic" not in pair.secondary.log()
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x66 0 1M", pair.nbd_url], context=pair.logs())
    assert image_digest(pair.secondary) == before


def test_an_idle_client_after_starttls_is_still_timed_out(start_server: StartServer,
                                                          certs: dict[str, Path]) -> None:
    """The handshake deadline covers TLS and what follows it: a client that completes STARTTLS
    and then says nothing does not hold a connection slot for ever."""
    import socket
    import ssl
    import struct
    import time

    server = start_server(extra_args=["--tls-dir", str(certs["good"]), "--handshake-timeout", "1"])
    with socket.create_connection(("127.0.0.1", server.volume.port), timeout=10) as raw:
        assert len(raw.recv(18)) == 18  # greeting
        raw.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 5, 0))  # STARTTLS
        reply = raw.recv(20)
        assert struct.unpack(">QIII", reply)[2] == 1  # ACK
        context = ssl.create_default_context(cafile=str(certs["good"] / "ca-cert.pem"))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            started = time.monotonic()
            assert tls.recv(100) == b""  # closed by the server, not by our timeout of 10 s
            assert time.monotonic() - started < 5
    assert "handshake_timeout" in server.log()


def test_strangers_holding_setup_slots_cannot_lock_the_primary_out(
        site_pairs: Callable[..., SitePair], tmp_path: Path) -> None:
    """20 idle connections on the secondary's link port (more than the 16 setup slots) before the
    primary starts: the oldest give way, and the primary still connects."""
    import socket

    base = secured(Settings(size="64MiB", capacity=32), tmp_path, secret=SECRET)
    pair = site_pairs(base)
    pair.init_both()
    pair.start(pair.secondary)
    strangers = [socket.create_connection(("127.0.0.1", pair.secondary.link_port), timeout=5)
                 for _ in range(20)]
    try:
        pair.start(pair.primary)
        pair.wait_link(pair.primary, "connected", timeout_s=6)  # the strangers' own timeout is 10 s
        pair.wait_in_sync()
    finally:
        for sock in strangers:
            sock.close()
    assert "dropping the oldest" in pair.secondary.log()
