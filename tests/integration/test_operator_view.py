"""What an operator watches during an incident tells the truth (issue 17): a primary whose
dials fail says why in /status and logs it at WARNING; a secondary in its initial sync says it is
not in sync and shows what it received; the primary shows comparing and sending apart."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from .sites import MiB, Settings, SitePair, StatusPoller, open_site_pairs, run_tool

pytestmark = pytest.mark.integration


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def exported_names(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def scrape_in_sync(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^foresync_in_sync\{[^}]*\} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


def test_failed_dials_are_warnings_with_the_reason_in_status(tmp_path: Path) -> None:
    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(Settings(size="32MiB"))
        pair.init_both()
        pair.start(pair.primary)  # nothing listens on the secondary's link port
        pair.wait_for("a dial failure in link_error", lambda: "Connection refused"
                      in pair.status(pair.primary)["link_error"])
        status = pair.status(pair.primary)
        assert status["link"] == "disconnected"
        assert "cannot reach the secondary at 127.0.0.1:" in status["link_error"]
        pair.wait_for("a WARNING for the failed dial", lambda: re.search(
            r"WARNING .*link: cannot reach the secondary .*Connection refused", pair.primary.log())
            is not None)
        pair.start(pair.secondary)
        pair.wait_in_sync()
        assert pair.status(pair.primary)["link_error"] == ""
        pair.stop(pair.secondary)
        pair.wait_for("a WARNING for the lost link", lambda: re.search(
            r"WARNING .*link: lost the secondary", pair.primary.log()) is not None)


def test_a_secondary_in_its_initial_sync_says_so_and_shows_its_progress(tmp_path: Path) -> None:
    settings = Settings(size="32MiB", resync_rate_max="4MiB")
    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(settings)
        pair.init_both()
        pair.start(pair.primary)
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 12M", pair.nbd_url])
        with StatusPoller(pair, interval_s=0.2) as poller:
            pair.start(pair.secondary)
            pair.wait_for("the secondary receiving resync data", lambda: pair.status(
                pair.secondary)["resync"].get("received_bytes", 0) >= 2 * MiB, timeout_s=30)
            secondary = pair.status(pair.secondary)
            assert secondary["in_sync"] is False and secondary["consistent"] is False
            assert secondary["resync"]["active"] == 1 and secondary["resync"]["rate_bytes_per_s"] > 0
            assert scrape_in_sync(pair.secondary.admin_port) == 0
            text = pair.cli("status", "--config", pair.secondary.config_path).stdout
            # The secondary draws the same phases as the primary, from its own side.
            assert "in_sync=no" in text and "compare  [" in text and "ETA" in text, text
            pair.wait_in_sync(timeout_s=60)
        during = [doc["resync"] for doc in poller.of("primary") if doc["resync"].get("active")]
        assert during, "the primary never reported the pass"
        # Every extent is compared by checksum; only the 12 MiB written differ and are sent.
        assert all(r["compare_total_bytes"] == 32 * MiB for r in during), during[-1]
        assert max(r["send_total_bytes"] for r in during) == 12 * MiB, during[-1]
        assert any(r["send_rate_bytes_per_s"] > 0 for r in during)
        secondary = pair.status(pair.secondary)
        assert secondary["resync"]["active"] == 0 and secondary["in_sync"] is True
        # Every series the Grafana dashboard queries is one a real /metrics exports.
        exported = exported_names(pair.primary.admin_port) | exported_names(pair.secondary.admin_port)
        used = set(re.findall(r"\b((?:foresync|process)_[a-z_]+)\b", DASHBOARD.read_text()))
        assert used and not used - exported, sorted(used - exported)
        assert re.search(r"resync finished: 12\.0 MiB sent", pair.primary.log()), pair.primary.log()


def scrape(port: int, name: str, labels: str = "") -> float:
    """One sample of a gauge from a real /metrics (``labels``: e.g. ``phase="compare"``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf'^{name}\{{[^}}]*{labels}[^}}]*\}} (\S+)$', text, re.M)
    assert match, (name, labels, text)
    return float(match.group(1))


