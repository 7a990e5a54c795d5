"""Deliberate bugs the simulator must catch (issue 5's self-check).

Each switch breaks one rule the design depends on. Production code never sets them; the
simulator's self-check tests flip one at a time and expect an invariant checker to fire within
the CI seed count, which shows the checkers can see the failures they exist for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Faults:
    evict_ignores_watermark: bool = False  # primary: evict extents whose writes are not durable
    ack_miss_before_durable: bool = False  # secondary: answer ADDED before the journal commit
    # secondary: a group commit counts as durable every append made before it returned, also
    # those made while its fdatasync ran, so a later miss's ADDED goes before its entry is durable
    added_before_group_commit_durable: bool = False
    # secondary: a journal commit that returns while a later one is in flight tells the core the
    # later one's start mark, so appends made after its own fdatasync started count as durable
    commit_covers_appends_after_its_start: bool = False
    apply_miss_before_ack: bool = False  # primary: write a miss locally before ADDED arrives
    s3fifo_evicts_dirty: bool = False  # record: the s3fifo policy chooses extents still dirty
    adaptive_evicts_dirty: bool = False  # record: the adaptive policy chooses extents still dirty
    streams_evicts_dirty: bool = False  # record: the streams policy (the default) chooses extents still dirty
    # primary: eviction ahead of need (free slots under the low mark, issue 14) takes extents
    # whose latest write is not yet durable on both sites
    evict_ahead_takes_dirty: bool = False
    # secondary: a range the primary reports done leaves the journal's pending ranges at once,
    # though its zeroing here (answered early, issue 14's EARLY_RANGES) is not durable yet
    range_done_before_zero_durable: bool = False
    admit_strangers: bool = False  # secondary: a HELLO of another volume may take the session over
    damage_taken_for_torn_tail: bool = False  # journal replay: cut damage off like a torn append
    missing_metadata_taken_as_empty: bool = False  # a missing journal or out-of-sync store: empty
    local_write_error_ignored: bool = False  # primary: a failed local write counts as done
    secondary_write_error_ignored: bool = False  # secondary: carry on after a failed write
    # primary: count a resync set as durable on the secondary as soon as it is sent, and drop its
    # extents from the out-of-sync set then, instead of at RESYNC_SET_DURABLE (issue 19)
    resync_before_set_durable: bool = False
    # primary: a write while the link is down lands here before its extents are durably
    # out-of-sync (it skips the op state AWAIT_OOS, ordering.py): a crash then loses the mark
    apply_before_out_of_sync_durable: bool = False
    # secondary: a write during a resync pass does not wait for the commit that makes the undo
    # entry of its extent durable, so a crash can lose the old content it overwrote
    undo_not_synced_before_write: bool = False
    # secondary: a resync pass saves an extent's old content at once, before an earlier write to
    # it that still waits for a commit has landed, so a rollback takes that write back too
    undo_saved_before_earlier_write: bool = False
    journal_sync_skipped: bool = False  # record journal: a commit counts appends durable without fdatasync
    verify_ignores_mismatch: bool = False  # primary: verify reports an extent equal when hashes differ
    # verify.py: a mismatch found without --repair is reported but not marked out of sync, so the
    # pair goes on reporting in sync while the copies differ
    verify_mismatch_left_in_sync: bool = False
    # primary: get_timer() says "nothing waits on time" while the secondary has not yet confirmed
    # every write durable, so a daemon sleeping until the deadline never asks it (SYNC) again
    timer_ignores_remote_durable: bool = False
    # epochs.relation: compare epoch histories only, as before issue 13, so a primary that kept
    # taking writes while cut off is told to step down and its writes are overwritten (failback)
    split_brain_as_failback: bool = False
    # liveness.py: a frame from the peer does not postpone the link timeout, so a busy, healthy
    # link is declared dead every timeout_s
    liveness_ignores_frames: bool = False
    # admission.py: a HELLO's consistency-group member sizes are not compared with ours, so a
    # member that differs within its last extent (the unit's size the same) is admitted
    group_member_sizes_unchecked: bool = False
    # admission.py: a HELLO's consistency-group member names are not compared with ours, so two
    # members of one size listed in another order are admitted, each mirrored into the other
    group_member_names_unchecked: bool = False
    # liveness.py: a peer that has gone silent (a half-open connection) is never timed out, so
    # the link stays up in name and nothing more is replicated
    link_timeout_ignored: bool = False
    # resync.py: a full sync's sweep does not wait for the secondary's streamed checksum of an
    # extent: one whose CHECKSUMS chunk has not arrived yet is taken as identical (issue 19)
    resync_compares_before_checksum: bool = False
    # secondary: RESYNC_PROGRESS takes extents out of the journaled resync set at once, before
    # their data is durable here, so a crash, then a resumed pass, skips what it lost (issue 19)
    resume_before_durable: bool = False
    # objects (replication/objects.py): an op on a name not in the record copy goes as a hit,
    # committed and answered before the secondary durably recorded the name (issue 18)
    object_hit_before_record_durable: bool = False
    # objects: an OBJ_ADDED brings back into the copy a name a later op evicted (the secondary
    # removes it again), so the copy claims a coverage the record no longer gives
    object_added_ignores_eviction: bool = False
    # objects: at a link loss an op sent but not yet committed locally is not marked may-differ,
    # so a full compare made before its commit finds the copies equal (async mode)
    object_link_loss_forgets_uncommitted: bool = False
    # objects (replication/object_secondary.py): a miss's reply names the directory's prefix
    # entry but the secondary's record keeps only the exact names, so later first writes under
    # the directory are hits that no durable entry covers
    object_prefix_entry_not_covering: bool = False
    # objects (replication/objects.py): a CompleteMultipartUpload goes as the small op (the
    # secondary assembles it from its parts) although a part may not be there: one written
    # while the link was down, or sent and lost with a link cut, not yet resynced
    object_complete_before_parts_durable: bool = False
    # replication/lease.py: a primary keeps acknowledging writes after its etcd lease could have
    # expired (renewals failing), so a promoted secondary and it both take writes (issue 16)
    ack_after_lease_lost: bool = False
    # replication/lease.py: a secondary whose copy is known to be older than its primary's (a
    # resync into it interrupted, rolled back or still to roll back) promotes itself when the
    # primary's lease expires, so the writes that resync was bringing are lost (found by
    # `make chaos CLUSTER=1`: a secondary stopped right after RESYNC_DONE was sent rolled back)
    lease_promotes_stale_copy: bool = False
    # replication/lease.py: a secondary ignores the ``outdated`` mark in etcd, so when a primary
    # that answered writes without it (the link cut, etcd fine) dies, it promotes itself and
    # those acknowledged writes are lost (DRBD's "outdate-peer"; sim lease invariant 4)
    promote_outdated_copy: bool = False
    # storage/group_backend.py: a consistency group's flush makes only the member the latest
    # write went to durable, as if each member were its own volume with its own write order: a
    # FLUSH (or the secondary's DURABLE watermark) no longer covers the other members' writes, so
    # a crash leaves one member behind a point the group's order had passed (issue 16, part 2)
    group_orders_volumes_independently: bool = False
    # replication/routing.py: a daemon's link listener hands a connection to the first volume
    # taking connections, not to the one its ROUTE names, so a new secondary of one volume
    # adopts another volume's identity and data (issue 16, many volumes per daemon)
    route_ignores_name: bool = False
    # replication/data_identity.py: a start takes any data file as the one its metadata
    # describes, so a swapped or replaced file is resynced only where the record says and the
    # secondary reports in sync while its copy differs
    data_identity_ignored: bool = False
    # replication/primary.py write_hits (issue 15): a group of host writes carries a write that is
    # not a hit now (a miss, or one behind an in-flight miss on its extents) in its WRITES frame
    # as a hit, sent and applied at once, instead of ending the run there
    batch_carries_non_hit: bool = False
    # replication/write_runs.py: held adjacent WRITEs count as applied when they join the run,
    # and the run is written at the end of the receive pass, behind the messages after it: a
    # later write to the same blocks lands first and the older data overwrites it (issue 15)
    run_counted_applied_before_written: bool = False
    # replication/write_runs.py: a WRITE joins the held run whether or not it starts where the
    # run ends, so the one pwritev puts its data at the wrong offset (issue 15)
    run_joins_non_adjacent_write: bool = False
    # replication/resync.py: the primary ends a resync pass (in sync, "everything" cleared) when
    # it sends RESYNC_DONE, not at the secondary's RESYNC_DONE_ACK, so it reports in sync while
    # the secondary may still roll the pass back at a restart (issue 25)
    in_sync_before_resync_done_durable: bool = False
    # replication/secondary.py: a SYNC naming writes not yet applied here is clamped to what is
    # applied and the rest is forgotten: no DURABLE answers it once those writes land (issue 25)
    sync_beyond_applied_dropped: bool = False
    # replication/generations.py: a RESYNC_DONE while a data generation is being stored (its
    # ``outdated`` mark written, its store failed and retried) claims the lineage anyway: the
    # mark is cleared, the generation's writes are answered alone with no mark, and a secondary
    # that lacks them promotes itself (sim lease invariants 5 and 4)
    generation_claimed_while_stored: bool = False


NO_FAULTS = Faults()
