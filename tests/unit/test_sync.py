"""NodeSync: reliable, windowed, resent delivery of desired state to one node."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudcore.sync import Key, NodeSync, Outgoing, Target

A: Key = ("pods", "default", "a")
B: Key = ("pods", "default", "b")
C: Key = ("pods", "default", "c")
D: Key = ("secrets", "default", "d")
E: Key = ("configmaps", "default", "e")


def target(uid: str, version: int, sync_version: int | None = None) -> Target:
    return Target(uid, version if sync_version is None else sync_version, version,
                  {"metadata": {"uid": uid, "resourceVersion": str(version)}})


def lookup(desired: dict[Key, Target]) -> Callable[[Key], Target | None]:
    return desired.get


def only(messages: list[Outgoing]) -> Outgoing:
    assert len(messages) == 1, messages
    return messages[0]


# ------------------------------------------------------------ reconcile


def test_reconcile_queues_exactly_the_differences() -> None:
    acked = {
        A: ("u-a", 3),  # up to date
        B: ("u-b", 1),  # outdated: must see version 2
        C: ("u-c-old", 5),  # recreated with another uid
        D: ("u-d", 7),  # no longer desired: delete
        ("pods", "default", "status-only"): ("u-s", 4),
    }
    desired = {
        A: target("u-a", 3),
        B: target("u-b", 2),
        C: target("u-c-new", 5),
        E: target("u-e", 1),  # missing on the node
        # A status-only change: newer resourceVersion, but nothing the node must see.
        ("pods", "default", "status-only"): target("u-s", 9, sync_version=4),
    }
    sync = NodeSync("edge", acked)
    sync.reconcile(desired)
    assert set(sync.queue) == {B, C, D, E}
    assert sync.backlog == 4
    assert sync.inflight == {}


def test_reconcile_of_matching_state_queues_nothing() -> None:
    sync = NodeSync("edge", {A: ("u", 2)})
    sync.reconcile({A: target("u", 2)})
    assert not sync.queue
    assert sync.backlog == 0


def test_acked_version_newer_than_sync_version_is_enough() -> None:
    sync = NodeSync("edge", {A: ("u", 8)})
    sync.reconcile({A: target("u", 8, sync_version=5)})
    assert not sync.queue


# ------------------------------------------------------------ take


def test_take_respects_the_window() -> None:
    desired = {k: target(f"u{i}", i + 1) for i, k in enumerate([A, B, C, D, E])}
    sync = NodeSync("edge", {}, window=2)
    sync.reconcile(desired)
    first = sync.take(0.0, lookup(desired))
    assert [m.key for m in first] == [D, E]  # what pods use goes first, then queue order
    assert sync.take(0.0, lookup(desired)) == []  # window full
    assert len(sync.inflight) == 2
    sync.on_ack(first[0].msg_id)
    assert [m.key for m in sync.take(1.0, lookup(desired))] == [A]
    assert len(sync.inflight) == 2
    assert list(sync.queue) == [B, C]


def test_device_models_go_before_the_devices_that_use_them() -> None:
    device: Key = ("devices", "default", "thermo")
    model: Key = ("devicemodels", "default", "thermometer")
    sync = NodeSync("edge", {})
    sync.reconcile({device: target("u-d", 2), model: target("u-m", 1)})
    assert list(sync.queue) == [model, device]


def test_take_builds_the_message_from_the_current_target() -> None:
    desired = {A: target("u-a", 4)}
    sync = NodeSync("edge", {})
    sync.mark(A)
    message = only(sync.take(12.5, lookup(desired)))
    assert (message.key, message.uid, message.resource_version) == (A, "u-a", 4)
    assert message.obj == desired[A].obj
    assert message.sent_at == 12.5
    assert message.attempts == 1
    assert sync.inflight == {message.msg_id: message}


def test_take_builds_a_delete_when_the_target_is_gone() -> None:
    sync = NodeSync("edge", {D: ("u-d", 7)})
    sync.reconcile({})
    message = only(sync.take(0.0, lambda key: None))
    assert (message.key, message.uid, message.resource_version, message.obj) == (
        D, "u-d", None, None)


def test_take_skips_a_key_already_in_flight_with_the_same_target() -> None:
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {})
    sync.mark(A)
    first = only(sync.take(0.0, lookup(desired)))
    sync.mark(A)
    assert sync.take(1.0, lookup(desired)) == []
    assert list(sync.inflight) == [first.msg_id]
    assert not sync.queue


def test_take_skips_a_key_that_is_no_longer_needed() -> None:
    desired = {A: target("u", 3)}
    sync = NodeSync("edge", {A: ("u", 3)})
    sync.mark(A)
    assert sync.take(0.0, lookup(desired)) == []
    sync.mark(B)  # neither held nor desired: no delete to send
    assert sync.take(0.0, lookup(desired)) == []
    assert sync.inflight == {}


def test_marking_twice_queues_one_message_with_the_newest_version() -> None:
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {})
    sync.mark(A)
    desired[A] = target("u", 2)
    sync.mark(A)
    assert len(sync.queue) == 1
    message = only(sync.take(0.0, lookup(desired)))
    assert message.resource_version == 2


def test_newer_version_is_sent_while_an_older_one_is_in_flight() -> None:
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {})
    sync.mark(A)
    old = only(sync.take(0.0, lookup(desired)))
    desired[A] = target("u", 2)
    sync.mark(A)
    new = only(sync.take(1.0, lookup(desired)))
    assert new.msg_id != old.msg_id
    assert new.resource_version == 2
    assert sync.latest_for[A] == new.msg_id


# ------------------------------------------------------------ acks


def test_on_ack_records_what_the_node_holds() -> None:
    desired = {A: target("u", 5)}
    sync = NodeSync("edge", {})
    sync.mark(A)
    message = only(sync.take(0.0, lookup(desired)))
    assert sync.on_ack(message.msg_id) is message
    assert sync.acked == {A: ("u", 5)}
    assert sync.inflight == {}
    assert sync.backlog == 0


def test_on_ack_of_a_delete_forgets_the_key() -> None:
    acked = {D: ("u-d", 7), A: ("u-a", 1)}
    sync = NodeSync("edge", acked)
    sync.reconcile({A: target("u-a", 1)})
    message = only(sync.take(0.0, lambda key: None if key == D else target("u-a", 1)))
    sync.on_ack(message.msg_id)
    assert sync.acked == {A: ("u-a", 1)}
    assert acked is sync.acked  # the caller's dict is the one updated


def test_on_ack_ignores_unknown_and_repeated_ids() -> None:
    desired = {A: target("u", 5)}
    sync = NodeSync("edge", {B: ("u-b", 1)})
    sync.mark(A)
    message = only(sync.take(0.0, lookup(desired)))
    assert sync.on_ack("no-such-id") is None
    assert sync.acked == {B: ("u-b", 1)}
    assert list(sync.inflight) == [message.msg_id]
    assert sync.on_ack(message.msg_id) is message
    assert sync.on_ack(message.msg_id) is None
    assert sync.acked == {B: ("u-b", 1), A: ("u", 5)}


def test_ack_of_older_message_keeps_the_newer_one_in_flight() -> None:
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {}, resend_after=5.0)
    sync.mark(A)
    old = only(sync.take(0.0, lookup(desired)))
    desired[A] = target("u", 2)
    sync.mark(A)
    new = only(sync.take(1.0, lookup(desired)))

    sync.on_ack(old.msg_id)
    assert sync.acked == {A: ("u", 1)}
    assert new.msg_id in sync.inflight
    assert sync.latest_for[A] == new.msg_id
    # It is still resent when overdue, and its own ack lands.
    assert [m.msg_id for m in sync.due(6.0)] == [new.msg_id]
    sync.on_ack(new.msg_id)
    assert sync.acked == {A: ("u", 2)}
    assert sync.inflight == {}


def test_late_ack_of_an_older_version_does_not_lower_acked() -> None:
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {})
    sync.mark(A)
    old = only(sync.take(0.0, lookup(desired)))
    desired[A] = target("u", 2)
    sync.mark(A)
    new = only(sync.take(0.0, lookup(desired)))
    sync.on_ack(new.msg_id)
    sync.on_ack(old.msg_id)
    assert sync.acked == {A: ("u", 2)}


# ------------------------------------------------------------ resends


def test_due_resends_with_capped_exponential_backoff() -> None:
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {}, resend_after=5.0, max_backoff=12.0)
    sync.mark(A)
    message = only(sync.take(100.0, lookup(desired)))

    assert sync.due(104.9) == []
    assert only(sync.due(105.0)) is message  # 5 * 2**0
    assert (message.attempts, message.sent_at) == (2, 105.0)
    assert sync.due(114.9) == []
    assert only(sync.due(115.0)) is message  # 5 * 2**1
    assert (message.attempts, message.sent_at) == (3, 115.0)
    assert sync.due(126.9) == []  # 5 * 2**2 = 20, capped at 12
    assert only(sync.due(127.0)) is message
    assert sync.due(138.9) == []
    assert only(sync.due(139.0)) is message  # still capped
    assert message.attempts == 5
    assert list(sync.inflight) == [message.msg_id]  # resent as it is


def test_due_drops_superseded_messages() -> None:
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {}, resend_after=5.0)
    sync.mark(A)
    old = only(sync.take(0.0, lookup(desired)))
    desired[A] = target("u", 2)
    sync.mark(A)
    new = only(sync.take(0.0, lookup(desired)))
    assert [m.msg_id for m in sync.due(10.0)] == [new.msg_id]
    assert list(sync.inflight) == [new.msg_id]
    assert sync.on_ack(old.msg_id) is None


def test_disconnected_requeues_what_was_in_flight() -> None:
    desired = {A: target("ua", 1), B: target("ub", 1), C: target("uc", 1)}
    sync = NodeSync("edge", {}, window=2)
    sync.reconcile(desired)
    sent = sync.take(0.0, lookup(desired))
    assert [m.key for m in sent] == [A, B]
    sync.disconnected()
    assert sync.inflight == {}
    assert sync.latest_for == {}
    assert set(sync.queue) == {A, B, C}
    assert sync.backlog == 3
    # Acks from the old connection count for nothing now.
    assert sync.on_ack(sent[0].msg_id) is None
    assert sync.acked == {}
    again = sync.take(1.0, lookup(desired))
    assert len(again) == 2
    assert {m.msg_id for m in again}.isdisjoint({m.msg_id for m in sent})


# ------------------------------------------------------------ changes while in flight


def test_delete_while_the_insert_is_in_flight_is_not_lost() -> None:
    """The object is deleted before the node acked its insert: it must still get a delete."""
    desired = {A: target("u", 1)}
    sync = NodeSync("edge", {})
    sync.mark(A)
    insert = only(sync.take(0.0, lookup(desired)))
    del desired[A]
    sync.mark(A)
    sync.take(1.0, lookup(desired))
    sync.on_ack(insert.msg_id)  # the node committed the insert: it now holds A

    sent = sync.take(2.0, lookup(desired)) + sync.due(100.0)
    deletes = [m for m in sent if m.key == A and m.resource_version is None]
    assert deletes, f"node holds {sync.acked} but no delete is pending (queue {sync.queue})"


def test_redesired_while_its_delete_is_in_flight_is_sent_again() -> None:
    """A secret is dropped then needed again (same version) before the delete is acked."""
    sync = NodeSync("edge", {D: ("u-d", 5)})
    sync.reconcile({})
    delete = only(sync.take(0.0, lambda key: None))
    desired = {D: target("u-d", 5)}
    sync.mark(D)
    sync.take(1.0, lookup(desired))
    sync.on_ack(delete.msg_id)  # the node removed D

    sent = sync.take(2.0, lookup(desired)) + sync.due(100.0)
    inserts = [m for m in sent if m.key == D and m.resource_version == 5]
    assert inserts, f"node holds {sync.acked} but D is desired and nothing is pending"


# ------------------------------------------------------------ property

KEYS = [A, B, C]

operation = st.one_of(
    st.tuples(st.just("change"), st.sampled_from(KEYS),
              st.sampled_from(["bump", "status", "recreate", "delete"])),
    st.tuples(st.just("take"), st.integers(0, 10)),
    st.tuples(st.just("ack"), st.integers(0, 1000)),
    st.tuples(st.just("due"), st.integers(0, 40)),
    st.tuples(st.just("reconcile")),
    st.tuples(st.just("disconnect")),
)


@settings(max_examples=200, deadline=None)
@given(initial=st.dictionaries(st.sampled_from(KEYS), st.integers(1, 3)),
       ops=st.lists(operation, max_size=40), seed=st.integers(0, 2**32 - 1),
       window=st.integers(1, 3))
def test_acked_converges_to_desired(initial: dict[Key, int], ops: list[Any], seed: int,
                                    window: int) -> None:
    rng = random.Random(seed)
    version = 10
    desired: dict[Key, Target] = {}
    # The node starts out holding some keys, possibly stale or with an old uid.
    acked: dict[Key, tuple[str, int]] = {k: (f"{k[2]}-old", v) for k, v in initial.items()}
    sync = NodeSync("edge", acked, window=window, resend_after=5.0, max_backoff=20.0)
    uids = 0
    for key in KEYS[:2]:
        uids += 1
        desired[key] = target(f"{key[2]}-{uids}", version)
    sync.reconcile(desired)

    now = 0.0
    unacked: list[Outgoing] = []  # every message sent, until the node acks it
    for op in ops:
        kind = op[0]
        if kind == "change":
            _, key, how = op
            version += 1
            current = desired.get(key)
            if how == "delete":
                desired.pop(key, None)
            elif how == "status" and current is not None:
                desired[key] = Target(current.uid, current.sync_version, version, current.obj)
            elif how == "bump" and current is not None:
                desired[key] = target(current.uid, version)
            else:
                uids += 1
                desired[key] = target(f"{key[2]}-{uids}", version)
            sync.mark(key)
        elif kind == "take":
            now += op[1]
            unacked += sync.take(now, lookup(desired))
        elif kind == "ack" and unacked:
            message = unacked.pop(op[1] % len(unacked))
            sync.on_ack(message.msg_id)
        elif kind == "due":
            now += op[1]
            unacked += sync.due(now)
        elif kind == "reconcile":
            sync.reconcile(desired)
        elif kind == "disconnect":
            sync.disconnected()
        assert len(sync.inflight) <= window
        assert all(m.key in KEYS for m in sync.inflight.values())

    # Every message sent is eventually acknowledged, in some order.
    rng.shuffle(unacked)
    for message in unacked:
        sync.on_ack(message.msg_id)
    # Then the node is brought in line with the final desired state.
    for _ in range(20):
        sync.reconcile(desired)
        batch = sync.take(now, lookup(desired))
        if not batch:
            break
        for message in batch:
            sync.on_ack(message.msg_id)
    else:
        pytest.fail("delivery did not settle")

    assert set(sync.acked) == set(desired)
    for key, want in desired.items():
        uid, held_version = sync.acked[key]
        assert uid == want.uid
        assert held_version >= want.sync_version
    assert sync.inflight == {}
    assert not sync.queue
