"""``/metrics`` series of a consistency group's members (issue 16 part 2).

A group is one unit: its replication series carry the group's name in the ``volume`` label.
These add what the unit's own series cannot say: which member volumes it holds, where each lies
in the unit and how big it is (constant while the daemon runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LABELS = ["volume", "site", "member", "export"]


class GroupMembersCollector(Collector):
    def __init__(self, group: str, site: str, members: Sequence[tuple[str, str, int, int]]) -> None:
        self._group = group
        self._site = site
        self._members = tuple(members)  # (member volume, export, base bytes, size bytes)

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("foresync_group_member_size_bytes",
                                 "Size of each member volume of a consistency group (label member).",
                                 labels=LABELS)
        base = GaugeMetricFamily("foresync_group_member_base_bytes",
                                 "Where each member starts in its group's unit (label member).",
                                 labels=LABELS)
        for member, export, offset, length in self._members:
            labels = [self._group, self._site, member, export]
            size.add_metric(labels, length)
            base.add_metric(labels, offset)
        yield size
        yield base
