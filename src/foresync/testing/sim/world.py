"""Two sites, a host and a network, stepped by one seeded RNG; invariants checked every step.

The world runs the real ``PrimaryCore`` and ``SecondaryCore``, the real link codec, and the real
``RecordJournal`` and ``UndoLog`` over each site's metadata directory in ``SimFiles`` (torn and
lost unsynced writes at a crash, ENOSPC). Each step picks one enabled event: a host write, zero or
flush; delivery of the next frame in either direction; completion of a pending fsync; a timer
tick; an online verify; or, rarely, a fault: link cut or heal, a stall (the link goes silent
but stays open), a crash or restart of either site,
or a full disk (either site's image, or the secondary's meta disk) until it is freed again. After each step the actions of both cores are carried out,
then the invariants are checked:

1. the secondary's durable record (plus durable pending ranges, the durable resync set of a
   running pass and the primary's durable out-of-sync set) covers every extent where the two
   durable images differ (not in async mode).
   "Durable" means what a restart would believe from the bytes on disk, through the real
   ``journal.format.assess`` and ``oos_format.restore``: metadata damage (a flipped byte anywhere
   in the journal, a deleted journal or out-of-sync store) must widen (every extent), never
   shrink, so the invariant holds under it too (issue 12);
2. while no fault has happened yet, the secondary's image is the primary's sent history replayed
   in sequence order up to what it applied;
3. at the end, after healing and quiescence, both images are byte-identical;
4. no two sites take host writes in the same epoch (epoch history);
5. in sync mode, at a primary crash, every write acknowledged to the host is durable on the
   secondary (or overwritten there by a later write);
6. a failback copies nothing outside the failback set (every extent if the promoted site lost
   its out-of-sync store, or the old primary's record or undo log turned out damaged when it
   restarted as the secondary), the writes since the promotion and the old primary's
   out-of-sync set;
   and, checked with the rest, the record never exceeds capacity;
7. a stranger's HELLO (another volume's, on a connection of its own) never ends the primary's
   session: strangers knock on some timer ticks, drawn from a second RNG so that they leave the
   schedule of every other event as it was.
8. whenever the primary reports ``in_sync`` and no host write is outstanding, the two images are
   identical: a site may say in sync only when it is.
9. a rollback of an unfinished resync from an intact undo log restores every saved extent that a
   write changed since to exactly its content when first saved (``_roll_back_if_needed``), and
   that content includes every write from before the pass: none lands on an extent after the
   pass saved it (``_check_save_order``).
10. every verdict of an online verify matches the real difference between the two images, each
   as it was when that side hashed the extent (``_check_verify_verdict``).
11. while healing at the end, a connected primary that is not in sync, with nothing else to wait
   for, has a timer deadline for that work (``watermark_timer``, the part of ``get_timer``
   apart from the heartbeat): the daemon sleeps until it, so none would mean until the next
   heartbeat, and with no session ever.
12. a failback never silently overwrites a write the old primary took and acknowledged while cut
    off (issue 13). Such writes start a new data generation, so when the old primary meets the
    promoted one the real meeting (``admission.screen_peer_primary``, both real cores) must find a
    split brain: both sites report it, and the operator's ``resolve --discard-local`` (on the old
    primary here) decides, not a DEMOTE. The schedule is a cut, writes on the cut-off primary, a
    forced promotion of the secondary (``promote_cut_off``: the old primary stops taking writes
    then, as its host fails over), writes there, and the reconnect. A secondary takes its
    primary's lineage when it admits the HELLO (as the epoch history always was), so writes taken
    before a HELLO the secondary admitted count as shared.
13. a link times out (liveness.py) exactly when it went silent: a stall (the connection stays
    open, nothing in flight arrives, neither side is told) is ended by a core's ``LinkFailed``
    "no frame from ..." within ``TIMEOUT_S`` of virtual time, and any other timeout fails the
    run, since every other frame is delivered, ahead of most timer ticks.
14. with ``SimConfig.group_members`` (a consistency group of 2 or 3 volumes, issue 16), the
    secondary's members, all together, are the primary's group at ONE point of its write order:
    member by member at every step until the first fault, at a failover after a first-fault
    primary crash (the promoted members at one seq), and at a crash of the secondary the
    surviving members all hold the group's durable point (testing/sim/groups.py); and a HELLO
    of the group whose one member differs in size within its last extent is refused.
15. silent damage on the secondary (``_rot``: a flipped byte once the run has healed) is found by
    an online verify without --repair, which marks it out of sync: the primary no longer reports
    in sync (invariant 8) until the next connect has copied it back.
16. whenever the primary reports ``in_sync`` and no host write is outstanding, the secondary's
    *durable* state equals it: its durable image is the primary's image, and its site metadata
    says consistent (a restart would not roll a pass back from the undo log, nor compare
    everything). Secondaries are crashed right after they read a RESYNC_DONE, before or after
    carrying it out (``_crash_after_resync_done``, its own RNG), so the window between the
    primary's RESYNC_DONE and the secondary's durable record of it is tried (issue 25).
17. every SYNC the secondary reads is answered by a DURABLE covering it once the writes it names
    are applied and the secondary has nothing left to do (``SecondaryCore.quiet``): it may not
    wait for a timer tick (issue 25; the primary's ADDED rule in flushes.py is only a belt).
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import xxhash

from foresync.errors import ForesyncError, StorageError
from foresync.faults import NO_FAULTS, Faults
from foresync.journal import oos_format
from foresync.journal.format import RecordState
from foresync.journal.journal import RecordJournal
from foresync.journal.oos_format import OutOfSync
from foresync.journal.undo import UndoLog
from foresync.link import wire
from foresync.record.predict import PREDICTORS, extents_of
from foresync.record.record import Eviction
from foresync.replication import primary as pcore
from foresync.replication.admission import (
    Admitted,
    Identity,
    Refused,
    lineage_of,
    screen_hello,
    screen_peer_primary,
)
from foresync.replication.commits import CommitMarks
from foresync.replication.driver import PrimaryDriver, SecondaryDriver
from foresync.replication.epochs import Lineage, Meeting
from foresync.replication.failback import failback_set
from foresync.replication.primary import Mode, PrimaryCore
from foresync.replication.secondary import SecondaryCore, SessionFacts, resumable
from foresync.testing.sim.data_files import DataFileFailure, DataFileWorld
from foresync.testing.sim.disk import SECTOR, SimDisk
from foresync.testing.sim.groups import SimGroup, SimGroupImage
from foresync.testing.sim.lease import LeaseFailure, LeaseWorld
from foresync.testing.sim.metadata import JOURNAL, UNDO, SimMeta
from foresync.testing.sim.routing import RoutingFailure, RoutingWorld

VOLUME_ID = bytes(range(16))
# The link's heartbeat and timeout in virtual seconds (a tick adds 0..0.05 s). Every frame here is
# delivered, ahead of most ticks, and a cut ends the connection on both sides: the timeout fires
# rightly only after a stall, so it fires wrongly only if frames stop postponing it (invariant
# 13), which is caught after one timeout of a session: a short one, so that most seeds have one.
HEARTBEAT_S = 0.1
TIMEOUT_S = 0.5
CHECKPOINT_EVERY_ENTRIES = 24  # far fewer than the daemon's, so checkpoints happen often


# Frames a receive pass takes beyond its first (drawn per pass): a read on the real link brings
# several, and the secondary's hot path holds adjacent WRITEs among them (write_runs.py).
_PASS_EXTRA_FRAMES = (0, 0, 0, 1, 2, 4, 7)
_HELLO_KIND = int(wire.MessageType.HELLO)  # a frame's type: its fifth byte (wire.FRAME_HEADER)

class SimFailure(Exception):
    """An invariant did not hold. Carries the seed and the event schedule that led there."""

    def __init__(self, message: str, seed: int, schedule: list[str]) -> None:
        super().__init__(message)
        self.seed = seed
        self.schedule = schedule


@dataclass(frozen=True, slots=True)
class SimConfig:
    steps: int = 1500
    mode: Mode | None = None  # None: chosen by the seed (swarm testing)
    faults: Faults = NO_FAULTS
    crash_weight: float = 1.0  # scale of the fault events' weights; 0 disables them
    eviction: Eviction | None = None  # None: chosen by the seed
    group_members: int = 0  # 2 or 3: one consistency group of that many volumes (0: one volume)


@dataclass(slots=True)
class _HostOp:
    op_id: int
    kind: str  # "write" | "zero" | "flush"
    offset: int
    length: int
    data: bytes | None
    fua: bool
    conn: int = 0  # the connection it was submitted on (0: none)


class _Primary:
    """The simulated primary site: its core, driver and pending I/O; the effects of its actions
    (replication/driver.py) on the world's disks and queues."""

    def __init__(self, world: World, core: PrimaryCore) -> None:
        self.world = world
        self.core = core
        self.driver = PrimaryDriver(core, self)
        self.flushes: deque[int] = deque()
        self.oos_persists: deque[tuple[int, tuple[int, ...], bool]] = deque()
        self.resume_due = False  # the core asked to be resumed (ResumeLater)

    def send(self, message: wire.Message) -> None:
        w = self.world
        if w.conn:
            if isinstance(message, wire.WriteBatch):
                w.write_groups_sent += 1
                for write in message.writes:
                    w.sent_history[write.seq] = (write.offset, write.data)
            elif isinstance(message, wire.Write | wire.Zero):
                data = message.data if isinstance(message, wire.Write) else bytes(message.length)
                if message.flags & wire.WriteFlag.RESYNC:
                    w.faulted = True  # resync data is not part of the host history
                    if w.failback is not None:
                        w.failback["sent"].add(message.offset // w.extent_size)  # type: ignore[attr-defined]
                w.sent_history[message.seq] = (message.offset, data)
            elif isinstance(message, wire.Verify):
                w._note_verify_sent(message)
            w.p2s.append((w.conn, wire.encode_frame(message)))
        if isinstance(message, wire.ResyncDone) and w.failback is not None:
            w._check_failback_bound()

    def apply_local(self, seq: int, offset: int, length: int, data: bytes | None, punch: bool) -> int:
        w = self.world
        try:
            if data is not None:
                w.pimage.write(offset, data)
            else:
                w.pimage.zero(offset, length)
        except StorageError as exc:
            w._log(f"primary apply of seq {seq} failed: {exc}")
            w.write_failures["primary"] += 1
            return exc.errno
        return 0

    def apply_hit(self, seq: int, offset: int, data: bytes) -> int:
        return self.apply_local(seq, offset, len(data), data, False)

    def ack_host(self, op_id: int, errno: int) -> None:
        op = self.world.host_ops.pop(op_id, None)
        if op is not None and errno == 0:
            self.world._acked(op)

    def flush_local(self, through: int) -> None:
        self.flushes.append(through)

    def persist_out_of_sync(self, token: int, extents: tuple[int, ...], everything: bool) -> None:
        self.oos_persists.append((token, extents, everything))

    def link_failed(self, reason: str) -> None:
        w = self.world
        if w.stalled_at is not None and reason.startswith("no frame from the secondary"):
            w._log(f"link timed out: {reason}")
            w._disconnect(reason)  # the stall, timed out (invariant 13)
            return
        if not reason or reason not in (self.core.secondary_error, pcore.REGREET):
            raise SimFailure(f"link failed: {reason}", w.seed, w.schedule)
        w._disconnect(reason)  # a storage failure there, or a lineage to greet with

    def persist_generation(self, token: int, lineage: Lineage) -> None:
        # Stored at once, as the site does (site.json, before anything after it).
        w = self.world
        site = w.roles["primary"]
        w.histories[site], w.generations[site] = lineage.epochs, lineage.data
        w._log(f"primary {site}: new data generation {lineage.data[-1]}")
        self.core.generation_persisted(token)

    def resume_later(self) -> None:
        self.resume_due = True

    def become_secondary(self, lineage: Lineage) -> None:
        w = self.world
        raise SimFailure(f"the primary was told to step down ({lineage})", w.seed, w.schedule)


class _Secondary:
    """The simulated secondary site: its core, driver and pending I/O, and the effects."""

    def __init__(self, world: World, core: SecondaryCore) -> None:
        self.world = world
        self.core = core
        self.driver = SecondaryDriver(core, self)
        self.syncs: deque[int] = deque()
        self.commits = CommitMarks(world.cfg.faults)  # journal commits in flight (their marks)
        self.conn = 0  # the connection it answers on (set when HELLO arrives)
        self.checksum_next: int | None = None  # a full sync: the next extent to hash and stream
        self.checksum_runs: deque[tuple[int, int]] = deque()  # ... and the runs after it
        # The undo check's view of the pass (``_check_save_order``): the seq of its first resync
        # write, and the extents whose old content it saved.
        self.pass_first_seq: int | None = None
        self.saved_in_pass: set[int] = set()

    def _check_save_order(self, offset: int, length: int, seq: int) -> None:
        """A write from before the pass must land before the pass saves its extent's old content:
        that content is what a rollback restores, "the image from before the pass"."""
        if self.pass_first_seq is None or seq >= self.pass_first_seq:
            return
        late = sorted(set(extents_of(offset, length, self.world.extent_size)) & self.saved_in_pass)
        if late:
            self.world._fail(f"undo log: write seq {seq}, from before the resync pass (its first "
                             f"resync write is seq {self.pass_first_seq}), landed on extents {late} "
                             "after the pass saved their old content: a rollback would take it back")

    def send(self, message: wire.Message) -> None:
        w = self.world
        if w.conn and self.conn == w.conn:
            w.s2p.append((w.conn, wire.encode_frame(message)))
            if isinstance(message, wire.Durable) and w._syncs_owed:
                w._syncs_owed = [seq for seq in w._syncs_owed if seq > message.seq]

    def journal_append(self, entry: bytes) -> None:
        self.world.journal.append(entry)

    def write_data(self, offset: int, data: bytes, seq: int) -> None:
        self._check_save_order(offset, len(data), seq)
        self.world._note_overwrite(offset, len(data))
        self.world.simage.write(offset, data)
        self.world._track_apply(seq, offset, data)

    def write_run(self, writes: tuple[wire.Write, ...]) -> None:
        # As SecondarySite: one pwritev, the parts back to back from the first write's offset
        # (a partial write on a full disk stops at the part that failed).
        self.world.write_runs += 1
        offset = writes[0].offset
        for write in writes:
            self.write_data(offset, write.data, write.seq)
            offset += len(write.data)

    def zero_data(self, offset: int, length: int, punch: bool, seq: int) -> None:
        self._check_save_order(offset, length, seq)
        self.world._note_overwrite(offset, length)
        self.world.simage.zero(offset, length)
        self.world._track_apply(seq, offset, bytes(length))

    def sync_data(self, through: int) -> None:
        self.syncs.append(through)

    def resync_started(self) -> None:
        self.world.meta.consistent = False  # durable before the first resync write lands

    def resync_finished(self, seq: int, generations: tuple[int, ...]) -> None:
        # SecondarySite: flush, then consistent again and no longer in doubt, holding the data
        # of the session primary's generations.
        w = self.world
        w.sdisk.flush()
        site = w.roles["secondary"]
        primary_site = w.roles["primary"]
        if generations and generations == w.generations[primary_site]:
            # The pass brought the data of every generation its primary has: the writes it took
            # cut off are here now (even if its process, or the link, died after RESYNC_DONE).
            w.cut_off_acks[primary_site] = 0
        w.generations[site] = generations or w.generations[site]
        w.discarding[site] = False
        if w.widened[site]:
            w._log(f"secondary {site}: full compare finished, no longer widened")
        w.widened[site] = False
        w.meta.resync_finished()
        w.promise_exempt[site] = set()
        self.core.resync_finished()

    def hash_extents(self, request: int, first: int, count: int) -> None:
        self.world._send_hashes(request, first, count)

    def save_undo(self, extent: int) -> None:
        self.saved_in_pass.add(extent)
        self.world._save_undo(extent)

    def link_failed(self, reason: str) -> None:
        w = self.world
        if w.conn and self.conn == w.conn:
            if w.stalled_at is not None:
                w._log(f"link timed out: {reason}")
                w._disconnect(reason)  # the stall, timed out (invariant 13)
                return
            # Invariant 13: nothing but a stall silences a live connection (see TIMEOUT_S).
            raise SimFailure(f"the secondary timed the link out: {reason}", w.seed, w.schedule)

    def close_link(self, reason: str) -> None:
        w = self.world
        if w.conn and self.conn == w.conn:
            w._log(f"secondary closes the link: {reason}")
            w._closing = w.conn

    def storage_failed(self, area: wire.StorageArea, error: StorageError) -> None:
        w = self.world
        w._log(f"secondary {area.label} write failed: {error}")
        if area is wire.StorageArea.UNDO:
            w.undo_failures += 1
        else:
            w.write_failures["journal" if area is wire.StorageArea.JOURNAL else "secondary"] += 1


class World:
    def __init__(self, seed: int, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = rng = random.Random(seed)
        self.mode = self.cfg.mode or rng.choice([Mode.LOOKAHEAD, Mode.LOOKAHEAD, Mode.SYNC, Mode.ASYNC])
        self.extent_size = rng.choice([1024, 2048, 4096])
        self.extent_count = rng.randint(8, 40)
        self.size = self.extent_size * self.extent_count
        self.capacity = rng.randint(4, max(5, self.extent_count // 2))
        self.lookahead = rng.randint(0, 4)
        self.eviction = self.cfg.eviction or rng.choice(list(Eviction))
        self.predictor = rng.choice(sorted(PREDICTORS))
        # A resync yields to the loop after this much work (ResumeLater): sometimes after every
        # few extents, so passes are interleaved with host writes and faults mid-slice.
        self.resync_slice_bytes = rng.choice([self.extent_size, 3 * self.extent_size, 1 << 26])
        self.resync_window_bytes = rng.choice([self.extent_size, 2 * self.extent_size, 1 << 24])
        self.max_write = (self.capacity - 1) * self.extent_size
        self.schedule: list[str] = []
        self.now = 0.0
        # Two sites, "A" (first primary) and "B"; promotion swaps which one plays which role.
        self.disks = {"A": SimDisk(self.size), "B": SimDisk(self.size)}
        # A consistency group (issue 16): its layout from an RNG of its own, so the draws above
        # and every non-group seed's schedule stay as they were.
        self.group = (SimGroup(self.cfg.group_members, self.extent_size, self.extent_count,
                               random.Random(seed * 104729 + 3), self.cfg.faults, self.disks)
                      if self.cfg.group_members else None)
        # Each site's metadata: the real journal and undo log over its SimFiles, and site.json.
        self.metas = {site: SimMeta(VOLUME_ID, self.extent_size, self.size, self.cfg.faults)
                      for site in ("A", "B")}
        # Sectors whose promised (sync mode) versions a rollback took back on that site: the
        # undo log restores the image from before the pass, host writes during it included.
        # They are stale there, resynced from the primary, which keeps them (see design.md).
        self.promise_exempt: dict[str, set[int]] = {"A": set(), "B": set()}
        self.undo_failures = 0  # undo appends a full meta disk refused
        # Online verify: what each side held of the extents of each VERIFY request.
        self.verify_runs = 0
        self.verify_differences = 0  # hashed extents that really differed (and were reported)
        self._verify_primary: dict[int, list[bytes]] = {}
        self._verify_secondary: dict[int, list[bytes]] = {}
        # A site's stored out-of-sync set (None: the file was deleted) and its "everything" flag.
        self.oos_stores: dict[str, set[int] | None] = {"A": set(), "B": set()}
        self.oos_all = {"A": False, "B": False}
        # A secondary's site.json says metadata_damage (inconsistent, every extent in doubt).
        self.widened = {"A": False, "B": False}
        self.metadata_damages = 0  # damage faults injected (flipped byte, lost file)
        self.histories: dict[str, tuple[int, ...]] = {"A": (1,), "B": (1,)}  # epoch histories
        self.generations: dict[str, tuple[int, ...]] = {"A": (1,), "B": (1,)}  # epochs.py
        self._generation_ids = 0
        # Writes each site took and acknowledged as primary with the link down since the other
        # site last admitted its HELLO (invariant 9), and the split brains met and resolved.
        self.cut_off_acks = {"A": 0, "B": 0}
        self.lease_promotions = 0  # automatic failovers in the lease world of this seed
        self.routed = 0  # link connections handed to a volume in the routing world of this seed
        self.data_full_compares = 0  # starts refused for another data file (sim/data_files.py)
        self.write_groups_sent = 0  # WRITES frames: groups of host writes sent as one (issue 15)
        self.write_runs = 0  # runs of adjacent WRITEs the secondary wrote as one (write_runs.py)
        self.split_brains = 0
        self.discarding = {"A": False, "B": False}  # resolve --discard-local until a pass ends
        self.meta_roles = {"A": "primary", "B": "secondary"}  # as each site's metadata says
        self.roles = {"primary": "A", "secondary": "B"}  # who plays which role in the world
        self.epoch_writers: dict[tuple[int, ...], set[str]] = {}  # invariant 4
        self.promotions = 0
        self.failback: dict[str, object] | None = None  # what a failback may move (invariant 6)
        self.primary: _Primary | None = None
        self.secondary: _Secondary | None = None
        self.cut = False
        self.stalled_at: float | None = None  # the link went silent then (half-open): "stall"
        self.conn = 0  # current connection id; 0 = none
        self.p2s: deque[tuple[int, bytes]] = deque()
        self.s2p: deque[tuple[int, bytes]] = deque()
        self._next_op = 1
        self._version = 1
        self._stream_end: int | None = None  # where the last host write ended
        self.host_ops: dict[int, _HostOp] = {}
        self.faulted = False  # invariant 2 is checked only until the first fault
        self.sent_history: dict[int, tuple[int, bytes]] = {}  # seq -> (offset, bytes) as sent
        self.expected = bytearray(self.size)  # secondary image predicted from the sent history
        self.applied_seq_seen = 0
        self.acked: dict[int, _HostOp] = {}
        self.sector_acked: dict[int, int] = {}  # sector -> version of the latest acked write
        self.sector_promised: dict[int, int] = {}  # ... acked with FUA or covered by a FLUSH
        self._flush_snapshots: dict[int, dict[int, int]] = {}  # FLUSH op id -> acked at submit
        self.sector_versions: dict[int, list[int]] = {}  # sector -> versions written, in order
        self.primary_crashes = 0
        self._op_version: dict[int, int] = {}  # host op id -> version of its data
        self._conn_counter = 0
        self._strangers_rng = random.Random(seed * 7919 + 1)  # not self.rng: see invariant 7
        self.strangers = 0  # stranger HELLOs sent
        self.displaced_by_stranger = 0  # sessions a stranger ended (invariant 7)
        self._closing = 0  # a connection the secondary asked to close (CloseLink)
        self.storage_failures = 0  # STORAGE_FAILED reports the primary received
        self.write_failures = {"primary": 0, "secondary": 0, "journal": 0}  # ENOSPC faults hit
        # Invariant 16's crash right after RESYNC_DONE: drawn from an RNG of its own, so the draws
        # of every other event stay as they were until such a crash happens.
        self._done_crash_rng = random.Random(seed * 6007 + 5)
        self._stepping = False  # the random steps run (not the healing at the end)
        self._crash_after_done = False  # the secondary just read a RESYNC_DONE: crash it now
        self.crashes_after_resync_done = 0
        self._syncs_owed: list[int] = []  # SYNC seqs the secondary read, not yet answered (17)
        self._start_primary()
        self.metas["B"].start(RecordJournal.open(JOURNAL, self.metas["B"].files, self.cfg.faults))
        self._start_secondary(RecordState())
        # Start connected, so the prefix check (invariant 2) covers the run until its first fault.
        self.connect_and_drain()

    def connect_and_drain(self) -> None:
        """Connect the sites and deliver every frame until both directions are empty."""
        self._ev_connect()
        self._settle()
        while self.p2s or self.s2p:
            if self.p2s:
                self._ev_deliver_p2s()
            if self.s2p:
                self._ev_deliver_s2p()
            self._settle()

    # -- the two sites as roles -------------------------------------------------------------------

    @property
    def pdisk(self) -> SimDisk:
        return self.disks[self.roles["primary"]]

    @property
    def sdisk(self) -> SimDisk:
        return self.disks[self.roles["secondary"]]

    @property
    def pimage(self) -> SimDisk | SimGroupImage:
        """The primary's image as its site writes and flushes it: a group's through the real
        ``GroupBackend`` (testing/sim/groups.py)."""
        site = self.roles["primary"]
        return self.disks[site] if self.group is None else self.group.images[site]

    @property
    def simage(self) -> SimDisk | SimGroupImage:
        site = self.roles["secondary"]
        return self.disks[site] if self.group is None else self.group.images[site]

    @property
    def meta(self) -> SimMeta:
        return self.metas[self.roles["secondary"]]

    @property
    def journal(self) -> RecordJournal:
        journal = self.meta.journal
        assert journal is not None, "the secondary is not running"
        return journal

    @property
    def undo(self) -> UndoLog:
        undo = self.meta.undo
        assert undo is not None, "the secondary is not running"
        return undo

    def _restored_oos(self, site: str) -> OutOfSync:
        """What site's out-of-sync store gives a primary starting now (the real policy)."""
        stored = self.oos_stores[site]
        found = None if stored is None else OutOfSync(frozenset(stored), self.oos_all[site])
        return oos_format.restore(found, self.cfg.faults)

    # -- construction ----------------------------------------------------------------------------

    def describe(self) -> str:
        return (f"mode={self.mode.value} extents={self.extent_count}x{self.extent_size}B "
                f"capacity={self.capacity} lookahead={self.lookahead} eviction={self.eviction.value} "
                f"predictor={self.predictor}"
                + (f" group={self.group.describe()}" if self.group is not None else ""))

    def _start_primary(self) -> None:
        config = pcore.Config(
            mode=self.mode, size=self.size, extent_size=self.extent_size, capacity=self.capacity,
            lookahead=self.lookahead, eviction=self.eviction, volume_id=VOLUME_ID,
            window_bytes=max(self.max_write, 4 * self.extent_size), miss_wait_s=1e9,
            resync_slice_bytes=self.resync_slice_bytes,
            resync_window_bytes=self.resync_window_bytes,
            faults=self.cfg.faults, history=self.histories[self.roles["primary"]],
            generations=self.generations[self.roles["primary"]], new_id=self._new_generation_id,
            predictor=self.predictor, watermark_interval_s=0.0, heartbeat_s=HEARTBEAT_S,
            timeout_s=TIMEOUT_S,
            member_sizes=tuple(size for _, size in self.group.members()) if self.group is not None else (),
            member_names=tuple(name for name, _ in self.group.members()) if self.group is not None else ())
        core = PrimaryCore(config, read=self.pdisk.read)
        core.tick(self.now)  # its clock starts with the world's, as PrimarySite's does
        site = self.roles["primary"]
        restored = self._restored_oos(site)
        if self.oos_stores[site] is None:
            # The daemon stores the widened set at once (daemon._load_out_of_sync).
            self._log(f"primary {site}: out-of-sync store missing, everything={restored.everything}")
            self.oos_stores[site] = set(restored.extents)
            self.oos_all[site] = restored.everything
        if restored.everything and self.failback is not None:
            # The promoted site lost its out-of-sync store (or stored "everything"): its failback
            # set is gone with it, so the safe pass copies every extent (issue 12: doubt widens).
            self.failback["set"] = set(range(self.extent_count))
        core.restore_out_of_sync(set(restored.extents))
        if restored.everything or (self.mode is Mode.ASYNC and self.primary_crashes > 0):
            core.resync_everything()
        self.primary = _Primary(self, core)

    def _new_generation_id(self) -> int:
        self._generation_ids += 1
        return 1_000_000 + self._generation_ids  # never a promotion's (1000 + n)

    def _lineage(self, site: str) -> Lineage:
        return Lineage(self.histories[site], self.generations[site])

    def _start_secondary(self, state: RecordState) -> None:
        core = SecondaryCore(self.size, self.extent_size, self.lookahead, VOLUME_ID, state,
                             faults=self.cfg.faults, predictor=self.predictor, watermark_interval_s=0.0,
                             heartbeat_s=HEARTBEAT_S, timeout_s=TIMEOUT_S)
        self.secondary = _Secondary(self, core)

    # -- running ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._stepping = True
            for step in range(self.cfg.steps):
                self._step(step)
                if self._crash_after_done:
                    self._crash_after_resync_done()
                self._settle()
                self._check(step)
            self._stepping = False
            self._finish()
            self._rot()
            self._lease()
            self._routing()
            self._data_files()
        except SimFailure:
            raise
        except (ForesyncError, AssertionError, KeyError, IndexError) as exc:
            raise SimFailure(f"{type(exc).__name__}: {exc}", self.seed, self.schedule) from exc

    def _rot(self) -> None:
        """Invariant 15: silent damage on the secondary's medium (one flipped byte, once the run
        has healed and both images are equal) is found by an online verify without --repair,
        and from then on the primary does not report in sync (invariant 8) until the next
        connect has copied the extent back; then the images are equal again. Its own RNG, so
        the schedule of the run before it is the same as without it."""
        p, s = self.primary, self.secondary
        if (p is None or s is None or p.core.link is not pcore.LinkState.CONNECTED
                or self.group is not None):  # a group's members sit behind their own page caches
            return
        rng = random.Random(self.seed * 104729 + 3)
        self._drive(lambda: not p.core.verify_progress(now=self.now).active, "an earlier verify")
        offset = rng.randrange(self.size)
        extent = offset // self.extent_size
        self.faulted = True  # the secondary is no longer a prefix of the history, by design
        for image in (self.sdisk.current, self.sdisk.durable):
            image[offset] ^= 0xA5
        self._log(f"ROT: byte {offset} (extent {extent}) of the secondary's medium flipped")
        if not p.core.start_verify(False, now=self.now):
            self._fail("rot: a connected primary refused to start a verify")
        self.verify_runs += 1
        # Until the verify has answered, the damage is unknown to both sites: invariants 8 and
        # the durable-coverage check would fail on what no site could know yet.
        self._drive(lambda: not p.core.verify_progress(now=self.now).active and not self.p2s
                    and not self.s2p and not p.oos_persists, "the verify after the damage", check=False)
        if extent not in p.core.verify_mismatches:
            self._fail(f"rot: the verify did not report extent {extent}, damaged on the secondary")
        self._check_in_sync()
        if rng.random() < 0.5:  # the operator repairs: in sync again with no reconnect
            if not p.core.start_verify(True, now=self.now):
                self._fail("rot: a connected primary refused to start a repair")
            self.verify_runs += 1
            self._drive(lambda: not p.core.verify_progress(now=self.now).active
                        and p.core.statistics().in_sync, "the repair of the damage")
        self._finish()  # (else the reconnect copies it back); the images must be equal again

    def _drive(self, done: Callable[[], bool], what: str, check: bool = True) -> None:
        """Deliver, commit and tick (no host writes, no faults) until ``done``."""
        for round_ in range(20000):
            if done() or self.primary is None or self.secondary is None:
                return
            p, s = self.primary, self.secondary
            events = [e for e, ready in ((self._ev_deliver_p2s, self.p2s), (self._ev_deliver_s2p, self.s2p),
                                         (self._ev_primary_flush, p.flushes),
                                         (self._ev_oos_persist, p.oos_persists),
                                         (self._ev_resume, p.resume_due),
                                         (self._ev_journal_commit, s.commits),
                                         (self._ev_data_sync, s.syncs)) if ready]
            if self._checksums_due(s):
                events.append(self._ev_checksums)
            (self.rng.choice(events) if events else self._ev_tick)()
            self._settle()
            if check:
                self._check(round_)
        self._fail(f"rot: {what} never ended")

    def _lease(self) -> None:
        """The etcd lease of the same seed (testing/sim/lease.py): its own small world."""
        world = LeaseWorld(self.seed, self.cfg.faults)
        try:
            world.run()
        except LeaseFailure as failure:
            raise SimFailure(f"lease: {failure}", self.seed, failure.schedule) from None
        self.lease_promotions = world.promotions

    def _routing(self) -> None:
        """Many volumes on one link listener, same seed (testing/sim/routing.py)."""
        world = RoutingWorld(self.seed, self.cfg.faults)
        try:
            world.run()
        except RoutingFailure as failure:
            raise SimFailure(f"routing: {failure}", self.seed, failure.schedule) from None
        self.routed = world.adopted

    def _data_files(self) -> None:
        """Data files swapped or replaced under their metadata, same seed (sim/data_files.py)."""
        world = DataFileWorld(self.seed, self.cfg.faults)
        try:
            world.run()
        except DataFileFailure as failure:
            raise SimFailure(f"data files: {failure}", self.seed, failure.schedule) from None
        self.data_full_compares = world.full_compares

    def _log(self, event: str) -> None:
        self.schedule.append(f"t={self.now:.3f} {event}")

    def _step(self, step: int) -> None:
        rng = self.rng
        choices: list[tuple[float, str]] = []
        p, s = self.primary, self.secondary
        if p is not None and len(self.host_ops) < 12:
            choices += [(6.0, "write"), (0.6, "zero"), (0.6, "flush")]
            if len(self.host_ops) < 8:
                choices.append((2.0, "write_group"))
            if self.group is not None and self.group.txn_step_ready(self.host_ops):
                choices.append((3.0, "txn"))
        if self.p2s and self.stalled_at is None:
            choices.append((4.0, "deliver_p2s"))
        if self.s2p and self.stalled_at is None:
            choices.append((4.0, "deliver_s2p"))
        if p is not None and p.flushes:
            choices.append((1.5, "primary_flush"))
        if p is not None and p.oos_persists:
            choices.append((1.5, "oos_persist"))
        if p is not None and p.resume_due:
            choices.append((3.0, "resume"))
        if s is not None and s.commits:
            choices.append((2.0, "journal_commit"))
        if s is not None and self._checksums_due(s):
            choices.append((2.0, "checksums"))
        if s is not None and s.syncs:
            choices.append((1.5, "data_sync"))
        choices.append((1.0, "tick"))
        if p is not None and self.conn:
            choices.append((0.03, "verify"))
        if self.conn == 0 and p is not None and s is not None and not self.cut:
            choices.append((2.0, "connect"))
        w = self.cfg.crash_weight
        if w:
            choices.append((0.05 * w, "cut") if not self.cut else (0.3, "heal"))
            if self.conn and self.stalled_at is None:
                choices.append((0.02 * w, "stall"))
            choices.append((0.03 * w, "crash_primary") if p is not None else (0.3, "restart_primary"))
            if s is not None:
                choices.append((0.03 * w, "crash_secondary"))
            elif self._may_restart_secondary():
                choices.append((0.3, "restart_secondary"))
            if (p is None and s is not None and self.mode is not Mode.ASYNC and self.conn == 0
                    and self.meta.files.full is None):  # promote's drain commits
                choices.append((0.1 * w, "promote"))
            if (p is not None and s is not None and self.mode is not Mode.ASYNC and self.cut
                    and self.conn == 0 and self.meta.files.full is None):
                choices.append((0.1 * w, "promote_cut_off"))
            if (p is not None and s is not None and self.conn and not self.cut and self.stalled_at is None
                    and p.core.link is pcore.LinkState.CONNECTED and not self._any_full()):
                choices.append((0.02 * w, "switchover"))
            choices.append((0.04 * w, "disk_full"))
            if self._any_full():
                choices.append((0.3, "disk_freed"))
        getattr(self, f"_ev_{_weighted_choice(rng, choices)}")()

    # -- events ---------------------------------------------------------------------------------

    def _ev_write(self) -> None:
        assert self.primary is not None
        offset, length = self._pick_write()
        self._host_write(offset, length, self.rng.random() < 0.1)

    def _pick_write(self) -> tuple[int, int]:
        """Where the next host write goes: (offset, length)."""
        rng = self.rng
        if self.group is not None:  # inside one member (testing/sim/groups.py)
            return self.group.pick_write(rng, self.max_write)
        length = rng.choice([SECTOR, SECTOR * 2, self.extent_size, rng.randrange(1, 9) * SECTOR])
        length = min(length, self.max_write, self.size)
        offset = rng.randrange(0, (self.size - length) // SECTOR + 1) * SECTOR
        if self._stream_end is not None and self._stream_end + length <= self.size and rng.random() < 0.5:
            offset = self._stream_end  # continue a sequential stream: exercises the read-ahead
        self._stream_end = offset + length
        return offset, length

    def _ev_write_group(self) -> None:
        """Plain host writes parsed together (PrimarySite.write_many, issue 15): the leading run
        of hits goes as one WRITES frame (PrimaryDriver.write_hits); the write that ends a run
        goes alone through the core, which is then pumped, as the site does; and so on."""
        p = self.primary
        assert p is not None
        ops = [self._new_write(*self._pick_write(), fua=False)
               for _ in range(self.rng.randrange(2, 7))]
        writes = [(op.offset, op.data or b"") for op in ops]
        start = 0
        while start < len(ops):
            errnos = p.driver.write_hits(writes, start)
            for op, errno in zip(ops[start:], errnos, strict=False):
                p.ack_host(op.op_id, errno)
            start += len(errnos)
            if start < len(ops) and not errnos:
                op = ops[start]
                p.core.write(op.op_id, op.offset, writes[start][1], False)
                p.driver()
                start += 1

    def _new_write(self, offset: int, length: int, fua: bool) -> _HostOp:
        """A host write of a fresh version, submitted (not yet handed to the core)."""
        version = self._version
        self._version += 1
        data = struct.pack(">Q", version) * (length // 8)
        op = _HostOp(self._next_op, "write", offset, length, data, fua)
        self._submit(op, version)
        return op

    def _host_write(self, offset: int, length: int, fua: bool) -> int:
        """Submit a host write of a fresh version; its op id."""
        p = self.primary
        assert p is not None
        op = self._new_write(offset, length, fua)
        data = op.data or b""
        # The site's hot path (PrimaryDriver.write_hit): send, apply at once, answer.
        errno = None if op.fua or self.rng.random() < 0.2 else p.driver.write_hit(offset, data)
        if errno is None:
            p.core.write(op.op_id, offset, data, op.fua)
        else:
            p.ack_host(op.op_id, errno)
        return op.op_id

    def _ev_zero(self) -> None:
        assert self.primary is not None
        rng = self.rng
        big = rng.random() < 0.3
        length = (rng.randrange(1, self.extent_count + 1) * self.extent_size if big
                  else rng.randrange(1, 5) * SECTOR)
        length = min(length, self.size)
        offset = rng.randrange(0, (self.size - length) // SECTOR + 1) * SECTOR
        version = self._version
        self._version += 1
        op = _HostOp(self._next_op, "zero", offset, length, None, rng.random() < 0.1)
        self._submit(op, version)
        self.primary.core.zero(op.op_id, offset, length, rng.random() < 0.5, op.fua)

    def _ev_flush(self) -> None:
        self._host_flush()

    def _host_flush(self) -> int:
        assert self.primary is not None
        op = _HostOp(self._next_op, "flush", 0, 0, None, True)
        self._flush_snapshots[op.op_id] = dict(self.sector_acked)
        self._submit(op, 0)
        self.primary.core.flush(op.op_id)
        return op.op_id

    def _ev_txn(self) -> None:
        assert self.group is not None
        self.group.step_txn(self)

    def _submit(self, op: _HostOp, version: int) -> None:
        self._next_op += 1
        op.conn = self.conn if self.primary is not None and self.primary.core.link is pcore.LinkState.CONNECTED else 0
        self.host_ops[op.op_id] = op
        self._log(f"host {op.kind} #{op.op_id} {op.offset}+{op.length} fua={op.fua} v{version}")
        epoch = self.histories[self.roles["primary"]]
        writers = self.epoch_writers.setdefault(epoch, set())
        writers.add(self.roles["primary"])
        if len(writers) > 1:
            self._fail(f"invariant 4: sites {sorted(writers)} both took host writes in epoch {len(epoch)}")
        if self.failback is not None and op.kind != "flush":
            self.failback["written"].update(extents_of(op.offset, op.length, self.extent_size))  # type: ignore[attr-defined]
        if op.kind != "flush":
            for sector in range(op.offset // SECTOR, (op.offset + op.length) // SECTOR):
                self.sector_versions.setdefault(sector, []).append(version)
            self._op_version[op.op_id] = version

    def _ev_deliver_p2s(self) -> None:
        """One receive pass of the secondary: a frame, often with the frames behind it on the
        same connection (a read brings several; the hot path holds adjacent WRITEs among them
        and writes them as one, write_runs.py), then ``end_of_batch``."""
        conn, frame = self.p2s.popleft()
        s = self.secondary
        if s is None or conn != self.conn:
            return
        self._receive_p2s(s, conn, frame)
        for _ in range(self.rng.choice(_PASS_EXTRA_FRAMES)):
            if not self.p2s or self.p2s[0][0] != conn or self.secondary is not s or s.conn != conn:
                break
            if self.p2s[0][1][4] == _HELLO_KIND:
                break  # a new session's first frame starts its own pass
            self._receive_p2s(s, conn, self.p2s.popleft()[1])
        s.driver.end_of_batch()

    def _receive_p2s(self, s: _Secondary, conn: int, frame: bytes) -> None:
        for message in wire.FrameDecoder().feed(frame):  # a WRITES frame: its writes, in order
            self._deliver_to_secondary(s, conn, message)

    def _deliver_to_secondary(self, s: _Secondary, conn: int, message: wire.Message) -> None:
        if isinstance(message, wire.Hello):
            s.conn = conn
            s.core.session_reset(now=self.now)
        self._log(f"p2s {_short(message)}")
        if isinstance(message, wire.Hello):
            self._admit_primary(message)
        resyncing = s.core.resyncing
        if isinstance(message, wire.Sync) and not s.core.failed:
            self._syncs_owed.append(message.seq)
        if (isinstance(message, wire.ResyncDone) and self._stepping and self.cfg.crash_weight
                and self._done_crash_rng.random() < 0.2):
            self._crash_after_done = True
        try:
            # The site's hot path (SecondaryDriver.write_now): held, or written at once.
            if not (type(message) is wire.Write and self.rng.random() < 0.8
                    and s.driver.write_now(message, self.now)):
                s.core.receive(message, now=self.now)
        except ForesyncError as exc:
            raise SimFailure(f"secondary rejected {_short(message)}: {exc}", self.seed, self.schedule) from exc
        if s.core.resyncing and not resyncing and isinstance(message, wire.Write):
            s.pass_first_seq, s.saved_in_pass = message.seq, set()  # a pass's first resync write

    def _admit_primary(self, hello: wire.Hello) -> None:
        """What SecondarySite does with its primary's HELLO (screen_hello, then _accept_hello):
        a newer epoch history is adopted at once, so a later promotion of this site extends it.
        No schedule here should make the real policy refuse the real primary."""
        s = self.secondary
        assert s is not None
        site = self.roles["secondary"]
        ours = self._identity(site)
        verdict = screen_hello(hello, ours, self.cfg.faults)
        if isinstance(verdict, Refused):
            self._fail(f"secondary {site} refused its primary's HELLO: {verdict.detail}")
        elif verdict.adopt_history:
            # The epochs now; the data generations with the pass that brings their data
            # (ResyncFinished), as SecondarySite._accept_hello does.
            self.histories[site] = lineage_of(hello).epochs
        # The site's facts for the WELCOME (SecondarySite._prepare_welcome): a widened or
        # inconsistent copy makes the primary compare every extent.
        inconsistent, stale, protect = self.meta.welcome(self.widened[site])
        flags = wire.WelcomeFlag.INCONSISTENT if inconsistent else 0
        s.core.session_started(SessionFacts(flags, stale, epoch=len(self.histories[site]),
                                            checksums=inconsistent,
                                            resume=resumable(hello, self.widened[site]),
                                            protect_image=protect))
        if s.core.resume:
            self._log(f"secondary {site}: resumes the pass over {s.core.checksum_runs}")
        s.checksum_runs = deque(s.core.checksum_runs)
        s.checksum_next = s.checksum_runs[0][0] if s.checksum_runs else None

    def _identity(self, site: str) -> Identity:
        """What SecondarySite._identity says of ``site`` (a group's members too)."""
        return Identity(VOLUME_ID, self.size, self.extent_size, self.histories[site],
                        self.discarding[site], self.generations[site],
                        "group" if self.group is not None else "",
                        self.group.members() if self.group is not None else ())

    def _mis_sized_twin_knocks(self) -> None:
        """Invariant 14: a HELLO of our group and lineage whose one member differs in size
        within its last extent is refused (groups.py), by the real screening."""
        assert self.group is not None and self.secondary is not None
        hello, differs = self.group.mis_sized_twin(self._identity(self.roles["secondary"]),
                                                   self._strangers_rng)
        if isinstance(screen_hello(hello, self._identity(self.roles["secondary"]), self.cfg.faults),
                      Admitted):
            self._fail(f"invariant 14: the secondary admitted a HELLO of its group with {differs}")

    def _ev_deliver_s2p(self) -> None:
        conn, frame = self.s2p.popleft()
        p = self.primary
        if p is None or conn != self.conn:
            return
        (message,) = wire.FrameDecoder().feed(frame)
        self._log(f"s2p {_short(message)}")
        if isinstance(message, wire.StorageFailed):
            self.storage_failures += 1
        hashes = message if isinstance(message, wire.Hashes) else None
        local = None if hashes is None else _verify_local_hashes(p.core, hashes.request)
        p.core.receive(message, now=self.now)
        if hashes is not None:
            self._check_verify_verdict(hashes, local)

    def _ev_primary_flush(self) -> None:
        assert self.primary is not None
        ticket = self.primary.flushes.popleft()
        self.pimage.flush()
        self.primary.core.local_flushed(ticket)

    def _ev_disk_full(self) -> None:
        """A full disk: either site's image, or the secondary's meta disk (its journal)."""
        choices = [disk for disk in self.disks.values() if disk.full is None]
        meta = self.meta.files
        what = self.rng.randrange(len(choices) + 1) if choices else 0
        self.faulted = True  # the secondary's image is no longer a prefix of the history
        if self.group is not None:
            self.group.failover_point = None
        if what < len(choices):
            site = next(name for name, disk in self.disks.items() if disk is choices[what])
            self._log(f"DISK FULL: the image of site {site} ({'primary' if self.roles['primary'] == site else 'secondary'})")
            choices[what].full = random.Random(self.rng.random())
        elif meta.full is None:
            self._log("DISK FULL: the secondary's meta disk (journal commits, undo appends fail)")
            meta.full = random.Random(self.rng.random())

    def _ev_disk_freed(self) -> None:
        self._log("disk space freed")
        self._free_disks()

    def _any_full(self) -> bool:
        return (any(disk.full is not None for disk in self.disks.values())
                or any(meta.files.full is not None for meta in self.metas.values()))

    def _free_disks(self) -> None:
        for disk in self.disks.values():
            disk.full = None
        for meta in self.metas.values():
            meta.files.full = None

    def _ev_oos_persist(self) -> None:
        assert self.primary is not None
        token, extents, everything = self.primary.oos_persists.popleft()
        self.oos_stores[self.roles["primary"]] = set(extents)
        self.oos_all[self.roles["primary"]] = everything
        self.primary.core.out_of_sync_persisted(token)

    def _ev_resume(self) -> None:
        assert self.primary is not None
        self.primary.resume_due = False
        self.primary.core.resume()

    def _checksums_due(self, s: _Secondary) -> bool:
        """A full sync's checksums are still to stream on the current connection, and every
        effect of an earlier session has landed (SecondarySite._land_earlier_writes)."""
        return (s.checksum_next is not None and self.conn != 0 and s.conn == self.conn
                and s.core.earlier_session_landed)

    def _ev_checksums(self) -> None:
        """SecondarySite._stream_checksums: hash the next few extents of the image as it is now
        (the writes of this session land around them) and stream them behind the WELCOME."""
        s = self.secondary
        assert s is not None and s.checksum_next is not None
        first, es = s.checksum_next, self.extent_size
        run_first, run_count = s.checksum_runs[0]
        count = min(self.rng.randint(1, 4), run_first + run_count - first)
        hashes = tuple(xxhash.xxh3_64_intdigest(self.sdisk.read(e * es, es)) for e in range(first, first + count))
        self._log(f"secondary checksums {first}..{first + count - 1}")
        s.core.send_checksums(first, hashes)
        s.checksum_next = first + count
        if s.checksum_next == run_first + run_count:
            s.checksum_runs.popleft()
            s.checksum_next = s.checksum_runs[0][0] if s.checksum_runs else None

    def _ev_journal_commit(self) -> None:
        """One journal commit in flight returns: mostly the oldest, sometimes the newest (they
        overlap, replication/commits.py, and may return in either order)."""
        assert self.secondary is not None
        core, marks = self.secondary.core, self.secondary.commits
        started = marks.marks()
        target = started[-1] if len(started) > 1 and self.rng.random() < 0.3 else started[0]
        try:  # SecondarySite._commit_both: old contents first, the writes they protect wait
            self.undo.sync()
        except StorageError as exc:
            marks.failed(target)
            self._log(f"secondary undo log sync failed: {exc}")
            core.storage_failed(wire.StorageArea.UNDO, exc.errno, str(exc))
            return
        try:
            self.journal.commit(target)
        except StorageError as exc:
            marks.failed(target)
            self.secondary.driver.storage_failed(wire.StorageArea.JOURNAL, exc)
            return
        # The fdatasync runs in a worker while the loop goes on (SecondarySite._commit): a frame
        # that arrives meanwhile is journaled (written, not durable), and this commit must not
        # count it (group commit): a commit that starts now, beside this one, covers it.
        if self.p2s and self.conn and self.p2s[0][0] == self.conn and self.secondary.conn == self.conn:
            self._ev_deliver_p2s()
            self.secondary.driver()
            if core.needs_journal_sync() and marks.may_start(core.journal_target()):
                marks.start(core.journal_target())
        core.journal_synced(marks.returned(target))
        if (self.journal.entries_since_checkpoint > CHECKPOINT_EVERY_ENTRIES and not marks
                and not core.needs_journal_sync()):
            try:
                self.journal.checkpoint(core.state)
            except OSError as exc:  # the journal stays as it was, only longer
                self._log(f"journal checkpoint failed: {exc}")

    def _ev_verify(self) -> None:
        """The operator starts an online verify (sometimes with --repair)."""
        assert self.primary is not None
        repair = self.rng.random() < 0.5
        if self.primary.core.start_verify(repair):
            self.verify_runs += 1
            self._log(f"VERIFY started (repair={repair})")

    def _ev_data_sync(self) -> None:
        assert self.secondary is not None
        through = self.secondary.syncs.popleft()
        self.simage.flush()
        if self.group is not None and not self.faulted:
            self.group.note_synced(through)
        self.secondary.core.data_synced(through)

    def _ev_tick(self) -> None:
        if self.stalled_at is not None and self.now >= self.stalled_at + TIMEOUT_S:
            # Invariant 13: the tick that reached the deadline ran both cores' handle_timer.
            self._fail(f"invariant 13: the link has been silent since t={self.stalled_at:.3f} and "
                       f"no core timed it out ({TIMEOUT_S} s)")
        self.now += self.rng.random() * 0.05
        if self.primary is not None:
            self.primary.core.handle_timer(self.now)
        if self.secondary is not None:
            self.secondary.core.handle_timer(self.now)
            if self.conn and self._strangers_rng.random() < 0.1:
                self._stranger_knocks()
            if self.group is not None and self._strangers_rng.random() < 0.05:
                self._mis_sized_twin_knocks()

    def _stranger_knocks(self) -> None:
        """What SecondarySite does with a HELLO on a new connection: screen it, and only if it
        is admitted take the session over from the current connection."""
        s = self.secondary
        assert s is not None
        rng = self._strangers_rng
        stranger = bytes(rng.randrange(256) for _ in range(16))
        if stranger == VOLUME_ID:
            return
        hello = wire.Hello(wire.PROTOCOL_VERSION, wire.Role.PRIMARY, 0, stranger, self.size,
                           self.extent_size, 1, (rng.randrange(1, 1 << 64),))
        ours = Identity(VOLUME_ID, self.size, self.extent_size,
                        self.histories[self.roles["secondary"]])
        self.strangers += 1
        verdict = screen_hello(hello, ours, self.cfg.faults)
        self._log(f"stranger HELLO: {'admitted' if isinstance(verdict, Admitted) else 'refused'}")
        if isinstance(verdict, Admitted):
            had_session = self.conn != 0
            self._disconnect("replaced by a new connection")
            s.conn = self._next_conn()  # the stranger's: what the core says now goes nowhere
            s.core.session_reset(now=self.now)
            s.core.receive(hello, now=self.now)  # the core's own check refuses it (another volume)
            self.displaced_by_stranger += had_session

    def _ev_connect(self) -> None:
        assert self.primary is not None
        self.conn = self._next_conn()
        self._log(f"connect #{self.conn}")
        self.primary.core.connected(now=self.now)

    def _next_conn(self) -> int:
        self._conn_counter += 1
        return self._conn_counter

    def _disconnect(self, reason: str, deliver_p2s_prefix: bool = False) -> None:
        if self.conn == 0:
            return
        conn = self.conn
        if self.stalled_at is not None:
            self.stalled_at = None
            deliver_p2s_prefix = False  # nothing in flight arrives on a stalled connection
        if deliver_p2s_prefix and self.p2s and self.secondary is not None:
            for _ in range(self.rng.randrange(len(self.p2s) + 1)):
                if conn != self.conn:
                    return  # the secondary closed it meanwhile (a storage failure)
                if not self.p2s:
                    break  # a pass took several frames (_ev_deliver_p2s)
                self._ev_deliver_p2s()
                self._settle()
        if conn != self.conn:
            return
        self.conn = 0
        self.p2s.clear()
        self.s2p.clear()
        self._syncs_owed = []  # that session's: the next one asks afresh
        self._verify_primary.clear()  # request numbers start again with the next primary core
        self._verify_secondary.clear()
        self.faulted = True
        if self.failback is not None and self.meta_roles[str(self.failback["site"])] == "secondary":
            # The failback pass was interrupted: the next pass also resends what the record
            # gained meanwhile (predictions included), so invariant 6 measures one whole pass.
            self.failback = None
        if self.primary is not None:
            self.primary.core.disconnected(reason, now=self.now)
        if self.secondary is not None:
            self.secondary.core.session_ended()  # SecondarySite._watch

    def _ev_stall(self) -> None:
        """The connection goes silent without closing (a half-open TCP connection, a peer that
        froze): nothing in flight arrives and neither side is told. Only the link timeout
        (liveness.py) ends it."""
        self._log("link stalls (silent, still open)")
        self.stalled_at = self.now

    def _ev_cut(self) -> None:
        self._log("link cut")
        self.cut = True
        self._disconnect("cut")

    def _ev_heal(self) -> None:
        self._log("link healed")
        self.cut = False

    def _ev_crash_primary(self) -> None:
        assert self.primary is not None
        self._log("CRASH primary")
        if self.group is not None and not self.faulted:
            self.group.failover_point = 0  # set to the applied seq once the prefix is delivered
        self._disconnect("primary crashed", deliver_p2s_prefix=True)
        self.primary = None
        self.pdisk.crash(self.rng)
        if self.rng.random() < 0.15:
            self.metadata_damages += 1
            self.oos_stores[self.roles["primary"]] = None
            self._log(f"DAMAGE: primary {self.roles['primary']}'s out-of-sync store deleted")
        if self.mode is Mode.SYNC:
            self._check_sync_durability()
        if self.group is not None and self.group.failover_point is not None:
            self.group.failover_point = self.applied_seq_seen
        self.host_ops.clear()  # the host sees its outstanding requests fail
        if self.group is not None:
            self.group.host_lost()
        # Writes acknowledged without FUA or FLUSH may be lost in a crash: a later FLUSH does
        # not promise them. What was already promised stays promised.
        self.sector_acked = {}
        self._flush_snapshots.clear()
        self.faulted = True
        self.primary_crashes += 1

    def _ev_restart_primary(self) -> None:
        self._log("restart primary")
        if self.group is not None:
            self.group.failover_point = None
        self._start_primary()

    def _ev_crash_secondary(self) -> None:
        assert self.secondary is not None
        self._log("CRASH secondary")
        first_fault = not self.faulted
        if self.group is not None:
            self.group.failover_point = None
        self._disconnect("secondary crashed")
        self.secondary = None
        self.sdisk.crash(self.rng)
        if self.group is not None and first_fault:
            self.group.check_crash(self)  # invariant 14 at the group's durable point
        files = self.meta.files
        self.meta.crash(self.rng)
        damage = self.rng.random()
        if damage < 0.2:
            position = files.damage(self.rng, JOURNAL)
            if position is not None:
                self.metadata_damages += 1
                self._log(f"DAMAGE: byte {position} of {len(files.read(JOURNAL))} of the journal flipped")
        elif damage < 0.3 and files.exists(JOURNAL):
            self.metadata_damages += 1
            files.unlink(JOURNAL)
            self._log("DAMAGE: the journal deleted")
        elif damage < 0.4 and files.exists(UNDO):
            position = files.damage(self.rng, UNDO)
            if position is not None:
                self.metadata_damages += 1
                self._log(f"DAMAGE: byte {position} of the undo log flipped")
        self.faulted = True

    def _may_restart_secondary(self) -> bool:
        # An old primary coming back steps down only once it reaches the new primary (it would
        # otherwise serve its own, older epoch: the operator's fencing is not modelled here).
        site = self.roles["secondary"]
        return self.meta_roles[site] == "secondary" or (self.primary is not None and not self.cut)

    def _ev_restart_secondary(self) -> None:
        site = self.roles["secondary"]
        if self.meta_roles[site] == "primary":
            self._meet_old_primary(site)
            return
        self._log("restart secondary")
        meta = self.meta
        try:
            journal, doubt = meta.open_record()
            if doubt is not None:  # transitions.open_record: widen durably, then start anew
                self._log(f"secondary {site}: record journal {doubt}: widened")
                self._widen(site)
            meta.start(journal)
            self._roll_back_if_needed(site)
        except (OSError, StorageError) as exc:  # a full disk: the daemon exits, to be started again
            self._log(f"secondary {site} failed to start: {exc}")
            meta.stop(forget_undo=False)
            return
        durable = journal.replayed.state
        self._start_secondary(RecordState(set(durable.extents), dict(durable.ranges), durable.resync))

    def _widen(self, site: str) -> None:
        """The secondary's metadata is in doubt: the next pass compares (here: copies) every
        extent. If it is the old primary a failback is copying back to, that pass may now
        rightly move every extent (invariant 6; doubt widens, issue 12)."""
        self.widened[site] = True
        if self.failback is not None and self.failback["site"] == site:
            self.failback["set"] = set(range(self.extent_count))

    def _roll_back_if_needed(self, site: str) -> None:
        """An unfinished resync is rolled back from the real undo log (SimMeta); a damaged log
        widens. Sync mode's promises on the restored extents are taken back with them."""
        result, wrong = self.metas[site].roll_back_if_needed(self.sdisk, self.widened[site])
        if result is None:
            return
        per_extent = self.extent_size // SECTOR
        self.promise_exempt[site].update(sector for e in result.restored
                                         for sector in range(e * per_extent, (e + 1) * per_extent))
        if result.damage is not None:
            self._log(f"secondary {site}: undo log damaged ({result.damage}): widened")
            self._widen(site)
            return
        self._log(f"secondary {site}: unfinished resync rolled back, {sorted(result.restored)} restored")
        if wrong:
            self._fail(f"undo log: extents {wrong} were overwritten during the resync, but the "
                       f"rollback did not restore their content from before the pass")

    def _ev_promote(self) -> None:
        """Failover (claim 7): the secondary becomes primary of a new epoch; its durable record
        is the failback set and becomes its out-of-sync set."""
        s = self.secondary
        assert s is not None and self.primary is None
        while s.commits or s.syncs:  # what promote's drain does: commit, then flush
            if s.commits:
                self._ev_journal_commit()
            if s.syncs:
                self._ev_data_sync()
            self._settle()
        self.sdisk.flush()
        if self.group is not None:
            self.group.check_promoted(self)  # invariant 14 after a failover
        site, old = self.roles["secondary"], self.roles["primary"]
        if not self.meta.consistent:
            try:  # promote a consistent, older copy, not a mix (SecondarySite._promote_now)
                self._roll_back_if_needed(site)
            except StorageError as exc:
                self._log(f"promote refused: cannot roll back the unfinished resync: {exc}")
                return
        state = self.meta.durable_record()
        everything = self.widened[site] or state is None
        failback = set(range(self.extent_count)) if everything else set(self.meta.stale)
        if state is not None:
            failback |= failback_set(state, self.extent_size)  # what transitions.promote stores
        self.promotions += 1
        self.cut_off_acks[site] = 0  # a new primary: nothing acknowledged yet
        self.histories[site] = (*self.histories[site], 1000 + self.promotions)
        self.generations[site] = (*self.generations[site], 1000 + self.promotions)
        self.meta_roles[site] = "primary"
        self.widened[site] = False
        self.meta.consistent, self.meta.stale = True, set()
        self.meta.stop()
        self.oos_stores[site] = set(failback)
        self.oos_all[site] = everything
        self.roles = {"primary": site, "secondary": old}
        self.secondary = None
        self.faulted = True
        self._log(f"PROMOTE {site} to epoch {len(self.histories[site])}, failback set {sorted(failback)}")
        if self.mode is Mode.SYNC:
            self._check_promised(self.pdisk.durable, f"promoted site {site}", self.promise_exempt[site])
        # What a rollback took back here is lost with this promotion: the failback overwrites
        # the old primary's newer copy (a known gap of sync mode, design.md §13).
        for sector in self.promise_exempt[site]:
            self.sector_promised.pop(sector, None)
            self.sector_acked.pop(sector, None)  # nor may a later FLUSH here promise it again
        self.promise_exempt[site] = set()
        self._start_primary()
        self.failback = {"site": old, "set": set(failback), "written": set(), "old_oos": set(),
                         "sent": set()}

    def _ev_switchover(self) -> None:
        """Planned switchover: the primary stops taking writes, drains until the secondary is in
        sync, steps down (same epoch); then the other site is promoted. Nothing may be lost."""
        p = self.primary
        assert p is not None
        self._log("SWITCHOVER: demote the primary")
        for _ in range(20000):
            stats = p.core.statistics()
            s = self.secondary
            # In sync, and what is on the wire has arrived (a RESYNC_DONE may still be in flight:
            # the secondary is consistent, and keeps its image at promote, only once it lands).
            if (stats.in_sync and not self.host_ops and not p.flushes and not self.p2s and not self.s2p
                    and s is not None and not s.commits and not s.syncs):
                break
            events = [e for e, ready in ((self._ev_deliver_p2s, self.p2s), (self._ev_deliver_s2p, self.s2p),
                                         (self._ev_primary_flush, p.flushes),
                                         (self._ev_oos_persist, p.oos_persists),
                                         (self._ev_resume, p.resume_due)) if ready]
            if s is not None and s.commits:
                events.append(self._ev_journal_commit)
            if s is not None and s.syncs:
                events.append(self._ev_data_sync)
            if s is not None and self._checksums_due(s):
                events.append(self._ev_checksums)
            if self.conn == 0 or s is None:
                return  # the link or the secondary failed meanwhile: demote refuses
            if not events and p.core.verify_marked():
                return  # a verify marked extents that only a reconnect copies: demote times out
            (self.rng.choice(events) if events else self._ev_tick)()
            self._settle()
            self._check(0)
        else:
            self._fail("switchover: the secondary never caught up")
        self.pdisk.flush()
        old = self.roles["primary"]
        self._disconnect("demoted")
        self.primary = None
        self.metas[old].fresh()
        self.oos_stores[old] = set()
        self.oos_all[old] = False
        self.meta_roles[old] = "secondary"
        self.sector_acked = {}
        self._ev_promote()
        self.failback = None  # nothing to fail back: the old primary is already a secondary
        self._ev_restart_secondary()
        if self.pdisk.durable != self.sdisk.durable:
            self._fail("switchover lost data: the promoted site differs from the demoted one")

    def _meet_old_primary(self, site: str) -> None:
        """The old primary restarts as a primary and dials the new one: the two real cores meet
        through the real policy (``screen_peer_primary``). A DEMOTE is a failback, which must
        not overwrite what the old primary acknowledged while cut off (invariant 9); a split
        brain must be reported by both, and is resolved here by ``resolve --discard-local`` on
        the old primary, which then steps down the same way (the operator chose it)."""
        p = self.primary
        assert p is not None
        new = self.roles["primary"]
        config = replace(p.core.config, history=self.histories[site], generations=self.generations[site])
        old = PrimaryCore(config, read=self.disks[site].read)
        old.connected()
        (hello,) = [wire.FrameDecoder().feed(wire.encode_frame(action.message))[0]
                    for action in old.actions()
                    if isinstance(action, pcore.Send) and isinstance(action.message, wire.Hello)]
        answer = screen_peer_primary(hello, VOLUME_ID, p.core.lineage, self.cfg.faults)
        self._log(f"old primary {site} meets primary {new}: {answer.meeting}")
        if answer.reply is not None:
            old.receive(answer.reply)
        if answer.meeting is Meeting.SPLIT_BRAIN:
            p.core.split_brain_detected(answer.detail)
            if not (old.statistics().split_brain and p.core.statistics().split_brain):
                self._fail("split brain: not reported by both sites")
            self.split_brains += 1
            self._log(f"SPLIT BRAIN: resolve --discard-local on {site}, discarding "
                      f"{self.cut_off_acks[site]} writes it acknowledged while cut off")
            self.cut_off_acks[site] = 0  # the operator chose to discard them
            self.discarding[site] = True
        elif answer.meeting is Meeting.DEMOTE_PEER:
            if not any(isinstance(action, pcore.BecomeSecondary) for action in old.actions()):
                self._fail(f"old primary {site} did not step down on DEMOTE")
            if self.cut_off_acks[site]:
                self._fail(f"invariant 9: the failback silently overwrites {self.cut_off_acks[site]} "
                           f"writes the old primary {site} acknowledged while cut off")
        else:
            self._fail(f"old primary {site} met primary {new} as {answer.meeting}")
        self._step_down_old_primary(site)

    def _ev_promote_cut_off(self) -> None:
        """``promote --force`` while the primary is alive but cut off (the split-brain
        schedule): its hosts fail over, so the old primary finishes what it has in flight and
        stops, its writes since the cut on its disk; the promoted site then takes writes."""
        p = self.primary
        assert p is not None and self.cut and self.conn == 0
        self._log("PROMOTE --force while the primary is cut off; the old primary stops serving")
        for _ in range(10000):
            events = [event for event, ready in ((self._ev_primary_flush, p.flushes),
                                                 (self._ev_oos_persist, p.oos_persists),
                                                 (self._ev_resume, p.resume_due)) if ready]
            if not events:
                break
            self.rng.choice(events)()
            self._settle()
        self.pdisk.flush()
        self.primary = None
        self.host_ops.clear()  # what it had not answered fails; the host retries on the new one
        self._flush_snapshots.clear()
        self._ev_promote()

    def _step_down_old_primary(self, site: str) -> None:
        """The old primary hands over its out-of-sync set and steps down (DEMOTE, or resolve
        --discard-local after a split brain), adopting the new primary's lineage; its record
        starts empty."""
        assert self.primary is not None
        new = self.roles["primary"]
        if self.metas[site].files.full is not None:
            self._log(f"old primary {site} cannot step down yet: its meta disk is full")
            return
        # It starts as a primary first (a lost store widens, HELLO says "everything").
        restored = self._restored_oos(site)
        old_oos = set(restored.extents)
        while self.primary.oos_persists:  # the real site persists synchronously: no persist in flight
            self._ev_oos_persist()
            self._settle()
        self.primary.core.absorb_out_of_sync(old_oos, restored.everything)
        self.oos_stores[new] = set(self.primary.core.out_of_sync)
        self.oos_all[new] = self.primary.core.full_resync_pending
        if restored.everything:
            old_oos = set(range(self.extent_count))
        meta = self.metas[site]
        meta.fresh()
        meta.start(RecordJournal.open(JOURNAL, meta.files, self.cfg.faults))
        self.oos_stores[site] = set()
        self.oos_all[site] = False
        self.meta_roles[site] = "secondary"
        self.histories[site] = self.histories[new]  # its generations follow with the failback
        if self.failback is not None and self.failback["site"] == site:
            self.failback["old_oos"] = old_oos
        self._log(f"old primary {site} steps down (its out-of-sync set: {sorted(old_oos)})")
        self._start_secondary(RecordState())

    # -- carrying out actions ---------------------------------------------------------------------

    def _settle(self) -> None:
        for _ in range(10000):
            progressed = False
            if self.primary is not None:
                progressed = self.primary.driver()
            if self.secondary is not None:
                s = self.secondary
                if s.core.needs_journal_sync() and s.commits.may_start(s.core.journal_target()):
                    s.commits.start(s.core.journal_target())
                progressed = s.driver() or progressed
            if not progressed and self._closing:
                self._close_secondary_link()
                progressed = True
            if not progressed:
                return
        raise SimFailure("actions never settled (livelock)", self.seed, self.schedule)

    def _close_secondary_link(self) -> None:
        """The secondary closed its connection after a storage failure. What it sent before
        may or may not reach the primary first (a TCP close after the flush; or the path dies)."""
        conn, self._closing = self._closing, 0
        if conn != self.conn:
            return
        for _ in range(0 if self.stalled_at is not None else self.rng.randrange(len(self.s2p) + 1)):
            if conn != self.conn:
                return  # the primary dropped it already (STORAGE_FAILED)
            self._ev_deliver_s2p()
            self._settle()
        self._disconnect("the secondary closed the link")

    def _acked(self, op: _HostOp) -> None:
        if self.group is not None:
            self.group.acked(op.op_id)
        # Only what ran start to finish on one unbroken connection carries sync mode's promise;
        # a write that lived through a disconnect was finished locally ("continue").
        connected = op.conn != 0 and op.conn == self.conn
        if op.kind == "flush":
            snapshot = self._flush_snapshots.pop(op.op_id, {})
            if connected:
                self._promise(snapshot.items())
            return
        version = self._op_version.pop(op.op_id)
        p = self.primary
        if op.conn == 0 and p is not None and p.core.link is pcore.LinkState.DISCONNECTED:
            self.cut_off_acks[self.roles["primary"]] += 1  # invariant 9: taken and answered cut off
        if not connected:
            return  # acked while cut off ("continue"): the secondary need not have it
        sectors = range(op.offset // SECTOR, (op.offset + op.length) // SECTOR)
        for sector in sectors:
            self.sector_acked[sector] = max(self.sector_acked.get(sector, 0), version)
        if op.fua:
            self._promise((sector, version) for sector in sectors)

    def _promise(self, items: Iterable[tuple[int, int]]) -> None:
        for sector, version in items:
            self.sector_promised[sector] = max(self.sector_promised.get(sector, 0), version)

    def _save_undo(self, extent: int) -> None:
        """SaveUndo: the extent's current content into the real undo log (durable with the next
        journal commit); the first saved content is what a rollback must bring back."""
        es = self.extent_size
        self.meta.save_undo(extent, self.sdisk.read(extent * es, es))

    def _note_overwrite(self, offset: int, length: int) -> None:
        if self.meta.undo_saved:
            self.meta.note_overwrite(extents_of(offset, length, self.extent_size))

    def _send_hashes(self, request: int, first: int, count: int) -> None:
        """HashExtents: hash the image as it is now (every earlier write carried out)."""
        s = self.secondary
        assert s is not None
        es = self.extent_size
        held = [self.sdisk.read(e * es, es) for e in range(first, first + count)]
        self._verify_secondary[request] = held
        if self.conn and s.conn == self.conn:
            hashes = tuple(xxhash.xxh3_64_intdigest(data) for data in held)
            self.s2p.append((self.conn, wire.encode_frame(wire.Hashes(request, first, hashes))))

    def _note_verify_sent(self, message: wire.Verify) -> None:
        """The primary hashed these extents just now (no action since has changed its image)."""
        es = self.extent_size
        self._verify_primary[message.request] = [self.pdisk.read(e * es, es)
                                                 for e in range(message.first, message.first + message.count)]

    def _check_verify_verdict(self, message: wire.Hashes, local: tuple[int, ...] | None) -> None:
        """A verify's verdict on each extent it compared must be the real difference between
        what the two images held when each side hashed it."""
        p = self.primary
        assert p is not None
        ours = self._verify_primary.pop(message.request)
        theirs = self._verify_secondary.pop(message.request)
        for index, (mine, held) in enumerate(zip(ours, theirs, strict=True)):
            extent = message.first + index
            if local is not None and local[index] < 0:
                continue  # a write to it was in flight: compared again later
            differs = mine != held
            self.verify_differences += differs
            if differs != (extent in p.core.verify_mismatches):
                self._fail(f"verify: extent {extent} {'differs' if differs else 'is equal'} on the "
                           f"two sites, but the verify reported it "
                           f"{'equal' if differs else 'different'}")

    def _track_apply(self, seq: int, offset: int, data: bytes) -> None:
        if self.faulted:
            return
        if seq <= self.applied_seq_seen:
            raise SimFailure(f"secondary applied seq {seq} after {self.applied_seq_seen}", self.seed,
                             self.schedule)
        for missing in range(self.applied_seq_seen + 1, seq):
            if missing in self.sent_history:
                raise SimFailure(f"secondary skipped seq {missing}", self.seed, self.schedule)
        self.applied_seq_seen = seq
        sent = self.sent_history.get(seq)
        if sent is None or sent != (offset, data):
            raise SimFailure(f"secondary applied seq {seq} with data that was not sent", self.seed,
                             self.schedule)
        self.expected[offset : offset + len(data)] = data
        if self.group is not None:
            self.group.note_apply(seq, offset, data)

    # -- invariants -------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        raise SimFailure(message, self.seed, self.schedule)

    def _check(self, step: int) -> None:
        if self.mode is not Mode.ASYNC:
            self._check_coverage()
        if self.secondary is not None:
            n = len(self.secondary.core.state.extents)
            if n > self.capacity:
                self._fail(f"secondary record holds {n} extents, capacity {self.capacity}")
        if self.primary is not None and len(self.primary.core.record) > self.capacity:
            self._fail(f"primary record copy exceeds capacity {self.capacity}")
        if self.displaced_by_stranger:
            self._fail("invariant 7: a HELLO of another volume ended the primary's session")
        if not self.faulted and self.group is not None:
            self.group.check_members(self)  # invariant 14, member by member, before invariant 2
        if not self.faulted and self.sdisk.current != self.expected:
            self._fail("secondary image is not a prefix of the primary's sent history")
        self._check_in_sync()
        self._check_syncs_answered()

    def _crash_after_resync_done(self) -> None:
        """Invariant 16's schedule: the secondary dies right after it read RESYNC_DONE, before
        carrying it out or after (the image flushed and the copy stored as consistent, the clear
        of its set perhaps not yet committed, its answer perhaps not yet on the wire)."""
        self._crash_after_done = False
        if self.secondary is None:
            return
        if self._done_crash_rng.random() < 0.5:
            self._settle()
        self.crashes_after_resync_done += 1
        self._log("secondary dies right after RESYNC_DONE")
        self._ev_crash_secondary()

    def _check_syncs_answered(self) -> None:
        """Invariant 17: a SYNC read, whose writes are all applied, is answered by a DURABLE
        covering it before the secondary falls quiet (no timer needed)."""
        s = self.secondary
        if not self._syncs_owed or s is None or s.conn != self.conn or s.core.failed or not s.core.quiet:
            return
        owed = min(self._syncs_owed)
        if owed <= s.core.applied_seq:
            self._fail(f"invariant 17: the secondary read SYNC({owed}), applied every write it names "
                       f"(applied {s.core.applied_seq}) and has nothing left to do, but no DURABLE "
                       f"answered it (durable {s.core.durable_seq})")

    def _check_in_sync(self) -> None:
        """Invariant 7. With no host write outstanding every write is applied here, and in_sync
        means the secondary has made every seq durable, so the images must be equal."""
        p = self.primary
        if (p is None or self.secondary is None or any(op.kind != "flush" for op in self.host_ops.values())
                or not p.core.statistics().in_sync):
            return
        self._check_in_sync_durable()
        if self.pdisk.current == self.sdisk.current:
            return
        bad = [e for e in range(self.extent_count)
               if self.pdisk.current[e * self.extent_size:(e + 1) * self.extent_size]
               != self.sdisk.current[e * self.extent_size:(e + 1) * self.extent_size]]
        self._fail(f"invariant 8: the primary reports in_sync but the images differ in extents {bad}")

    def _check_in_sync_durable(self) -> None:
        """Invariant 16: in sync means the secondary's durable state is the primary's: a crash
        there now loses nothing, and its restart rolls nothing back."""
        site = self.roles["secondary"]
        if not self.meta.consistent or self.widened[site]:
            self._fail(f"invariant 16: the primary reports in_sync but secondary {site} has not "
                       "durably recorded the end of its resync pass (a restart would roll it back "
                       "or compare everything)")
        if self.sdisk.durable != self.pdisk.current:
            bad = [e for e in range(self.extent_count)
                   if self.pdisk.current[e * self.extent_size:(e + 1) * self.extent_size]
                   != self.sdisk.durable[e * self.extent_size:(e + 1) * self.extent_size]]
            self._fail(f"invariant 16: the primary reports in_sync but the secondary's durable "
                       f"image differs in extents {bad}")

    def _durably_covered(self) -> set[int]:
        everything = set(range(self.extent_count))
        state = self.meta.durable_record()
        if state is None or self.widened[self.roles["secondary"]]:
            return everything  # a restart would trust no record: every extent is compared
        covered = failback_set(state, self.extent_size, self.meta.stale)  # a resync pass's set too
        # Both sites' persisted out-of-sync sets count: an old primary's reaches the new one
        # when it steps down. A site that is a primary on disk trusts no lost store.
        for site in ("A", "B"):
            if self.meta_roles[site] == "primary":
                restored = self._restored_oos(site)
                if restored.everything:
                    return everything
                covered |= restored.extents
            else:
                covered |= self.oos_stores[site] or set()
        return covered

    def _check_coverage(self) -> None:
        if self.pdisk.durable == self.sdisk.durable:
            return
        covered = self._durably_covered()
        es = self.extent_size
        for extent in range(self.extent_count):
            lo, hi = extent * es, (extent + 1) * es
            if extent not in covered and self.pdisk.durable[lo:hi] != self.sdisk.durable[lo:hi]:
                self._fail(f"extent {extent} differs durably between the sites but no durable record, "
                           f"range or out-of-sync entry covers it")

    def _check_failback_bound(self) -> None:
        """Invariant 6: a failback copies at most the failback set, what was written since the
        promotion, and what the old primary reported as out-of-sync."""
        fb = self.failback
        assert fb is not None
        if self.meta_roles[str(fb["site"])] != "secondary":
            return  # the old primary has not come back yet: this pass was something else
        allowed = set(fb["set"]) | set(fb["written"]) | set(fb["old_oos"])  # type: ignore[call-overload]
        sent = set(fb["sent"])  # type: ignore[call-overload]
        if not sent <= allowed:
            self._fail(f"invariant 6: failback copied extents {sorted(sent - allowed)} outside "
                       f"failback set + written since promotion + old out-of-sync")
        self.failback = None

    def _check_sync_durability(self) -> None:
        """Invariant 5: what sync mode promised (FUA, or a completed FLUSH) is durable on both
        sites, so either may serve next."""
        self._check_promised(self.sdisk.durable, "secondary", self.promise_exempt[self.roles["secondary"]])
        self._check_promised(self.pdisk.durable, "primary", self.promise_exempt[self.roles["primary"]])

    def _check_promised(self, image: bytearray, site: str, exempt: set[int]) -> None:
        for sector, version in self.sector_promised.items():
            if sector in exempt:
                continue
            raw = bytes(image[sector * SECTOR : sector * SECTOR + 8])
            have = struct.unpack(">Q", raw)[0]
            later = [v for v in self.sector_versions.get(sector, []) if v >= version]
            if have not in later and not (have == 0 and any(v >= version for v in later)):
                self._fail(f"sync mode: write v{version} to sector {sector}, acknowledged with FUA "
                           f"or a FLUSH, is not durable on the {site} (found v{have})")

    def _finish(self) -> None:
        """Heal everything, restart what is down, drain, and require identical images."""
        self._log("FINISH: heal, free the disks, restart, quiesce")
        if self.stalled_at is not None:
            self._disconnect("stalled")  # given up on; the next connection drains
        self.cut = False
        self._free_disks()
        if self.primary is None:
            self._ev_restart_primary()
        if self.secondary is None:
            self._ev_restart_secondary()
        for round_ in range(20000):
            if self.conn == 0:
                self._ev_connect()
            events = []
            if self.p2s:
                events.append(self._ev_deliver_p2s)
            if self.s2p:
                events.append(self._ev_deliver_s2p)
            p, s = self.primary, self.secondary
            assert p is not None and s is not None
            if p.flushes:
                events.append(self._ev_primary_flush)
            if p.oos_persists:
                events.append(self._ev_oos_persist)
            if p.resume_due:
                events.append(self._ev_resume)
            if s.commits:
                events.append(self._ev_journal_commit)
            if self._checksums_due(s):
                events.append(self._ev_checksums)
            if s.syncs:
                events.append(self._ev_data_sync)
            if not events:
                stats = p.core.statistics()
                if stats.in_sync and not self.host_ops:
                    break
                if p.core.link is pcore.LinkState.CONNECTED and p.core.verify_marked():
                    # A verify without --repair marked extents out of sync: the next connect
                    # copies them, so the operator reconnects (DRBD's way after a verify).
                    self._disconnect("reconnect: a verify marked extents out of sync")
                    continue
                if (p.core.link is pcore.LinkState.CONNECTED and not stats.in_sync
                        and p.core.watermark_timer() is None):
                    # The daemon sleeps until get_timer(): with no deadline it would wait forever.
                    # (Connected, that has the heartbeat too, which would hide the lack until a
                    # heartbeat tick: checked without it.)
                    self._fail("invariant 9: the primary is not in sync, nothing is in flight, and "
                               "get_timer() asks for no timer")
                events.append(self._ev_tick)
            self.rng.choice(events)()
            self._settle()
            self._check(round_)
        else:
            p = self.primary
            detail = p.core.statistics() if p is not None else None
            queue = [(op.seq, list(op.extents), op.oos_wait) for op in p.core._queue] if p else []
            self._fail(f"did not reach in_sync after healing: {detail} queue={queue[:5]} "
                       f"misses={list(p.core._misses)[:5] if p else None} host_ops={len(self.host_ops)}")
        self.pdisk.flush()
        self.sdisk.flush()
        if self.pdisk.durable != self.sdisk.durable:
            bad = [e for e in range(self.extent_count)
                   if self.pdisk.durable[e * self.extent_size:(e + 1) * self.extent_size]
                   != self.sdisk.durable[e * self.extent_size:(e + 1) * self.extent_size]]
            self._fail(f"after quiescence the images differ in extents {bad}")


def _verify_local_hashes(core: PrimaryCore, request: int) -> tuple[int, ...] | None:
    """The primary's own hashes for a VERIFY request still waiting for its HASHES (-1: skipped,
    a write was in flight). Read before the core consumes the reply."""
    return core._verify.local_hashes(request)


def _weighted_choice(rng: random.Random, choices: list[tuple[float, str]]) -> str:
    pick = rng.random() * sum(weight for weight, _ in choices)
    for weight, name in choices:
        pick -= weight
        if pick <= 0:
            return name
    return choices[-1][1]


def _short(message: wire.Message) -> str:
    """A one-line description of a link message, without its payload."""
    if isinstance(message, wire.Write):
        return (f"Write(seq={message.seq} off={message.offset} len={len(message.data)} "
                f"flags={message.flags} budget={message.budget} removals={message.removals})")
    text = repr(message)
    return text if len(text) < 200 else text[:200] + "..."


def run_seed(seed: int, config: SimConfig | None = None) -> World:
    world = World(seed, config)
    world.run()
    return world
