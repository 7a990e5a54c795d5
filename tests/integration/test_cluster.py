"""Automatic failover with fencing on etcd (issue 16, part 3): real etcd processes and real
sites on loopback.

Each test starts its own one-member etcd (``testing.etcd``). The primary may reach it through a
``LinkProxy`` (``via_etcd_proxy``), so a test can cut the primary off from etcd alone while it
keeps its hosts and its link. Timings are measured on the test's monotonic clock, which is the
one every process on the machine reads.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from foresync.testing.etcd import EtcdCluster
from foresync.testing.processes import free_port

from .certs import make_tls_dir
from .conftest import require_python_libnbd
from .sites import (
    SMALL,
    LinkProxy,
    MakePair,
    MiB,
    SitePair,
    Status,
    assert_pattern,
    fetch_status,
    run_tool,
)
from .test_failures import FIO_VERIFY, start_fio, wait_fio

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TTL_S = int(os.environ.get("FORESYNC_TEST_LEASE_TTL", "3"))  # 5 for the figures in the docs


def cluster_toml(url: str | list[str], site: str) -> str:
    urls = ", ".join(f'"{u}"' for u in ([url] if isinstance(url, str) else url))
    return f'\n[cluster]\netcd = [{urls}]\nlease_ttl = "{TTL_S}s"\nsite = "{site}"\n'


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def cluster_pair(make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path, *,
                 via_etcd_proxy: bool = False, via_proxy: bool = False,
                 mode: str = "sync", **settings: Any) -> tuple[SitePair, LinkProxy | None]:
    """Two sites in ``mode`` under the etcd cluster, in sync, the primary holding its lease;
    ``settings`` are more fields of both sites' ``SMALL`` (e.g. ``resync_rate_max``)."""
    proxy = None
    url_p = etcd.urls[0]
    if via_etcd_proxy:
        port = free_port()
        proxy = LinkProxy("primary->etcd", port, etcd.members[0].client_port, tmp_path / "proxy-etcd.log")
        proxy.start()
        url_p = f"http://127.0.0.1:{port}"
    base = replace(SMALL, mode=mode, **settings)
    pair = make_pair(base, via_proxy=via_proxy,
                     primary=replace(base, admin_extra=cluster_toml(url_p, "a")),
                     secondary=replace(base, admin_extra=cluster_toml(etcd.urls[0], "b")))
    pair.init_both()
    pair.start_both()
    pair.wait_in_sync()
    pair.wait_for("the primary holds the lease",
                  lambda: bool(pair.status(pair.primary)["cluster"]["holding_lease"]))
    return pair, proxy


def fail_back_and_compare(pair: SitePair) -> None:
    """The old primary (``pair.primary``) is back: it must step down, receive the failback by
    itself, and end identical to the new primary once both stop."""
    pair.wait_role(pair.primary, "secondary", timeout_s=30)
    pair.wait_for("in sync after the failback", lambda: bool(pair.status(pair.secondary)["in_sync"]),
                  timeout_s=60)
    pair.stop_both()
    pair.assert_identical()


def wait_promoted(pair: SitePair, timeout_s: float) -> float:
    """Poll the secondary every 20 ms until it says primary; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if fetch_status(pair.secondary.admin_port)["role"] == "primary":
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)
    pytest.fail(f"the secondary did not promote itself within {timeout_s} s\n{pair.logs()}")


WRITER = r"""
import json, sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
acks, errors, i = [], 0, 0
stop = time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop:
    try:
        h.pwrite(i.to_bytes(8, "little") * 512, (i % 1024) * 4096)
        h.flush()
        acks.append(time.monotonic())
    except nbd.Error:
        errors += 1
        time.sleep(0.01)
    i += 1
