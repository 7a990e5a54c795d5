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


def test_a_site_that_cannot_write_is_said_plainly() -> None:
    doc = _primary(secondary_error="the secondary could not write its image: no space (errno 28)")
    doc["counters"]["storage_errors"] = 3
    text = render("vol0", doc)
    assert "SECONDARY CANNOT WRITE: the secondary could not write its image" in text
    assert "storage errors 3 since start" in text
    secondary = render("vol0", _primary(role="secondary", storage_error="could not write its record journal"))
    assert "CANNOT WRITE: this site could not write its record journal" in secondary
    assert "CANNOT WRITE" not in render("vol0", _primary())


def test_a_full_sync_shows_comparing_and_sending_each_with_its_rate_and_eta() -> None:
    """Issue 17: one ETA from the send rate over every byte left said 0:03:12 for a pass that
    ended in 34 s; comparing and sending now each have a bar, a rate and an ETA."""
    resync = {"done_bytes": 600 << 20, "total_bytes": 1024 << 20, "rate_bytes_per_s": 1 << 20,
              "remaining_bytes": 424 << 20, "active": 1,
              "compare_total_bytes": 1024 << 20, "compare_done_bytes": 512 << 20,
              "compare_rate_bytes_per_s": 256 << 20,
              "send_total_bytes": 20 << 20, "send_done_bytes": 10 << 20,
              "send_rate_bytes_per_s": 1 << 20}
    text = render("vol0", _primary(resync=resync))
    assert "compare  [" in text and "512.0 MiB/1.0 GiB at 256.0 MiB/s, ETA 0:00:02" in text
    assert "send     [" in text and "10.0 MiB/20.0 MiB at 1.0 MiB/s, ETA 0:00:10" in text
    assert "grows while comparing" in text
    assert "ETA 0:07:04" not in text  # the old single estimate: 424 MiB at 1 MiB/s


def test_hit_ratio_is_not_a_number_when_no_write_was_a_hit_or_a_miss() -> None:
    doc = _primary(mode="async")
    doc["counters"].update(writes=50, record_hits=0, record_misses=0)
    assert "hit ratio n/a" in render("vol0", doc)
    assert "0.0%" not in render("vol0", doc).split("hit ratio")[1].splitlines()[0]


def test_out_of_sync_extents_are_being_copied_while_the_link_is_up() -> None:
    connected = render("vol0", _primary(out_of_sync_extents=60))
    assert "out-of-sync 60 extents, 60.0 MiB (being copied)" in connected
    assert "when the link returns" not in connected
    down = render("vol0", _primary(out_of_sync_extents=60, link="disconnected"))
    assert "out-of-sync 60 extents, 60.0 MiB (copied when the link returns)" in down


def test_verify_shows_bytes_rate_eta_and_offsets() -> None:
    from foresync.status_view import mismatch_list, verify_line

    verify = {"active": True, "done_extents": 672, "total_extents": 1024, "done_bytes": 672 << 20,
              "total_bytes": 1 << 30, "rate_bytes_per_s": 32 << 20, "mismatches": 2,
              "mismatched_extents": [3, 700], "mismatched_offsets": [3 << 20, 700 << 20]}
    assert verify_line(verify) == ("verify: 672/1024 extents, 672.0 MiB/1.0 GiB at 32.0 MiB/s, "
                                   "ETA 0:00:11, 2 mismatched")
    assert mismatch_list(verify) == ("3 (offset 3145728 = 3.0 MiB), "
                                     "700 (offset 734003200 = 700.0 MiB)")
    assert "672.0 MiB/1.0 GiB at 32.0 MiB/s, ETA 0:00:11" in render("vol0", _primary(verify=verify))


def test_a_secondary_in_a_resync_shows_what_it_received() -> None:
    doc = _primary(role="secondary", consistent=False, seq={"applied": 9}, in_sync=False,
                   resync={"done_bytes": 0, "total_bytes": 0, "rate_bytes_per_s": 2 << 20,
                           "active": 1, "received_bytes": 24 << 20, "full_compare": 1})
    text = render("vol0", doc)
    assert "in_sync=no" in text.splitlines()[0]
    assert "resync   receiving: 24.0 MiB so far at 2.0 MiB/s" in text


def test_a_secondary_shows_the_same_phases_as_the_primary_from_its_side() -> None:
    doc = _primary(role="secondary", consistent=False, seq={"applied": 9}, in_sync=False,
                   resync={"done_bytes": 40 << 20, "total_bytes": 100 << 20, "rate_bytes_per_s": 2 << 20,
                           "remaining_bytes": 60 << 20, "active": 1, "compare_total_bytes": 100 << 20,
                           "compare_done_bytes": 40 << 20, "compare_rate_bytes_per_s": 10 << 20,
                           "send_total_bytes": 24 << 20, "send_done_bytes": 24 << 20,
                           "send_rate_bytes_per_s": 2 << 20, "received_bytes": 24 << 20,
                           "full_compare": 1, "total_known": 1})
    text = render("vol0", doc)
    assert "compare  [" in text and "40.0 MiB/100.0 MiB at 10.0 MiB/s, ETA 0:00:06" in text
    assert "receiving:" not in text


def test_one_write_is_too_few_to_call_the_record_too_small() -> None:
    doc = _primary()
    doc["counters"].update(writes=1, record_hits=0, record_misses=1)
    lines = [line for line in render("vol0", doc).splitlines() if "record:" in line]
    assert lines == ["  record: 100.0% of 1 writes missed so far: too few to judge its size "
                     "(1000 needed)"]
    doc["counters"].update(writes=1000, record_misses=300)
    assert "30.0% of writes miss at capacity 40: too small" in render("vol0", doc)


def test_a_cluster_secondary_says_why_it_does_not_promote_and_shows_the_mark() -> None:
    reason = ("the primary's lease expired, but this copy is outdated: site a (epoch 1) answered "
              "writes without this site")
    doc = _primary(role="secondary", consistent=True, cluster={
        "reason": reason, "outdated": {"site": "a", "epoch": 1, "generation": "0x77"}})
    text = render("vol0", doc)
    assert f"cluster  {reason}" in text
    assert "etcd marks the secondary outdated: site a (epoch 1)" in text and "0x77" in text
    assert "cluster" not in render("vol0", _primary(cluster={"reason": "", "outdated": None}))


def test_the_misses_trip_is_shown_against_the_rtt_and_the_secondary_says_its_share() -> None:
    doc = _primary()
    doc["counters"].update(record_misses_answered=40, record_miss_round_trip_s=0.8)
    text = render("vol0", doc)
    assert "misses   40 answered, 20.00 ms each from MISS to ADDED (+9.50 ms beyond the link's rtt)" in text
    secondary = _primary(role="secondary", consistent=True, seq={"applied": 9})
    secondary["counters"].update(misses_added=40, miss_added_s=0.1)
    shown = render("vol0", secondary)
    assert "misses   40 answered here, 2.50 ms each from reading the MISS to sending its ADDED" in shown
    assert "answered here" not in render("vol0", _primary(role="secondary", consistent=True))