def test_the_secondary_shows_the_initial_sync_total_and_done_from_its_side(tmp_path: Path) -> None:
    """Issue 17: 192 MiB through a proxy that holds the link to 48 MB/s with 2 ms each way,
    so the full sync lasts a few seconds; the secondary's /status and /metrics give the pass's
    total from the start and its done grows to that total."""
    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(Settings(size="256MiB"), via_proxy=True,
                              proxy_args=("--delay-ms", "2", "--rate", "48MB"))
        pair.init_both()
        pair.start(pair.primary)
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 192M", pair.nbd_url])
        pair.start(pair.secondary)
        port = pair.secondary.admin_port
        during, scraped = [], []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            resync = pair.status(pair.secondary)["resync"]
            if not resync["active"] and resync["passes"]:
                break
            if resync["active"] and resync["received_bytes"]:
                during.append(resync)
                scraped.append((scrape(port, "foresync_resync_total_bytes", 'phase="compare"'),
                                scrape(port, "foresync_resync_done_bytes", 'phase="compare"')))
            time.sleep(0.1)
        pair.wait_in_sync(timeout_s=60)
        assert len(during) >= 5, f"the pass was too short to watch: {during}"
        # The whole volume is compared (a new copy), known here from the first sample on.
        assert all(r["total_bytes"] == 256 * MiB and r["total_known"] == 1 for r in during), during[0]
        assert all(r["compare_total_bytes"] == 256 * MiB for r in during)
        dones = [r["done_bytes"] for r in during]
        assert dones == sorted(dones) and dones[0] < dones[-1] < 256 * MiB, dones
        assert any(r["rate_bytes_per_s"] > 0 and r["remaining_bytes"] > 0 for r in during)
        assert all(total == 256 * MiB for total, _ in scraped), scraped
        assert [done for _, done in scraped] == sorted(done for _, done in scraped) and scraped[-1][1] > 0
        final = pair.status(pair.secondary)["resync"]
        assert final["active"] == 0 and final["done_bytes"] == final["total_bytes"] == 256 * MiB, final
        assert final["remaining_bytes"] == 0 and final["rate_bytes_per_s"] == 0
        assert scrape(port, "foresync_resync_done_bytes", 'phase="compare"') == 256 * MiB
        assert scrape(port, "foresync_resync_remaining_bytes") == 0
        # 192 MiB differ and were sent; the rest compared identical (zeroes on both sites).
        assert final["send_done_bytes"] == 192 * MiB, final


def test_log_format_json_gives_one_json_object_a_line(tmp_path: Path) -> None:
    import json

    json_logs = Settings(size="32MiB", admin_extra='[log]\nformat = "json"\n')
    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(Settings(size="32MiB"), primary=json_logs)
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        pair.stop_both()
        lines = [line for line in pair.primary.log().splitlines()
                 if line.strip() and not line.startswith("=====")]
        docs = [json.loads(line) for line in lines]  # every line: not one plain-text line left
        assert any(d["level"] == "INFO" and "link: connected to secondary" in d["message"]
                   for d in docs), lines
        assert all({"ts", "level", "volume", "logger", "message"} <= d.keys() for d in docs)
        assert not pair.secondary.log().lstrip().startswith("{")  # the default stays text


def test_events_follows_state_changes_of_a_real_site(tmp_path: Path) -> None:
    import json
    import subprocess

    from .sites import FORESYNC

    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(Settings(size="32MiB"))
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        out = tmp_path / "events.jsonl"
        with out.open("wb") as sink:
            follower = subprocess.Popen([FORESYNC, "events", "--config", pair.primary.config_path,
                                         "--since-start"], stdout=sink, stderr=subprocess.STDOUT)
        try:
            def events() -> list[dict[str, object]]:
                return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

            pair.wait_for("the replayed state", lambda: len(events()) >= 5)
            verified = pair.cli("verify", "--config", pair.primary.config_path).stdout
            # Not a terminal: one line per step, no carriage-return redraws run together.
            assert "\r" not in verified and verified.splitlines()[-1] == "both sites hold identical data"
            assert all(line.startswith("verify: ") and line.count("verify:") == 1
                       for line in verified.splitlines()[:-1]), verified
            pair.stop(pair.secondary)
            pair.wait_for("a link-down event with the dial's reason", lambda: any(
                e["type"] == "link" and e["state"] == "down" and "Connection refused" in str(e["reason"])
                for e in events()))
            pair.start(pair.secondary)
            pair.wait_in_sync()
            def up_after_down() -> bool:
                links = [e["state"] for e in events() if e["type"] == "link" and not e.get("replay")]
                return "down" in links and "up" in links[links.index("down"):]

            pair.wait_for("a link-up event after the link-down", up_after_down)
            pair.stop(pair.primary)  # the stream ends with the site
            follower.wait(timeout=30)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
        seen = events()
        replay = [e for e in seen if e.get("replay")]
        assert replay[0]["type"] == "role" and replay[0]["role"] == "primary" and replay[0]["epoch"] == 1
        assert {"type": "link", "state": "up"}.items() <= replay[1].items()
        kinds = [(e["type"], e.get("phase") or e.get("state") or e.get("action")) for e in seen
                 if not e.get("replay")]
        assert ("admin", "verify") in kinds and ("verify", "finished") in kinds, kinds
        # The stream may also carry the site's earlier events (its first link up, the initial
        # sync): what matters is a link up after the down.
        assert ("link", "up") in kinds[kinds.index(("link", "down")):], kinds
        assert all(isinstance(e["ts"], str) and e["ts"].endswith("+00:00") for e in seen)
        assert follower.returncode == 0


