"""Prometheus series of the object front end (issue 18), labelled ``frontend="s3"``.

Read from the ``objects`` section of /status (daemon/objects.py ``status()``) at scrape time, so
the PUT path pays nothing. A site without ``[s3]`` exports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LABELS = ["volume", "site", "frontend"]
# (status field, metric name, help, counter?)
SERIES = (
    ("objects", "foresync_objects", "Objects in this site's store.", False),
    ("bytes", "foresync_object_bytes", "Bytes of object data in this site's store.", False),
    ("record_entries", "foresync_object_record_entries", "Names in the record of objects.", False),
    ("hits", "foresync_object_record_hits", "Object changes whose name was in the record.", True),
    ("misses", "foresync_object_record_misses", "Object changes that waited one round trip.", True),
    ("lag_ops", "foresync_object_lag_ops", "Object ops sent but not yet on the secondary's disk.", False),
    ("may_differ", "foresync_object_may_differ", "Names the record cannot cover (copied at connect).", False),
)


class ObjectCollector(Collector):
    def __init__(self, volume: str, site: str, status: Callable[[], dict[str, Any] | None]) -> None:
        self._labels = [volume, site, "s3"]
        self._status = status

    def collect(self) -> Iterator[Metric]:
        doc = self._status()
        if doc is None:
            return
        for field, name, text, is_counter in SERIES:
            family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(name, text, labels=LABELS) if is_counter
                else GaugeMetricFamily(name, text, labels=LABELS))
            family.add_metric(self._labels, float(doc.get(field, 0) or 0))
            yield family
