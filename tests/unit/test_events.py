"""`GET /events` (issue 17): state changes from /status documents, the replay of the current
state, and the stream over a real admin server (chunked JSON lines, ended by the server)."""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
from typing import Any

from foresync.admin.events import EventFeed, changes, current_state
from foresync.admin.http import AdminServer, Endpoint, StreamEndpoint


def _doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"role": "primary", "epoch": 1, "link": "connected", "link_error": "",
                           "in_sync": True, "split_brain": False,
                           "resync": {"active": 0, "done_bytes": 0, "total_bytes": 0},
                           "verify": {"active": False, "mismatches": 0}}
    doc.update(extra)
    return doc


def test_each_change_is_one_event() -> None:
    up = _doc()
    down = _doc(link="disconnected", link_error="cannot reach the secondary at h:1: Connection refused",
                in_sync=False)
    assert changes(up, down) == [
        {"type": "link", "state": "down", "reason": down["link_error"]},
        {"type": "in_sync", "in_sync": False}]
    assert changes(down, down) == []
    other = copy.deepcopy(down)
    other["link_error"] = "cannot reach the secondary at h:1: No route to host"
    assert changes(down, other) == [{"type": "link", "state": "down", "reason": other["link_error"]}]
    promoted = _doc(role="primary", epoch=2)
    assert changes(_doc(role="secondary"), promoted)[0] == {"type": "role", "role": "primary",
                                                            "epoch": 2}
    syncing = _doc(resync={"active": 1, "done_bytes": 1, "total_bytes": 8}, consistent=False)
    assert [e["type"] for e in changes(up, syncing)] == ["resync", "consistent"]
    assert changes(up, syncing)[0]["phase"] == "started"
    assert changes(syncing, up)[0]["phase"] == "finished"
    verified = _doc(verify={"active": False, "mismatches": 1, "mismatched_extents": [3],
                            "mismatched_offsets": [3 << 20]})
    running = _doc(verify={"active": True, "mismatches": 0})
    event = changes(running, verified)[0]
    assert event["type"] == "verify" and event["phase"] == "finished"
    assert event["mismatched_offsets"] == [3 << 20]
    assert changes(up, _doc(split_brain=True)) == [{"type": "split_brain", "split_brain": True}]


def test_the_current_state_replays_as_events() -> None:
    kinds = [e["type"] for e in current_state(_doc(resync={"active": 1, "done_bytes": 0}))]
    assert kinds == ["role", "link", "consistent", "in_sync", "split_brain", "resync"]


def test_the_stream_carries_replay_changes_and_admin_actions() -> None:
    state = {"doc": _doc()}
    feed = EventFeed(lambda: state["doc"], interval_s=0.01)

    async def scenario() -> list[dict[str, Any]]:
        server = AdminServer({("GET", "/status"): Endpoint(lambda _: (200, "application/json", b"{}"))},
                             streams={"/events": StreamEndpoint(
                                 lambda q: feed.stream(since_start="since-start" in q))})
        _, port = await server.start("127.0.0.1", 0)
        watcher = asyncio.ensure_future(feed.watch())

        def follow() -> list[dict[str, Any]]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/events?since-start=1")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Transfer-Encoding") == "chunked"
            return [json.loads(line) for line in response]

        reader = asyncio.ensure_future(asyncio.to_thread(follow))
        await asyncio.sleep(0.3)
        state["doc"] = _doc(link="disconnected", link_error="Connection refused")
        await asyncio.sleep(0.3)
        feed.publish({"type": "admin", "action": "verify", "status": 202})
        await asyncio.sleep(0.1)
        watcher.cancel()
        feed.close()  # the stream ends: the reader's loop finishes
        lines = await asyncio.wait_for(reader, 10)
        await server.aclose()
        return lines

    lines = asyncio.run(scenario())
    assert lines[0]["type"] == "role" and lines[0]["replay"] is True and "ts" in lines[0]
    live = [line for line in lines if not line.get("replay")]
    assert live[0] == {"ts": live[0]["ts"], "type": "link", "state": "down",
                       "reason": "Connection refused"}
    assert live[-1]["type"] == "admin" and live[-1]["action"] == "verify"


def test_a_verify_or_resync_shorter_than_a_sample_is_still_started_and_finished() -> None:
    before = _doc(verify={"active": False, "runs": 1, "mismatches": 0},
                  resync={"active": 0, "passes": 4})
    after = _doc(verify={"active": False, "runs": 2, "mismatches": 0, "mismatched_extents": []},
                 resync={"active": 0, "passes": 5})
    assert [(e["type"], e["phase"]) for e in changes(before, after)] == [
        ("resync", "started"), ("resync", "finished"), ("verify", "started"), ("verify", "finished")]


def _writes(writes: int, misses: int, **extra: Any) -> dict[str, Any]:
    return _doc(counters={"writes": writes, "record_misses": misses},
                record={"capacity": 64, "extent_size_bytes": 1 << 20,
                        "miss_ratio_estimate": {"256": 0.02, "32": 0.4}}, **extra)


def test_a_record_too_small_for_the_workload_is_one_event_and_so_is_its_recovery() -> None:
    quiet = _writes(500, 400)  # too few writes to judge
    assert changes(_doc(), quiet) == []
    small = _writes(2000, 400)  # 20% of writes missed
    (event,) = changes(quiet, small)
    assert event["type"] == "record" and event["too_small"] is True
    assert event["miss_ratio"] == 0.2 and event["capacity"] == 64
    assert "too small; capacity 256" in event["advice"]  # what would fix it, from the estimate
    assert changes(small, _writes(2100, 420)) == []  # still too small: nothing new
    (better,) = changes(small, _writes(20000, 500))
    assert better["too_small"] is False and "big enough" in better["advice"]
    assert [e["type"] for e in current_state(small)][-1] == "record"
    assert "record" not in [e["type"] for e in current_state(_writes(20000, 500))]
    assert changes(_writes(500, 400), _writes(5000, 4000, role="secondary")) == [
        {"type": "role", "role": "secondary", "epoch": 1}]  # a secondary's record is not judged
