"""`GET /metrics` speaks Prometheus text format with the documented names and a volume label."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .sites import SitePair, open_site_pairs, run_tool

REQUIRED = {
    "foresync_writes": "counter", "foresync_record_hits": "counter",
    "foresync_record_misses": "counter", "foresync_record_extents": "gauge",
    "foresync_record_capacity_extents": "gauge", "foresync_failback_bound_bytes": "gauge",
    "foresync_replication_lag_bytes": "gauge", "foresync_replication_lag_seconds": "gauge",
    "foresync_link_up": "gauge", "foresync_link_rtt_seconds": "gauge",
    "foresync_resync_remaining_bytes": "gauge", "foresync_resync_bytes": "counter",
    "foresync_record_read_aheads": "counter",
    "foresync_storage_errors": "counter", "foresync_secondary_storage_errors": "counter",
    "foresync_secondary_storage_failed": "gauge",
    "foresync_write_latency_seconds": "histogram",
}


def scrape(port: int) -> dict[str, tuple[str, dict[str, float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        values = {sample.name: sample.value for sample in family.samples
                  if sample.labels.get("volume") == "vol0"}
        families[family.name] = (family.type, values)
    return families


@pytest.mark.integration
def test_metrics_have_the_documented_names_types_and_values(tmp_path: Path) -> None:
    with open_site_pairs(tmp_path) as make:
        pair: SitePair = make()
        pair.init_both()
        pair.start_both()
        pair.wait_in_sync()
        url = pair.nbd_url_of(pair.primary)
        run_tool(["qemu-io", "-f", "raw", "-c", "write -P 0x42 0 4M", "-c", "write -P 0x43 0 64k", url])
        pair.wait_in_sync()
        metrics = scrape(pair.primary.admin_port)
        for name, kind in REQUIRED.items():
            assert name in metrics, f"missing {name}"
            assert metrics[name][0] == kind, (name, metrics[name][0])
            assert metrics[name][1], f"{name} has no sample with volume=vol0"
        assert metrics["foresync_writes"][1]["foresync_writes_total"] == 2
        assert metrics["foresync_record_misses"][1]["foresync_record_misses_total"] == 1
        assert metrics["foresync_record_hits"][1]["foresync_record_hits_total"] == 1
        assert metrics["foresync_link_up"][1]["foresync_link_up"] == 1
        assert metrics["foresync_write_latency_seconds"][1]["foresync_write_latency_seconds_count"] >= 2
        assert scrape(pair.secondary.admin_port)["foresync_link_up"][1]["foresync_link_up"] == 1
        # A sequential stream from where the first write ended: read-aheads keep the record ahead
        # of it, so 8 MiB of 64 KiB writes (8 extents) add no miss.
        stream = [f"write -P 0x44 {4 * 1024 + 64 * i}k 64k" for i in range(128)]
        run_tool(["qemu-io", "-f", "raw", *[arg for c in stream for arg in ("-c", c)], url])
        pair.wait_in_sync()
        after = scrape(pair.primary.admin_port)
        assert after["foresync_record_misses"][1]["foresync_record_misses_total"] == 1
        assert after["foresync_record_hits"][1]["foresync_record_hits_total"] == 1 + 128
        assert after["foresync_record_read_aheads"][1]["foresync_record_read_aheads_total"] >= 2
        pair.stop_both()
