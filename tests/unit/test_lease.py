"""The lease core (replication/lease.py): exact deadlines with time passed in, no sleeping."""

from __future__ import annotations

import pytest

from foresync.cluster_config import parse, parse_duration
from foresync.errors import ConfigError
from foresync.faults import NO_FAULTS, Faults
from foresync.replication.lease import (
    Action,
    LeaseCore,
    Local,
    Outdated,
    Record,
    Seen,
    behind_reason,
    fencing_margin,
)

A1 = Record("a", 1, 111)


def primary(ttl: float = 5.0, faults: Faults = NO_FAULTS) -> LeaseCore:
    core = LeaseCore("a", ttl, faults=faults)
    core.local_changed(Local("primary", 1, 111))
    return core


def secondary(refusal: str = "", epoch_id: int = 111) -> LeaseCore:
    core = LeaseCore("b", 5.0)
    core.local_changed(Local("secondary", 1, epoch_id, refusal))
    return core


def test_the_margin_is_a_fifth_of_the_ttl_and_at_least_a_second() -> None:
    assert fencing_margin(5) == 1.0
    assert fencing_margin(2) == 1.0
    assert fencing_margin(30) == 6.0


def test_a_primary_acks_until_ttl_minus_margin_after_the_last_renewal_was_sent() -> None:
    core = primary()
    assert not core.may_ack(100.0), "no lease yet: fenced"
    core.observed(Seen(None, None))
    assert core.next_action(100.0) is Action.ACQUIRE, "the cluster's first start registers us"
    core.granted(100.0, 5.0)
    assert core.may_ack(103.999)
    assert not core.may_ack(104.0), "5 s ttl - 1 s margin after the grant was sent"
    assert core.next_action(101.0) is Action.NONE
    assert core.next_action(101.667) is Action.RENEW  # every ttl / 3
    core.granted(101.7, 5.0)
    assert core.may_ack(105.69) and not core.may_ack(105.7)


def test_failed_renewals_do_not_extend_the_deadline_and_are_paced() -> None:
    core = primary()
    core.granted(0.0, 5.0)
    core.renew_failed(2.0, "timeout")
    assert core.next_action(2.1) is Action.NONE, "the next try waits poll_s"
    assert core.next_action(2.5) is Action.RENEW
    assert core.may_ack(3.9) and not core.may_ack(4.0)
    assert core.statistics(4.5).fenced_for_s == pytest.approx(0.5)


def test_a_lease_etcd_reports_gone_fences_at_once() -> None:
    core = primary()
    core.granted(0.0, 5.0)
    core.lost("expired")
    assert not core.may_ack(0.1)


def test_a_later_epoch_in_etcd_fences_a_holder_and_it_never_reacquires() -> None:
    core = primary()
    core.granted(0.0, 5.0)
    core.observed(Seen(Record("b", 2, 222), Record("b", 2, 222)))
    assert not core.may_ack(0.1)
    core.observed(Seen(Record("b", 2, 222), None))
    assert core.next_action(1.0) is Action.NONE
    assert "later epoch 2" in core.reason


def test_a_restarted_primary_retakes_its_own_epochs_lease() -> None:
    core = primary()
    core.observed(Seen(A1, A1))  # its previous run's key, still on the old lease
    assert core.next_action(0.0) is Action.ACQUIRE


def test_a_primary_does_not_take_a_lease_another_site_holds() -> None:
    core = primary()
    core.observed(Seen(A1, Record("b", 1, 111)))
    assert core.next_action(0.0) is Action.NONE


def test_a_secondary_promotes_only_when_the_key_is_gone() -> None:
    core = secondary()
    core.observed(Seen(A1, A1, 3.0))
    assert core.next_action(0.0) is Action.NONE and core.reason == ""
    core.observed(Seen(A1, None))
    assert core.next_action(0.0) is Action.PROMOTE


def test_an_inconsistent_secondary_never_promotes_and_says_why() -> None:
    core = secondary(refusal="this copy is inconsistent")
    core.observed(Seen(A1, None))
    assert core.next_action(0.0) is Action.NONE
    assert "may not be promoted: this copy is inconsistent" in core.reason


def test_a_secondary_behind_etcds_latest_epoch_never_promotes() -> None:
    core = secondary(epoch_id=99)
    core.observed(Seen(A1, None))
    assert core.next_action(0.0) is Action.NONE
    assert "may lack that primary's writes" in core.reason


@pytest.mark.parametrize("local", [Local("secondary", 1, 111, "", stale_extents=256),
                                   Local("secondary", 1, 111, "", rollback_pending=True)])
def test_a_copy_known_older_than_its_primarys_never_promotes_itself(local: Local) -> None:
    """A resync into it was interrupted (rolled back, or to roll back): the writes it was
    bringing are on the primary only. Found by `make chaos CLUSTER=1`: a secondary stopped right
    after its primary sent RESYNC_DONE rolled back at restart and promoted itself."""
    core = LeaseCore("b", 5.0)
    core.local_changed(local)
    core.observed(Seen(A1, None))
    assert core.next_action(0.0) is Action.NONE
    assert "does not promote itself" in core.reason and "acknowledged" in core.reason
    buggy = LeaseCore("b", 5.0, faults=Faults(lease_promotes_stale_copy=True))
    buggy.local_changed(local)
    buggy.observed(Seen(A1, None))
    assert buggy.next_action(0.0) is Action.PROMOTE


