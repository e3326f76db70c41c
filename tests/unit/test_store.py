"""EdgeStore: the edge's durable copy of desired state (idempotent by resourceVersion)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecore import store as store_module
from edgecore.store import EdgeStore, StoreCorrupt

POD = ("pods", "default", "web")
OTHER = ("pods", "default", "other")


def body(version: int, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "default", "uid": "u-1",
                         "resourceVersion": str(version)}, "spec": {"v": version}, **extra}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    edge = EdgeStore(tmp_path / "edge.db")
    yield edge
    edge.close()


def test_apply_stores_and_returns_true(store: EdgeStore) -> None:
    assert store.apply(POD, "u-1", 3, body(3))
    assert store.get(POD) == body(3)
    assert store.keys() == {POD: 3}
    assert store.resource_version == 3
    assert store.get(OTHER) is None


def test_apply_is_idempotent_by_resource_version(store: EdgeStore) -> None:
    assert store.apply(POD, "u-1", 5, body(5))
    assert not store.apply(POD, "u-1", 5, body(5, extra="same version"))
    assert not store.apply(POD, "u-1", 4, body(4))
    assert store.get(POD) == body(5)
    assert store.apply(POD, "u-1", 6, body(6))
    assert store.get(POD) == body(6)
    assert store.keys() == {POD: 6}


def test_remove_leaves_a_tombstone_against_late_older_applies(store: EdgeStore) -> None:
    store.apply(POD, "u-1", 5, body(5))
    assert store.remove(POD, 8)
    assert store.get(POD) is None
    assert not store.apply(POD, "u-1", 7, body(7))  # a late resend
    assert not store.apply(POD, "u-1", 8, body(8))
    assert store.get(POD) is None
    assert store.apply(POD, "u-2", 9, body(9))  # recreated later
    assert store.get(POD) == body(9)
    assert store.resource_version == 9


def test_remove_of_a_newer_held_object_is_ignored(store: EdgeStore) -> None:
    store.apply(POD, "u-1", 10, body(10))
    assert not store.remove(POD, 9)
    assert store.get(POD) == body(10)
    # And it left no tombstone that could block a newer version.
    assert store.apply(POD, "u-1", 11, body(11))


def test_remove_at_the_held_version_removes(store: EdgeStore) -> None:
    store.apply(POD, "u-1", 10, body(10))
    assert store.remove(POD, 10)
    assert store.get(POD) is None


def test_remove_of_an_unknown_key_still_blocks_older_inserts(store: EdgeStore) -> None:
    assert not store.remove(POD, 6)  # nothing held
    assert not store.apply(POD, "u-1", 5, body(5))
    assert store.get(POD) is None
    assert store.resource_version == 6


def test_late_older_delete_does_not_weaken_the_tombstone(store: EdgeStore) -> None:
    """Deleted at 10; a duplicate older delete (7) must not let version 8 come back."""
    store.apply(POD, "u-1", 5, body(5))
    store.remove(POD, 10)
    store.remove(POD, 7)
    assert not store.apply(POD, "u-1", 8, body(8))
    assert store.get(POD) is None


def test_tombstones_are_capped_keeping_the_newest(store: EdgeStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_TOMBSTONES", 2)
    keys = [("pods", "default", f"p{i}") for i in range(3)]
    for version, key in enumerate(keys, start=1):
        store.remove(key, version * 10)
    assert store.apply(keys[0], "u", 5, body(5))  # its tombstone (10) was dropped
    assert not store.apply(keys[1], "u", 15, body(15))
    assert not store.apply(keys[2], "u", 25, body(25))


def test_list_by_kind_and_namespace(store: EdgeStore) -> None:
    store.apply(("pods", "b", "x"), "u1", 1, {"n": "b/x"})
    store.apply(("pods", "a", "y"), "u2", 2, {"n": "a/y"})
    store.apply(("pods", "a", "x"), "u3", 3, {"n": "a/x"})
    store.apply(("secrets", "a", "x"), "u4", 4, {"n": "secret"})
    assert store.list("pods") == [{"n": "a/x"}, {"n": "a/y"}, {"n": "b/x"}]
    assert store.list("pods", "a") == [{"n": "a/x"}, {"n": "a/y"}]
    assert store.list("configmaps") == []


def test_outbox_is_ordered_by_seq(store: EdgeStore) -> None:
    first = store.enqueue("pods/default/web", "default/podstatus/web", "update", {"n": 1})
    second = store.enqueue("nodes//edge", "default/nodestatus/edge", "update", {"n": 2})
    third = store.enqueue("pods/default/web", "default/podstatus/web", "update", {"n": 3})
    assert first < second < third
    pending = store.pending()
    assert [e.seq for e in pending] == [first, second, third]
    assert [e.content for e in pending] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert (pending[1].object_key, pending[1].resource, pending[1].operation) == (
        "nodes//edge", "default/nodestatus/edge", "update")
    assert [e.seq for e in store.pending(limit=2)] == [first, second]
    assert store.outbox_depth() == 3

    store.done(second)
    assert [e.seq for e in store.pending()] == [first, third]
    store.done(second)  # already done: harmless
    assert store.outbox_depth() == 2
    fourth = store.enqueue("k", "r", "update", None)
    assert fourth > third
    assert [e.seq for e in store.pending()] == [first, third, fourth]


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    edge = EdgeStore(path)
    edge.apply(POD, "u-1", 7, body(7))
    edge.remove(OTHER, 9)
    seq = edge.enqueue("pods/default/web", "default/podstatus/web", "update", {"s": "x"})
    edge.report_status(POD, {"phase": "Running"})
    edge.close()

    again = EdgeStore(path)
    try:
        assert again.get(POD) == {**body(7), "status": {"phase": "Running"}}
        assert again.keys() == {POD: 7}
        assert again.resource_version == 7
        assert [(e.seq, e.content) for e in again.pending()] == [(seq, {"s": "x"})]
        assert not again.apply(OTHER, "u", 8, {"x": 1})  # the tombstone survived too
        assert not again.apply(POD, "u-1", 7, body(7))
    finally:
        again.close()


def test_db_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    EdgeStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_report_status_keeps_the_resource_version(store: EdgeStore) -> None:
    store.apply(POD, "u-1", 4, body(4, status={"phase": "Pending"}))
    store.report_status(POD, {"phase": "Running"})
    held = store.get(POD)
    assert held is not None
    assert held["status"] == {"phase": "Running"}
    assert held["spec"] == {"v": 4}
    assert held["metadata"]["resourceVersion"] == "4"
    assert store.keys() == {POD: 4}
    assert store.resource_version == 4
    # The cloud's next version still replaces it; the same version still does not.
    assert not store.apply(POD, "u-1", 4, body(4))
    assert store.apply(POD, "u-1", 5, body(5))


def test_report_status_of_an_unknown_key_does_nothing(store: EdgeStore) -> None:
    store.report_status(POD, {"phase": "Running"})
    assert store.get(POD) is None
    assert store.keys() == {}


@pytest.mark.parametrize("damage", ["not a database", "damaged pages"])
def test_a_damaged_store_is_refused_as_damaged(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "edge.db"
    store = EdgeStore(path)
    for i in range(300):
        store.apply(("configmaps", "default", f"c{i}"), f"u{i}", i + 1,
                    {"metadata": {"name": f"c{i}"}, "data": {"v": "x" * 200}})
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    if damage == "not a database":
        data[:100] = b"\x00" * 100
    else:
        for page in range(2, len(data) // 4096, 3):
            data[page * 4096 + 8: page * 4096 + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="is damaged"):
        EdgeStore(path)

