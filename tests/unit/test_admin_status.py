"""admin/status.py: the SiteStatistics snapshot and the one place /status is assembled from it.

The /status field names are a contract: every field docs/operations.md documents for a role is
in the document made for that role, with the value the snapshot holds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from foresync.admin.status import (
    PrimaryView,
    ResyncReceived,
    SecondaryView,
    SiteStatistics,
    status_document,
)
from foresync.replication.primary import PrimaryStatistics
from foresync.replication.progress import ResyncProgress, VerifyProgress
from foresync.replication.secondary import SecondaryStatistics

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()

SECURITY = {"nbd_tls": False, "nbd_tls_verify_client": False, "link_tls": False,
            "link_secret": False, "admin_token": False}


# A secondary's view of a pass it receives (replication/resync_watch.py): 8 MiB of 16 known.
RECEIVING = ResyncProgress(done_bytes=8 << 20, total_bytes=16 << 20, rate_bytes_per_s=5,
                           active=True, compare_total_bytes=0, compare_done_bytes=0,
                           compare_rate_bytes_per_s=0, send_total_bytes=16 << 20,
                           send_done_bytes=8 << 20, passes=1, set_extents=16)


def secondary_statistics() -> SiteStatistics:
    core = SecondaryStatistics(record_extents=4, applied_seq=0, durable_seq=0, pending_ranges=0,
                               writes_applied=0, bytes_applied=0)
    return SiteStatistics(
        epoch=3, mode="lookahead", link="connected", link_error="", in_sync=False,
        record_extents=4, record_capacity=64, extent_size_bytes=1 << 20, writes=0,
        storage_errors=0, split_brain=False, security=SECURITY,
        view=SecondaryView(core=core, resync=ResyncReceived(True, 7 << 20, 5, False, RECEIVING, True),
                           storage_error="", disconnected_since=None,
                           worst_case_divergence_bytes=4 << 20, consistent=False,
                           metadata_damage="", undo_saved_extents=0, rolled_back_extents=0,
                           record_may_be_incomplete=False))


def primary_statistics() -> SiteStatistics:
    core = PrimaryStatistics(writes=9, record_hits=5, record_misses=4, resync_bytes=0, lag_bytes=0,
                             lag_writes=0, record_extents=4, record_capacity=64, link="connected",
                             resync_remaining_extents=0, durable_seq=0, last_seq=9, in_sync=False,
                             out_of_sync_extents=6)
    resync = ResyncProgress(done_bytes=10, total_bytes=20, rate_bytes_per_s=1, active=True,
                            compare_total_bytes=16 << 20, compare_done_bytes=8 << 20,
                            compare_rate_bytes_per_s=1, send_total_bytes=2 << 20,
                            send_done_bytes=1 << 20, passes=1, set_extents=0)
    verify = VerifyProgress(active=False, done_extents=0, total_extents=0, done_bytes=0,
                            total_bytes=0, rate_bytes_per_s=0, mismatched_extents=(1, 2, 3),
                            mismatched_offsets=(1 << 20, 2 << 20, 3 << 20), mismatches=3,
                            repair=False, runs=1)
    return SiteStatistics(
        epoch=3, mode="lookahead", link="connected", link_error="", in_sync=False,
        record_extents=4, record_capacity=64, extent_size_bytes=1 << 20, writes=9,
        storage_errors=0, split_brain=True, security=SECURITY,
        view=PrimaryView(core=core, resync=resync, verify=verify, link_rtt_s=0.001,
                         secondary_error="", lag_seconds=0.0, eviction="lru", predictor="next",
                         miss_ratio_estimate=((32, 0.5), (128, 0.25)), failback_bound_bytes=10 << 20,
                         full_resync_pending=False, metadata_damage="", nbd_connections=2))



def documented_fields(role: str) -> list[str]:
    """The dotted field paths of the table under ``### `GET /status` on a <role>``."""
    body = DOC.split(f"### `GET /status` on a {role}", 1)[1].split("\n### ", 1)[0]
    fields: list[str] = []
    for row in re.findall(r"^\| (`[^|]*) \|", body, flags=re.M):
        parent = ""
        for name in re.findall(r"`([a-z_.]+)`", row):
            if name.startswith("."):
                fields.append(parent + name[1:])
            else:
                fields.append(name)
                parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    return fields