def test_behind_reason_takes_the_two_facts() -> None:
    assert behind_reason(0, False) == ""
    assert "256 of its extents" in behind_reason(256, False)
    assert "roll back" in behind_reason(0, True)
    assert behind_reason(256, True, Faults(lease_promotes_stale_copy=True)) == ""


def test_a_copy_the_primary_outdated_never_promotes_itself() -> None:
    """The link was cut with etcd fine: the primary marked this copy outdated (generation 0x77)
    before it answered writes without it, then died. Promoting would lose those writes."""
    core = LeaseCore("b", 5.0)
    core.local_changed(Local("secondary", 1, 111, generations=(111,)))
    core.observed(Seen(A1, None, outdated=Outdated("a", 1, 111, 0x77)))
    assert core.next_action(0.0) is Action.NONE
    assert "this copy is outdated" in core.reason and "0x77" in core.reason
    assert "delete the outdated key" in core.reason
    buggy = LeaseCore("b", 5.0, faults=Faults(promote_outdated_copy=True))
    buggy.local_changed(Local("secondary", 1, 111, generations=(111,)))
    buggy.observed(Seen(A1, None, outdated=Outdated("a", 1, 111, 0x77)))
    assert buggy.next_action(0.0) is Action.PROMOTE


@pytest.mark.parametrize("mark", [None, Outdated("a", 1, 111, 0x77), Outdated("z", 0, 5, 0x99)])
def test_a_copy_holding_the_marked_generation_or_an_old_epochs_mark_promotes(
        mark: Outdated | None) -> None:
    """The resync after the cut brought generation 0x77 (RESYNC_DONE: the secondary claims it),
    or the mark is of another epoch than etcd's latest: not outdated."""
    core = LeaseCore("b", 5.0)
    core.local_changed(Local("secondary", 1, 111, generations=(111, 0x77)))
    core.observed(Seen(A1, None, outdated=mark))
    assert core.next_action(0.0) is Action.PROMOTE


def test_the_primary_marks_its_own_epoch_and_clears_once_the_secondary_holds_its_data() -> None:
    core = primary()
    assert core.outdate_mark(0x77) is None, "etcd not read yet: not known to be ours"
    core.observed(Seen(Record("b", 2, 222), None))
    assert core.outdate_mark(0x77) is None, "a newer primary exists: no mark, no answer"
    core.observed(Seen(A1, None))
    assert core.outdate_mark(0x77) == Outdated("a", 1, 111, 0x77)
    core.granted(0.0, 5.0)
    core.observed(Seen(A1, A1, 4.0, Outdated("a", 1, 111, 0x77)))
    assert core.next_action(0.1) is Action.NONE, "the secondary may still lack generation 0x77"
    core.local_changed(Local("primary", 1, 111, generations=(111, 0x77), peer_holds_ours=True))
    assert core.next_action(0.1) is Action.CLEAR_OUTDATED
    assert core.next_action(2.0) is Action.RENEW, "a renewal due goes first"
    core.observed(Seen(A1, A1, 4.0))
    assert core.next_action(0.2) is Action.NONE, "nothing left to clear"


def test_nothing_registered_nothing_promoted() -> None:
    core = secondary()
    core.observed(Seen(None, None))
    assert core.next_action(0.0) is Action.NONE


def test_a_demoted_site_gives_its_lease_back() -> None:
    core = secondary()
    core.granted(0.0, 5.0)
    assert core.next_action(0.1) is Action.RELEASE


def test_the_deliberate_bug_acks_after_the_lease_is_lost() -> None:
    core = primary(faults=Faults(ack_after_lease_lost=True))
    core.granted(0.0, 5.0)
    core.lost("expired")
    assert core.may_ack(100.0)


def _optional(table: dict[str, object], section: str, key: str) -> str | None:
    value = table.get(key)
    return None if value is None else str(value)


def test_cluster_config_defaults_and_errors(tmp_path: object) -> None:
    cfg = parse({"etcd": ["http://127.0.0.1:2379", "http://127.0.0.1:2380"]}, "a", _optional)
    assert cfg.endpoints == (("127.0.0.1", 2379), ("127.0.0.1", 2380))
    assert cfg.lease_ttl_s == 5.0 and cfg.site == "a" and not cfg.tls
    assert cfg.prefix("vol0") == "/foresync/foresync/volumes/vol0/"
    assert parse_duration("500ms", "x") == 0.5
    for table, message in (({}, "etcd is required"),
                           ({"etcd": ["ftp://x"]}, "not a URL"),
                           ({"etcd": ["https://x:1"]}, "ca_file"),
                           ({"etcd": ["http://x:1"], "lease_ttl": "1s"}, "at least 2"),
                           ({"etcd": ["http://x:1"], "user": "u"}, "password_file")):
        with pytest.raises(ConfigError, match=message):
            parse(table, "a", _optional)
