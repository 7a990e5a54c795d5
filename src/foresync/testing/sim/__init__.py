"""A seeded, deterministic simulator of two sites driving the real pure cores.

One thread, a virtual clock, an in-memory network and disks that lose what was not fsynced.
Every random choice comes from one ``random.Random(seed)``, so a failing seed replays exactly.
"""

from foresync.testing.sim.world import SimConfig, SimFailure, World, run_seed

__all__ = ["SimConfig", "SimFailure", "World", "run_seed"]
