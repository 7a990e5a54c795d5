"""A model of the record of objects with and without prefix entries, on the latency bench's names.

    .venv/bin/python bench/objects_prefix_model.py

Replays the small-PUT names of ``bench/objects_latency.py`` (same generator and seed: 2 000
warm-up writes then the timed ones; and a longer run whose working set overflows the record)
through a record bounded in names covered (1 024, least recently used out first, every entry
clean at once: no link in this model). A miss adds the name and, with prefix entries, its
directory as one entry when the directory already holds another name and at most
``PREFIX_MAX`` names (weighing every name it covers); a first write under a recorded directory
grows it by one name, and one past ``PREFIX_MAX`` is dropped (the write then misses). Prints the
miss ratio of the timed writes, with and without prefix entries, with the links predictor and
with none. It is a model, for the design's reasoning (design.md section 15, "Prefix entries");
the measured figures are bench/objects_latency.py's.
"""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from objects_latency import CAPACITY, _small_puts

from foresync.objects.entries import directory_of
from foresync.objects.predict import LinksPredictor, ObjectPredictor

LOOKAHEAD = 8


def miss_ratio(names: list[str], warm: int, predictor: ObjectPredictor, prefix_max: int) -> float:
    store: set[str] = set()
    held: dict[str, int] = {}  # directory -> names held there
    record: OrderedDict[str, int] = OrderedDict()  # entry -> names it covers; directories end "/"
    total = misses = timed = 0
    for i, name in enumerate(names):
        directory, new = directory_of(name), name not in store
        covered = name in record or directory in record
        if covered and name not in record and new:
            if record[directory] + 1 > prefix_max:
                total -= record.pop(directory)
                covered = False
            else:
                record[directory] += 1
                total += 1
        if covered:
            record.move_to_end(name if name in record else directory)
        else:
            misses += i >= warm
            adds = [(name, 1)]
            guesses = predictor.candidates(name, LOOKAHEAD)
            weight = held.get(directory, 0) + new
            if prefix_max and held.get(directory, 0) >= 1 and weight <= prefix_max:
                adds = [(directory, weight)]
                for inner in [e for e in record if e != directory and e.startswith(directory)]:
                    total -= record.pop(inner)
                guesses = [g for g in guesses if not g.startswith(directory)]
            for entry, entry_weight in adds + [(g, 1) for g in guesses]:
                if entry not in record:
                    record[entry] = entry_weight
                    total += entry_weight
                record.move_to_end(entry)
            while total > CAPACITY:
                total -= record.popitem(last=False)[1]
        timed += i >= warm
        if new:
            store.add(name)
            held[directory] = held.get(directory, 0) + 1
        predictor.observe(name)
    return misses / timed


def main() -> None:
    print(f"record of {CAPACITY} names, lookahead {LOOKAHEAD}, the latency bench's small PUTs (seed 7)")
    for total, label in ((2500, "2 000 warm-up + 500 timed (the bench)"), (22000, "2 000 + 20 000")):
        names = _small_puts(random.Random(7), total)
        row = [miss_ratio(names, 2000, make(), prefix_max)
               for prefix_max in (0, 64) for make in (ObjectPredictor, LinksPredictor)]
        print(f"{label}: {len(set(names))} names; miss ratio exact names {row[0]:.3f} (none) "
              f"{row[1]:.3f} (links), prefix entries {row[2]:.3f} (none) {row[3]:.3f} (links)")


if __name__ == "__main__":
    main()