def test_events_report_every_link_flap_shorter_than_a_sample(tmp_path: Path) -> None:
    """Six cuts of the link through the proxy, each restored at once: the primary redials after
    0.2 s, so each outage lasts about as long as the event stream's 0.25 s sampling period or
    less. Both sites' streams give a down and an up event for every one of them (the daemon
    samples at the link's edges, not only on its timer)."""
    import json
    import subprocess
    from datetime import datetime

    from .sites import FORESYNC

    flaps = 6
    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(Settings(size="32MiB"), via_proxy=True)
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        outs = {site.role: tmp_path / f"events-{site.role}.jsonl" for site in pair.sites}
        followers = []
        for site in pair.sites:
            with outs[site.role].open("wb") as sink:
                followers.append(subprocess.Popen([FORESYNC, "events", "--config", site.config_path,
                                                   "--since-start"],
                                                  stdout=sink, stderr=subprocess.STDOUT))

        def links(role: str) -> list[dict[str, object]]:
            lines = outs[role].read_text().splitlines()
            return [e for e in (json.loads(line) for line in lines if line.strip())
                    if e["type"] == "link" and not e.get("replay")]

        try:
            pair.wait_for("both followers subscribed (their replay)", lambda: all(
                '"replay": true' in out.read_text() for out in outs.values()))
            for flap in range(flaps):
                pair.proxies[0].cut()
                pair.proxies[0].restore()
                ups = flap + 1
                pair.wait_for(f"flap {flap} over", lambda ups=ups: all(  # type: ignore[misc]
                    sum(e["state"] == "up" for e in links(role)) >= ups
                    for role in ("primary", "secondary")) and pair.status(pair.primary)["in_sync"])
            time.sleep(0.6)  # anything late would show now
        finally:
            for follower in followers:
                follower.kill()
                follower.wait()
        for role in ("primary", "secondary"):
            # A link that stays down may say so again with a new reason (a reset, then a refused
            # dial): the edges are what counts.
            edges = [e for i, e in enumerate(links(role))
                     if i == 0 or e["state"] != links(role)[i - 1]["state"]]
            assert [e["state"] for e in edges] == ["down", "up"] * flaps, (role, links(role))
            ts = [datetime.fromisoformat(str(e["ts"])).timestamp() for e in edges]
            gaps = [round(up - down, 3) for down, up in zip(ts[::2], ts[1::2], strict=True)]
            print(f"{role}: link down for {gaps} s")
        pair.stop_both()


def test_events_follows_a_quiet_site_beyond_the_connect_timeout(tmp_path: Path) -> None:
    """`foresync events` waits 10 s at most to connect; a site quiet for longer must not end
    the stream (it did: the timeout stayed on the socket the response reads)."""
    import subprocess

    from .sites import FORESYNC

    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(Settings(size="32MiB"))
        pair.init(pair.primary)
        pair.start(pair.primary)
        out = tmp_path / "events.jsonl"
        with out.open("wb") as sink:
            follower = subprocess.Popen([FORESYNC, "events", "--config", pair.primary.config_path],
                                        stdout=sink, stderr=subprocess.STDOUT)
        try:
            time.sleep(12)
            assert follower.poll() is None, out.read_text()
            pair.cli("verify", "--config", pair.primary.config_path, ok=None)
            pair.wait_for("the admin event", lambda: '"type": "admin"' in out.read_text())
        finally:
            follower.kill()
            follower.wait()
        pair.stop(pair.primary)


def test_events_say_when_the_record_is_too_small_for_the_workload(tmp_path: Path) -> None:
    """1,200 writes that each land on another extent than the last 16 (round robin over 64
    extents, record capacity 16, no prediction): nearly all miss, so once the primary has 1,000
    writes its event stream says the record is too small, with the sizing advice."""
    import json
    import subprocess

    from .sites import FORESYNC

    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make(Settings(size="64MiB", capacity=16, lookahead=0))
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        out = tmp_path / "events.jsonl"
        with out.open("wb") as sink:
            follower = subprocess.Popen([FORESYNC, "events", "--config", pair.primary.config_path],
                                        stdout=sink, stderr=subprocess.STDOUT)
        try:
            def records() -> list[dict[str, object]]:
                lines = out.read_text().splitlines()
                return [e for e in (json.loads(line) for line in lines if line.strip())
                        if e["type"] == "record"]

            writes = [f"write -P 0x{i % 250 + 1:02x} {(i * 17 % 64) * MiB} 4k" for i in range(1200)]
            run_tool(["qemu-io", "-f", "raw", *[arg for w in writes for arg in ("-c", w)],
                      pair.nbd_url], timeout_s=300)
            pair.wait_for("a record event", lambda: bool(records()), timeout_s=60)
        finally:
            follower.kill()
            follower.wait()
        (event,) = records()
        assert event["too_small"] is True and event["capacity"] == 16
        assert isinstance(event["miss_ratio"], float) and event["miss_ratio"] > 0.5
        assert "too small" in str(event["advice"])
        pair.stop_both()
