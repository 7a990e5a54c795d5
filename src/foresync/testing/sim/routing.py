"""Many volumes on one link listener under the seeded simulator (issue 16, part 1): the real
routing decision (replication/routing.py) and the real HELLO admission (replication/admission.py)
for a daemon of two to four volumes of one geometry.

**Model.** Each volume has a primary on the other site, with its own identity and history, and a
secondary here that starts new (no identity: it adopts the first primary that greets it) or
already paired. Steps, drawn at random: a volume's runner starts or stops taking connections
(a role switch under way), a volume's primary dials (ROUTE with its name, then HELLO), a
stranger dials naming a volume not served here, or an old peer dials with HELLO first.

**Invariants** (after every step):

1. A connection is handed only to the volume its ROUTE names, and only while that volume takes
   connections.
2. Every secondary's identity is None or its own primary's: no volume ever adopts another's.

The deliberate bug ``route_ignores_name`` (faults.py) must trip them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from foresync.faults import NO_FAULTS, Faults
from foresync.link import wire
from foresync.replication.admission import Admitted, Identity, screen_hello
from foresync.replication.routing import Verdict, route

SIZE, EXTENT = 64 << 20, 1 << 20


class RoutingFailure(Exception):
    def __init__(self, message: str, schedule: list[str]) -> None:
        super().__init__(message)
        self.schedule = schedule


@dataclass
class _Volume:
    name: str
    primary_id: bytes  # the identity of its primary on the other site
    ours: bytes | None  # the secondary's here: None while new
    taking: bool = True  # its runner takes connections (False while switching role)


class RoutingWorld:
    def __init__(self, seed: int, faults: Faults = NO_FAULTS, steps: int = 60) -> None:
        self.rng = random.Random(seed ^ 0x5EED16)
        self.faults = faults
        self.steps = steps
        self.schedule: list[str] = []
        count = self.rng.randint(2, 4)
        self.volumes = {
            f"v{i}": _Volume(f"v{i}", self.rng.randbytes(16),
                             None)
            for i in range(count)}
        for volume in self.volumes.values():  # some were paired before: they know their primary
            if self.rng.random() < 0.4:
                volume.ours = volume.primary_id
        self.adopted = 0  # connections handed to a volume

    def _fail(self, message: str) -> None:
        raise RoutingFailure(message, self.schedule)

    def _hello(self, volume_id: bytes) -> wire.Hello:
        return wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, volume_id, SIZE, EXTENT, 1,
                          history=(1,))

    def _dial(self, first: wire.Message, hello: wire.Hello, named: str | None) -> None:
        serving = {name: volume.taking for name, volume in self.volumes.items()}
        decision = route(first, serving, self.faults)
        self.schedule.append(f"dial {named!r}: {decision.verdict.value} {decision.volume or ''}")
        if decision.verdict is not Verdict.ADOPT:
            return
        assert decision.volume is not None
        if decision.volume != named:
            self._fail(f"invariant 1: a connection naming {named!r} went to {decision.volume!r}")
        target = self.volumes[decision.volume]
        if not target.taking:
            self._fail(f"invariant 1: {decision.volume!r} got a connection while switching role")
        self.adopted += 1
        answer = screen_hello(hello, Identity(target.ours, SIZE, EXTENT, (1,) if target.ours else ()),
                              self.faults)
        if isinstance(answer, Admitted) and answer.adopt_identity:
            target.ours = hello.volume_id
            self.schedule.append(f"{target.name} adopts {hello.volume_id.hex()[:8]}")

    def _step(self) -> None:
        names = list(self.volumes)
        draw = self.rng.random()
        if draw < 0.25:
            volume = self.volumes[self.rng.choice(names)]
            volume.taking = not volume.taking
            self.schedule.append(f"{volume.name} {'takes' if volume.taking else 'switches role, refuses'}")
        elif draw < 0.8:
            volume = self.volumes[self.rng.choice(names)]
            self._dial(wire.Route(volume.name), self._hello(volume.primary_id), volume.name)
        elif draw < 0.9:
            self._dial(wire.Route("stranger"), self._hello(self.rng.randbytes(16)), "stranger")
        else:
            self._dial(self._hello(self.rng.randbytes(16)), self._hello(self.rng.randbytes(16)), None)

    def _check(self) -> None:
        for volume in self.volumes.values():
            if volume.ours is not None and volume.ours != volume.primary_id:
                self._fail(f"invariant 2: {volume.name} holds another volume's identity")

    def run(self) -> None:
        for _ in range(self.steps):
            self._step()
            self._check()