print(json.dumps({"acks": acks, "errors": errors}))
"""


def start_writer(pair: SitePair, seconds: float) -> subprocess.Popen[str]:
    """A host writing and flushing 4 KiB at a time through the primary, timing every ack."""
    script = pair.primary.log_path.parent / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([require_python_libnbd(), str(script), pair.nbd_url, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cluster(pair: SitePair, which: str) -> Status:
    status: Status = pair.status(getattr(pair, which))["cluster"]
    return status


def test_primary_kill9_fails_over_within_the_lease_and_fails_back(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    pair, _ = cluster_pair(make_pair, etcd, tmp_path)
    fio = start_fio(pair, pair.primary, "verify", *FIO_VERIFY, "--iodepth=4", "--rate=,4m",
                    "--time_based", "--runtime=60")
    time.sleep(2)
    assert fio.poll() is None, "fio finished before the crash"
    killed = time.monotonic()
    pair.kill9(pair.primary)
    promoted = wait_promoted(pair, TTL_S + 10)
    wait_fio(fio, pair)  # its server died under it
    failover_s = promoted - killed
    print(f"failover after kill -9: {failover_s:.2f} s (lease_ttl {TTL_S} s)")
    assert failover_s <= TTL_S + 2, f"failover took {failover_s:.2f} s\n{pair.logs()}"
    new = cluster(pair, "secondary")
    assert new["holding_lease"] and new["epoch"] == 2 and new["automatic_promotions"] == 1
    # The epoch it wrote is the one it registered in etcd: it keeps its lease after reading it.
    pair.wait_for("the new primary reads etcd's record", lambda: bool(
        cluster(pair, "secondary")["latest_epoch_site"] == "b"))
    time.sleep(1)
    new = cluster(pair, "secondary")
    assert new["holding_lease"] and not new["fenced"] and new["reason"] == "", new
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x42 40M 64k",
              pair.nbd_url_of(pair.secondary)], context=pair.logs())
    # The old primary returns as a secondary and receives the failback by itself.
    pair.start(pair.primary)
    pair.wait_role(pair.primary, "secondary", timeout_s=30)
    pair.wait_for("the failback ends in sync", lambda: (
        pair.status(pair.secondary)["in_sync"] and pair.status(pair.primary).get("consistent", True)),
        timeout_s=60)
    pair.stop_both()
    pair.assert_identical()


def test_primary_cut_off_from_etcd_stops_acknowledging_before_the_takeover(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    require_python_libnbd()
    pair, proxy = cluster_pair(make_pair, etcd, tmp_path, via_etcd_proxy=True)
    assert proxy is not None
    writer = start_writer(pair, TTL_S + 8)
    time.sleep(1.5)
    cut = time.monotonic()
    proxy.cut()
    promoted = wait_promoted(pair, TTL_S + 10)
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    result = json.loads(out)
    acks = result["acks"]
    before = [t for t in acks if t < cut]
    after = [t for t in acks if t >= cut]
    assert before, "the host wrote nothing before the cut"
    last = max(acks)
    print(f"cut at 0; last ack at {last - cut:.2f} s; takeover seen at {promoted - cut:.2f} s; "
          f"{len(after)} acks after the cut, {result['errors']} errors")
    # Fenced: no ack once etcd could have expired the lease, and none after the takeover.
    assert last < cut + TTL_S, f"an ack {last - cut:.2f} s after the cut\n{pair.logs()}"
    assert last < promoted
    assert result["errors"] > 0, "the fenced primary never refused a write"
    # Fenced, or already told on the link to step down by the new primary (failback).
    old = cluster(pair, "primary")
    assert not old["holding_lease"] and (old["fenced"] or old["role"] == "secondary"), old
    proxy.restore()
    fail_back_and_compare(pair)
    proxy.close()


def test_a_primary_stepped_down_after_an_etcd_cut_stops_cleanly(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    pair, proxy = cluster_pair(make_pair, etcd, tmp_path, via_etcd_proxy=True)
    assert proxy is not None
    proxy.cut()
    wait_promoted(pair, TTL_S + 10)
    proxy.restore()
    # Its SIGTERM (in fail_back_and_compare's stop) once hung for ever: a grpc.aio call
    # cancelled on uvloop after the cut never finished cancelling (found by make chaos
    # CLUSTER=1; daemon/etcd.py runs the client on a thread of its own since). Failed 2 runs in
    # 3 before, 8 in 8 pass after.
    fail_back_and_compare(pair)
    proxy.close()


def test_link_cut_with_etcd_fine_promotes_nothing(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    pair, _ = cluster_pair(make_pair, etcd, tmp_path, via_proxy=True, mode="lookahead")
    pair.cut_link()
    time.sleep(2 * TTL_S + 1)
    assert pair.role_of(pair.secondary) == "secondary"
    primary = cluster(pair, "primary")
    assert primary["holding_lease"] and not primary["fenced"]
    assert cluster(pair, "secondary")["holder"] == "a"
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", pair.nbd_url],
             context=pair.logs())  # the primary still acknowledges
    view = json.loads(pair.cli("cluster", "status", "--config", pair.secondary.config_path,
                               "--json").stdout)
    assert [(v["volume"], v["holder"], v["epoch"]) for v in view["volumes"]] == [("vol0", "a", 1)]
    assert 0 < view["volumes"][0]["remaining_s"] <= TTL_S
    assert view["site"]["site"] == "b" and view["site"]["role"] == "secondary"
    table = pair.cli("cluster", "status", "--config", pair.primary.config_path).stdout
    assert table.splitlines()[0].split() == ["VOLUME", "SITE", "ROLE", "EPOCH", "LEASE", "HOLDER",
                                             "REMAINING", "NOTE"]
    assert "a (this site)  primary" in table, table
    pair.restore_link()
    pair.wait_in_sync()


def test_etcd_restart_fences_the_primary_meanwhile_and_promotes_nothing(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    pair, _ = cluster_pair(make_pair, etcd, tmp_path, mode="lookahead")
    etcd.members[0].stop()
    pair.wait_for("the primary fences itself",
                  lambda: bool(cluster(pair, "primary")["fenced"]), timeout_s=TTL_S + 5)
    failed = run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x11 2M 4k", pair.nbd_url], ok=None)
    assert failed.returncode != 0 or "error" in (failed.stdout + failed.stderr).lower(), failed.stdout
    time.sleep(TTL_S)
    assert pair.role_of(pair.secondary) == "secondary", "promoted while etcd was down"
    etcd.members[0].start()
    pair.wait_for("the primary holds its lease again",
                  lambda: not cluster(pair, "primary")["fenced"], timeout_s=TTL_S + 10)
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x22 2M 4k", pair.nbd_url], context=pair.logs())
    assert pair.role_of(pair.secondary) == "secondary"
    assert cluster(pair, "primary")["epoch"] == 1


def test_an_inconsistent_secondary_never_promotes_itself_and_says_why(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    slow = replace(SMALL, mode="sync", resync_rate_max="1MiB")
    pair = make_pair(slow, primary=replace(slow, admin_extra=cluster_toml(etcd.urls[0], "a")),
                     secondary=replace(slow, admin_extra=cluster_toml(etcd.urls[0], "b")))
    pair.init_both()
    pair.start(pair.primary)
    pair.wait_for("the primary holds the lease",
                  lambda: bool(pair.status(pair.primary)["cluster"]["holding_lease"]))
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 24M", pair.nbd_url], context=pair.logs())
    pair.start(pair.secondary)  # a full sync of 24 MiB at 1 MiB/s: inconsistent meanwhile
    pair.wait_for("the full sync runs", lambda: pair.status(pair.secondary)["link"] == "connected")
    pair.kill9(pair.primary)
    pair.wait_for("the secondary says why it does not promote", lambda: "may not be promoted" in
                  cluster(pair, "secondary")["reason"], timeout_s=TTL_S + 10)
    time.sleep(1)
    here = cluster(pair, "secondary")
    assert here["role"] == "secondary" and here["automatic_promotions"] == 0
    assert "inconsistent" in here["reason"] and here["holder"] is None, here


def test_a_secondary_whose_resync_was_interrupted_never_promotes_itself(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    """A consistent secondary is brought writes the primary acknowledged alone (sync mode, the
    secondary was down) by a resync; the primary dies mid-resync. Rolled back, the copy would be
    consistent but lack those writes, so it must not promote itself (found by `make chaos
    CLUSTER=1`, where it did, and the returning primary then met a split brain); the primary,
    back, retakes its lease and finishes the pass, and no acknowledged write is lost."""
    pair, _ = cluster_pair(make_pair, etcd, tmp_path, mode="sync", resync_rate_max="1MiB")
    pair.kill9(pair.secondary)
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 12M", pair.nbd_url], context=pair.logs())
    pair.start(pair.secondary)  # a resync of 12 MiB at 1 MiB/s, with an undo log
    pair.wait_for("the resync runs", lambda: bool(pair.status(pair.secondary)["resync"]["active"]))
    time.sleep(1)
    pair.kill9(pair.primary)
    pair.wait_for("the secondary says why it does not promote itself", lambda: "does not promote "
                  "itself" in cluster(pair, "secondary")["reason"], timeout_s=TTL_S + 10)
    time.sleep(1)
    here = cluster(pair, "secondary")
    assert here["role"] == "secondary" and here["automatic_promotions"] == 0, here
    assert "acknowledged" in here["reason"] and here["holder"] is None, here

    pair.start(pair.primary)  # its own epoch: it takes its lease back and finishes the pass
    pair.wait_for("in sync again", lambda: bool(pair.status(pair.primary)["in_sync"]), timeout_s=60)
    assert cluster(pair, "primary")["epoch"] == 1
    pair.stop_both()
    pair.assert_identical()
    assert_pattern(pair.secondary.data_path, 0, 12 * MiB, 0x5a)


def _outdated_then_primary_killed(make_pair: MakePair, etcd: EtcdCluster,
                                  tmp_path: Path) -> SitePair:
    """sync mode, ``on_disconnect = "continue"``: the link is cut (etcd fine), the primary
    acknowledges a write its secondary never receives, then dies. Past its lease, the
    secondary must not promote itself: that write would be lost."""
    pair, _ = cluster_pair(make_pair, etcd, tmp_path, via_proxy=True, mode="sync")
    pair.cut_link()
    pair.wait_link(pair.primary, "disconnected")
    run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x6b 3M 64k", "-c", "flush", pair.nbd_url],
             context=pair.logs())  # acknowledged by the primary alone
    assert cluster(pair, "primary")["outdates"] == 1  # written before the ack
    pair.wait_for("the primary reads its mark back", lambda: cluster(pair, "primary")["outdated"]
                  is not None)
    mark = cluster(pair, "primary")["outdated"]
    assert mark is not None and mark["site"] == "a" and mark["epoch"] == 1, mark
    pair.kill9(pair.primary)
    pair.wait_for("the secondary says its copy is outdated", lambda: "this copy is outdated" in
                  cluster(pair, "secondary")["reason"], timeout_s=TTL_S + 10)
    time.sleep(TTL_S)  # it keeps refusing
    here = cluster(pair, "secondary")
    assert here["role"] == "secondary" and here["automatic_promotions"] == 0, here
    assert here["holder"] is None and here["outdated"] == mark, here
    assert "site a (epoch 1) answered writes without this site" in here["reason"], here
    text = pair.cli("status", "--config", pair.secondary.config_path).stdout
    assert "cluster  the primary's lease expired, but this copy is outdated" in text, text
    view = json.loads(pair.cli("cluster", "status", "--config", pair.secondary.config_path,
                               "--json").stdout)
    assert [v["outdated"] for v in view["volumes"]] == [
        {"site": "a", "epoch": 1, "generation": mark["generation"]}], view
    table = pair.cli("cluster", "status", "--config", pair.secondary.config_path).stdout
    assert "secondary outdated: a (epoch 1) answered writes without it" in table, table
    return pair


def test_a_secondary_the_primary_outdated_waits_for_it_and_loses_nothing(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    """DRBD's outdate-peer on etcd. Before the ``outdated`` mark the secondary promoted itself
    here and the acknowledged write was gone. The operator starts the old primary again: it
    retakes its lease, resyncs, clears the mark, and the write is on both sites."""
    pair = _outdated_then_primary_killed(make_pair, etcd, tmp_path)
    pair.restore_link()
    pair.start(pair.primary)
    pair.wait_for("in sync again", lambda: bool(pair.status(pair.primary)["in_sync"]), timeout_s=60)
    pair.wait_for("the mark is cleared", lambda: cluster(pair, "primary")["outdated"] is None
                  and cluster(pair, "secondary")["outdated"] is None, timeout_s=TTL_S + 5)
    assert cluster(pair, "primary")["epoch"] == 1
    assert pair.role_of(pair.secondary) == "secondary"
    pair.stop_both()
    pair.assert_identical()
    assert_pattern(pair.secondary.data_path, 3 * MiB, 64 * 1024, 0x6b)


def test_an_operator_accepts_the_loss_by_deleting_the_outdated_key(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    """The old primary is gone for good: deleting the ``outdated`` key (docs/operations.md
    section 11.4) lets the secondary promote itself, without the write it never received."""
    pair = _outdated_then_primary_killed(make_pair, etcd, tmp_path)
    key = b"/foresync/foresync/volumes/vol0/outdated"
    etcd.members[0].post("/v3/kv/deleterange", {"key": base64.b64encode(key).decode()})
    promoted = wait_promoted(pair, 10)
    assert promoted and cluster(pair, "secondary")["automatic_promotions"] == 1
    assert cluster(pair, "secondary")["outdated"] is None
    run_tool(["qemu-io", "-f", "raw", "-c", "read -P 0 3M 64k", pair.nbd_url_of(pair.secondary)],
             context=pair.logs())  # the loss the operator accepted


def test_the_etcd_leader_killed_during_a_failover(make_pair: MakePair, tmp_path: Path) -> None:
    """Three etcd members; the primary is killed, then the etcd leader: the secondary still
    takes over (a new leader extends every lease once, so up to a lease later), and nothing is
    acknowledged twice: the old primary returns as a secondary and the images end identical."""
    etcd = EtcdCluster(tmp_path / "etcd3", size=3)
    etcd.start()
    try:
        base = replace(SMALL, mode="sync")
        pair = make_pair(base, primary=replace(base, admin_extra=cluster_toml(etcd.urls, "a")),
                         secondary=replace(base, admin_extra=cluster_toml(etcd.urls[::-1], "b")))
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        pair.wait_for("the primary holds the lease",
                      lambda: bool(cluster(pair, "primary")["holding_lease"]))
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 8M", pair.nbd_url],
                 context=pair.logs())
        leader = etcd.leader()
        killed = time.monotonic()
        pair.kill9(pair.primary)
        leader.kill9()
        promoted = wait_promoted(pair, 2 * TTL_S + 15)
        print(f"failover with the etcd leader ({leader.name}) killed: {promoted - killed:.2f} s "
              f"(lease_ttl {TTL_S} s)")
        assert promoted - killed <= 2 * TTL_S + 4, f"{promoted - killed:.2f} s\n{etcd.logs()}"
        assert etcd.leader() is not leader
        assert cluster(pair, "secondary")["epoch"] == 2
        pair.start(pair.primary)
        fail_back_and_compare(pair)
    finally:
        etcd.stop()


def test_etcd_over_tls_with_a_client_certificate_and_a_password(make_pair: MakePair,
                                                                tmp_path: Path) -> None:
    tls = make_tls_dir(tmp_path / "tls", "etcd-test-ca")
    etcd = EtcdCluster(tmp_path / "etcd-tls", tls_dir=tls)
    etcd.start()
    try:
        etcd.members[0].enable_auth("s3cret")
        (tmp_path / "etcd.password").write_text("s3cret\n")
        secure = (f'ca_file = "{tls}/ca-cert.pem"\ncert_file = "{tls}/client-cert.pem"\n'
                  f'key_file = "{tls}/client-key.pem"\nuser = "root"\n'
                  f'password_file = "{tmp_path}/etcd.password"\n')
        base = replace(SMALL, mode="sync")
        pair = make_pair(base, primary=replace(base, admin_extra=cluster_toml(etcd.urls, "a") + secure),
                         secondary=replace(base, admin_extra=cluster_toml(etcd.urls, "b") + secure))
        pair.init_both()
        pair.start_both()
        pair.wait_for("the primary holds the lease over TLS, logged in",
                      lambda: bool(cluster(pair, "primary")["holding_lease"]))
        pair.wait_for("the secondary reads the holder",
                      lambda: cluster(pair, "secondary")["holder"] == "a")
        seen = pair.cli("cluster", "status", "--config", pair.primary.config_path, "--json")
        assert json.loads(seen.stdout)["volumes"][0]["holder"] == "a"
        # A wrong password: etcd refuses, and the command says so (exit status 1).
        (tmp_path / "wrong.password").write_text("guess\n")
        wrong = pair.primary.config_path.with_name("wrong.toml")
        wrong.write_text(pair.primary.config_path.read_text().replace(
            f"{tmp_path}/etcd.password", f"{tmp_path}/wrong.password"))
        refused = pair.cli("cluster", "status", "--config", wrong, ok=(1,))
        assert "cannot read the cluster from etcd" in refused.stderr, refused.stderr
        pair.stop_both()
    finally:
        etcd.stop()


def test_a_damaged_value_in_etcd_is_named_and_fails_safe(
        make_pair: MakePair, etcd: EtcdCluster, tmp_path: Path) -> None:
    """A foresync key edited by hand into something foresync never writes: both sites say which
    key and what to do (in /status and `foresync cluster status`), take and promote nothing
    while it stands, and carry on once it is deleted."""
    pair, _ = cluster_pair(make_pair, etcd, tmp_path)
    pair.wait_for("the primary holds the lease", lambda: bool(cluster(pair, "primary")["holding_lease"]))
    key = b"/foresync/foresync/volumes/vol0/outdated"
    named = "etcd key /foresync/foresync/volumes/vol0/outdated holds b'oops', not foresync's record"
    etcd.members[0].post("/v3/kv/put", {"key": base64.b64encode(key).decode(),
                                        "value": base64.b64encode(b"oops").decode()})
    for site in ("primary", "secondary"):
        pair.wait_for(f"the {site} names the key", lambda s=site: named in cluster(pair, s)["etcd_error"],
                      timeout_s=TTL_S + 5)
    assert cluster(pair, "secondary")["automatic_promotions"] == 0
    assert "etcdctl del /foresync/foresync/volumes/vol0/outdated" in cluster(pair, "primary")["etcd_error"]
    refused = pair.cli("cluster", "status", "--config", pair.secondary.config_path, ok=(1,))
    assert named in refused.stderr, refused.stderr
    etcd.members[0].post("/v3/kv/deleterange", {"key": base64.b64encode(key).decode()})
    pair.wait_for("the primary holds the lease again, no error", lambda: bool(
        cluster(pair, "primary")["holding_lease"]) and not cluster(pair, "primary")["etcd_error"],
        timeout_s=TTL_S + 5)
    assert pair.role_of(pair.secondary) == "secondary"
