"""The object record's predictors on synthetic object workloads: miss ratio per predictor.

    .venv/bin/python bench/objects_predict.py [--seed N] [--ops N]

Each workload is a seeded stream of object writes (bucket/key names; multipart parts named by
``objects.predict.part_name``), replayed through a record of object names bounded in count and in
bytes of names, below the workload's working set. A write whose name is in the record is a hit;
otherwise a miss, which (as on the secondary, issue 18) adds the name and up to LOOKAHEAD
predicted names. The record evicts least recently used first; with no link in this model every
entry is clean at once (the durable-watermark rule of the real record only delays evictions, and
applies to every predictor alike). The miss ratio is the share of writes that would wait a round
trip in lookahead mode; "none" is the record without prediction.

Workloads:
* ``small-puts``: 4-64 KiB PUTs in 300 prefixes (tenants), prefix and key popularity skewed
  (Zipf-like); a third of the writes are "commits" that write a data object, then the prefix's
  manifest, then a shared index entry (objects written together);
* ``backup``: multipart uploads of 64 parts, two at a time, interleaved, plus a manifest each;
* ``frames``: 8 cameras writing numbered frames (``cam3/frame-000123.jpg``), interleaved.
"""

from __future__ import annotations

import argparse
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator

from foresync.objects.predict import PREDICTORS, ObjectPredictor, part_name

LOOKAHEAD = 8
NAME_BYTES_PER_ENTRY = 64  # the byte bound: entries x this, so long names count for more


class NameRecord:
    """Object names, bounded in count and bytes, least recently used evicted first."""

    def __init__(self, capacity: int, bytes_max: int) -> None:
        self.capacity, self.bytes_max = capacity, bytes_max
        self.names: OrderedDict[str, None] = OrderedDict()
        self.bytes = 0

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def touch(self, name: str) -> None:
        self.names.move_to_end(name)

    def add(self, name: str) -> None:
        if name in self.names:
            self.names.move_to_end(name)
            return
        self.names[name] = None
        self.bytes += len(name.encode())
        while len(self.names) > self.capacity or self.bytes > self.bytes_max:
            old, _ = self.names.popitem(last=False)
            self.bytes -= len(old.encode())


def zipf_index(rng: random.Random, n: int, s: float = 1.1) -> int:
    """A skewed index in [0, n): low indexes much more often (inverse-CDF of a power law)."""
    return min(n - 1, int(n * rng.random() ** (1 + 3 * s)))


def small_puts(rng: random.Random, ops: int) -> Iterator[str]:
    done = 0
    while done < ops:
        tenant = zipf_index(rng, 300)
        key = zipf_index(rng, 40)
        yield f"data/t{tenant:03d}/obj-{key}.bin"
        done += 1
        if rng.random() < 1 / 3:  # a commit: the manifest and the index follow the data
            yield f"data/t{tenant:03d}/manifest.json"
            yield f"data/index/t{tenant:03d}.idx"
            done += 2


def backup(rng: random.Random, ops: int) -> Iterator[str]:
    done, upload = 0, 0
    while done < ops:
        pair = [(f"backups/host{rng.randrange(50)}/{upload + i}.tar", f"u{upload + i}") for i in range(2)]
        upload += 2
        for number in range(1, 65):
            for key, upload_id in pair:
                yield part_name(key, upload_id, number)
                done += 1
        for key, _ in pair:
            yield f"{key}.manifest"
            done += 1


def frames(rng: random.Random, ops: int) -> Iterator[str]:
    counters = [rng.randrange(1000) for _ in range(8)]
    for _ in range(ops):
        cam = rng.randrange(8)
        counters[cam] += 1
        yield f"video/cam{cam}/frame-{counters[cam]:06d}.jpg"


WORKLOADS: dict[str, tuple[Callable[[random.Random, int], Iterator[str]], int]] = {
    "small-puts": (small_puts, 2000),  # record capacity, below the ~12 000-name working set
    "backup": (backup, 256),
    "frames": (frames, 256),
}


def miss_ratio(names: list[str], predictor: ObjectPredictor, capacity: int) -> float:
    record = NameRecord(capacity, capacity * NAME_BYTES_PER_ENTRY)
    misses = 0
    for name in names:
        if name in record:
            record.touch(name)
        else:
            misses += 1
            record.add(name)
            for predicted in predictor.candidates(name, LOOKAHEAD):
                record.add(predicted)
            record.add(name)  # the written name stays the most recent
        predictor.observe(name)
    return misses / len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ops", type=int, default=50_000)
    args = parser.parse_args()
    order = list(PREDICTORS)
    print(f"object record miss ratio, lookahead {LOOKAHEAD}, {args.ops} writes, seed {args.seed}")
    print("| workload | record | " + " | ".join(order) + " |")
    print("|---|--:|" + "--:|" * len(order))
    for workload, (make, capacity) in WORKLOADS.items():
        names = list(make(random.Random(args.seed), args.ops))[:args.ops]
        ratios = [miss_ratio(names, PREDICTORS[p](), capacity) for p in order]
        print(f"| {workload} | {capacity} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
