"""`foresync status` for a person: the fixed first line, progress bars with rate and ETA."""

from __future__ import annotations

from typing import Any

from foresync.status_view import render


def _primary(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "role": "primary", "epoch": 2, "mode": "lookahead", "link": "connected", "in_sync": False,
        "link_rtt_s": 0.0105, "record": {"extents": 10, "capacity": 40, "extent_size_bytes": 1 << 20},
        "counters": {"writes": 200, "record_hits": 150, "record_misses": 50, "resync_bytes": 3 << 20},
        "lag": {"bytes": 8192, "writes": 2, "seconds": 0.25}, "failback_bound_bytes": 12 << 20,
        "resync": {"done_bytes": 25 << 20, "total_bytes": 100 << 20, "rate_bytes_per_s": 5 << 20,
                   "remaining_bytes": 75 << 20},
        "verify": {"active": True, "done_extents": 5, "total_extents": 10, "mismatches": 1},
    }
    doc.update(extra)
    return doc


def test_first_line_is_the_fixed_key_value_summary() -> None:
    first = render("vol0", _primary()).splitlines()[0]
    assert first == "vol0  role=primary  epoch=2  mode=lookahead  link=connected  in_sync=no"


def test_primary_view_shows_rtt_fill_bound_lag_ratio_and_progress() -> None:
    text = render("vol0", _primary())
    assert "rtt 10.50 ms" in text
    assert "10/40 extents of 1.0 MiB (25% full); worst-case failback 12.0 MiB" in text
    assert "hit ratio 75.0%" in text
    assert "8.0 KiB in 2 writes, 0.25 s" in text
    assert "25.0%" in text and "at 5.0 MiB/s, ETA 0:00:15" in text  # 75 MiB left at 5 MiB/s
    assert "verify" in text and "50.0%" in text and "1 mismatched" in text


def test_split_brain_and_an_unknown_rate_are_said_plainly() -> None:
    doc = _primary(split_brain=True)
    doc["resync"]["rate_bytes_per_s"] = 0
    text = render("vol0", doc)
    assert "SPLIT BRAIN" in text and "resolve --discard-local" in text
    assert "ETA unknown" in text


def test_secondary_view_says_when_its_record_may_be_incomplete() -> None:
    doc = _primary(role="secondary", link="disconnected", consistent=False,
                   disconnected_since=1.0, seq={"applied": 9})
    text = render("vol0", doc)
    assert "INCONSISTENT" in text and "applied through seq 9" in text
    assert "record may be incomplete" in text
    assert "hit ratio" not in text


def test_security_line_says_what_is_on_and_what_is_not() -> None:
    plain = {"nbd_tls": False, "nbd_tls_verify_client": False, "link_tls": False,
             "link_secret": False, "admin_token": False}
    text = render("vol0", _primary(security=plain))
    assert "security NBD plaintext; link plaintext, unauthenticated; admin no token" in text
    full = {"nbd_tls": True, "nbd_tls_verify_client": True, "link_tls": True, "link_secret": True,
            "admin_token": True}
    text = render("vol0", _primary(security=full))
    assert ("security NBD TLS + client certificates; link TLS + shared secret; admin token required "
            "for changes") in text


def test_status_says_in_one_line_which_capacity_brings_misses_under_5_percent() -> None:
    doc = _primary()  # 50 misses in 200 writes: 25%
    doc["record"]["miss_ratio_estimate"] = {"20": 0.4, "80": 0.09, "160": 0.04, "320": 0.01}
    lines = [line for line in render("vol0", doc).splitlines() if "record:" in line]
    assert lines == ["  record: 25.0% of writes miss at capacity 40: too small; capacity 160 "
                     "(160 MiB failback bound) would bring misses to 4.0%"]


def test_metrics_export_the_estimates_by_capacity() -> None:
    from foresync.admin.metrics import SiteMetrics

    doc = _primary()
    doc["record"]["miss_ratio_estimate"] = {"20": 0.4, "80": 0.09}
    text = SiteMetrics("vol0", lambda: doc).render().decode()
    assert 'foresync_record_miss_ratio_estimate{capacity="80",volume="vol0"} 0.09' in text


def test_a_site_that_cannot_write_is_said_plainly() -> None:
    doc = _primary(secondary_error="the secondary could not write its image: no space (errno 28)")
    doc["counters"]["storage_errors"] = 3
    text = render("vol0", doc)
    assert "SECONDARY CANNOT WRITE: the secondary could not write its image" in text
    assert "storage errors 3 since start" in text
    secondary = render("vol0", _primary(role="secondary", storage_error="could not write its record journal"))
    assert "CANNOT WRITE: this site could not write its record journal" in secondary
    assert "CANNOT WRITE" not in render("vol0", _primary())