def lookup(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        assert isinstance(value, dict) and part in value, f"/status lacks {path}"
        value = value[part]
    return value


@pytest.mark.parametrize(("role", "make"), [("primary", primary_statistics),
                                            ("secondary", secondary_statistics)])
def test_every_documented_status_field_is_in_the_document(role: str, make: Any) -> None:
    doc = status_document(make())
    fields = documented_fields(role)
    assert len(fields) >= 20, fields
    for path in fields:
        lookup(doc, path)
    assert doc["role"] == role
    json.dumps(doc)  # plain JSON: no tuples-as-keys, no dataclasses left inside


def test_the_primary_document_carries_the_snapshot_in_the_documented_formats() -> None:
    doc = status_document(primary_statistics())
    assert doc["counters"] == {"writes": 9, "record_hits": 5, "record_misses": 4, "resync_bytes": 0,
                               "record_read_aheads": 0, "record_room_waits": 0,
                               "record_add_waits": 0, "record_evicted_ahead": 0,
                               "record_writes_behind_add": 0, "write_groups": 0, "grouped_writes": 0,
                               "record_misses_answered": 0,
                               "record_miss_round_trip_s": 0.0, "record_miss_queued_s": 0.0,
                               "record_behind_add_waited_s": 0.0, "storage_errors": 0,
                               "secondary_storage_errors": 0}
    assert doc["record"]["miss_ratio_estimate"] == {"32": 0.5, "128": 0.25}
    assert doc["resync"]["active"] == 1 and doc["resync"]["remaining_bytes"] == 10
    assert doc["resync"]["send_rate_bytes_per_s"] == doc["resync"]["rate_bytes_per_s"] == 1
    assert doc["verify"]["active"] is False and doc["verify"]["mismatched_extents"] == [1, 2, 3]
    assert doc["verify"]["mismatched_offsets"] == [1 << 20, 2 << 20, 3 << 20]
    assert doc["seq"] == {"last": 9, "durable": 0} and doc["nbd"] == {"connections": 2}
    assert doc["split_brain"] is True and doc["failback_bound_bytes"] == 10 << 20


def test_the_secondary_document_keeps_its_documented_zeros_and_its_own_view() -> None:
    doc = status_document(secondary_statistics())
    assert doc["counters"] == {"writes": 0, "record_hits": 0, "record_misses": 0,
                               "resync_bytes": 0, "storage_errors": 0,
                               "journal_commits": 0, "misses_received": 0,
                               "journal_commits_overlapped": 0,
                                   "misses_added": 0, "miss_added_s": 0.0}
    assert doc["lag"] == {"bytes": 0, "writes": 0, "seconds": 0.0}
    # Its resync progress is the primary's document, measured here (issue 17), and its own.
    assert doc["resync"] == {"done_bytes": 8 << 20, "total_bytes": 16 << 20, "rate_bytes_per_s": 5,
                             "remaining_bytes": 8 << 20, "active": 1, "compare_total_bytes": 0,
                             "compare_done_bytes": 0, "compare_rate_bytes_per_s": 0,
                             "send_total_bytes": 16 << 20, "send_done_bytes": 8 << 20,
                             "send_rate_bytes_per_s": 5, "passes": 1, "set_extents": 16,
                             "received_bytes": 7 << 20, "full_compare": 0, "total_known": 1}
    assert doc["consistent"] is False and doc["disconnected_since"] is None
    assert "verify" not in doc and "nbd" not in doc
