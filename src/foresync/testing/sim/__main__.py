"""``python -m foresync.testing.sim --seeds N [--seed START]``: run seeds, report, replay failures."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from foresync.faults import Faults
from foresync.replication.primary import Mode
from foresync.testing.sim.world import SimConfig, SimFailure, World


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m foresync.testing.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--steps", type=int, default=1500, help="events per seed")
    parser.add_argument("--mode", choices=[m.value for m in Mode], help="fix the mode (default: per seed)")
    parser.add_argument("--fault", choices=[f for f in Faults.__dataclass_fields__],
                        help="switch on one deliberate bug (self-check)")
    parser.add_argument("--group", type=int, default=0, choices=[0, 2, 3],
                        help="run one consistency group of 2 or 3 member volumes (issue 16)")
    parser.add_argument("--verbose", action="store_true", help="print the full schedule of a failure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the real journal warns of every torn tail it cuts
    faults = Faults(**{args.fault: True}) if args.fault else Faults()
    config = SimConfig(steps=args.steps, mode=Mode(args.mode) if args.mode else None, faults=faults,
                       group_members=args.group)
    passed = failed = 0
    started = time.monotonic()
    for seed in range(args.seed, args.seed + args.seeds):
        world = World(seed, config)
        try:
            world.run()
            passed += 1
        except SimFailure as failure:
            failed += 1
            print(f"FAIL seed={seed} ({world.describe()}): {failure}")
            tail = failure.schedule if args.verbose else failure.schedule[-25:]
            print("  schedule (last events):" if not args.verbose else "  schedule:")
            for line in tail:
                print(f"    {line}")
            extra = f" --mode {args.mode}" if args.mode else ""
            extra += f" --fault {args.fault}" if args.fault else ""
            extra += f" --group {args.group}" if args.group else ""
            print(f"  replay: python -m foresync.testing.sim --seeds 1 --seed {seed} --steps {args.steps}"
                  f"{extra} --verbose")
    elapsed = time.monotonic() - started
    print(f"sim: {passed} passed, {failed} failed ({args.seeds} seeds from {args.seed}, "
          f"{args.steps} steps each, {elapsed:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
