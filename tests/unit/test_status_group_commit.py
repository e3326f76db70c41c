"""Status writes reported by nodes are committed in groups: one transaction for all those
waiting, each writer answered after the commit, versions and watch events in order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from cloudcore.objects import NotFound, ObjectStore, open_store, sqlite_url
from moorage.events import Event


def node(name: str, **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {}, "status": status}


async def fleet(tmp_path: Path, count: int) -> ObjectStore:
    store = await open_store(sqlite_url(tmp_path / "cloudcore.db"))
    for i in range(count):
        await store.create("nodes", node(f"n{i}"))
    return store


def test_a_burst_of_status_writes_is_one_transaction(tmp_path: Path) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, 300)
        heard: list[Event] = []
        store.listeners.append(heard.append)
        commits: list[int] = []
        event.listen(store.engine.sync_engine, "commit", lambda _conn: commits.append(1))
        before = store.resource_version
        try:
            written = await asyncio.gather(*(
                store.replace_status("nodes", node(f"n{i}", phase=f"p{i}")) for i in range(300)))
            # One group (the first writer starts it, the rest join while it waits for the
            # lock it takes at once): far fewer commits than writes.
            assert len(commits) <= 2
            versions = [int(obj["metadata"]["resourceVersion"]) for obj in written]
            assert sorted(versions) == list(range(before + 1, before + 301))
            assert [e.resource_version for e in heard] == sorted(versions)
            assert all(e.status_only and e.type == "MODIFIED" for e in heard)
            assert store.get(("nodes", "", "n7"))["status"] == {"phase": "p7"}
            assert store.resource_version == before + 300
        finally:
            await store.close()
        # It is all on disk: a reopened store has every status and the counter.
        again = await open_store(sqlite_url(tmp_path / "cloudcore.db"))
        try:
            assert again.get(("nodes", "", "n299"))["status"] == {"phase": "p299"}
            assert again.resource_version == before + 300
            created = await again.create("configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "after", "namespace": "default"}})
            assert created["metadata"]["resourceVersion"] == str(before + 301)
        finally:
            await again.close()
    asyncio.run(run())


def test_same_key_twice_unchanged_and_missing_in_one_group(tmp_path: Path) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, 2)
        before = store.resource_version
        try:
            results = await asyncio.gather(
                store.replace_status("nodes", node("n0", phase="a")),
                store.replace_status("nodes", node("n0", phase="b")),
                store.replace_status("nodes", node("n1")),  # unchanged: no new version
                store.replace_status("nodes", node("ghost", phase="x")),
                return_exceptions=True)
            first, second, same, missing = results
            assert isinstance(missing, NotFound)
            assert isinstance(first, dict) and isinstance(second, dict) and \
                isinstance(same, dict)
            assert first["metadata"]["resourceVersion"] == str(before + 1)
            assert second["metadata"]["resourceVersion"] == str(before + 2)
            assert same["metadata"]["resourceVersion"] == store.get(
                ("nodes", "", "n1"))["metadata"]["resourceVersion"]
            assert store.get(("nodes", "", "n0"))["status"] == {"phase": "b"}
            assert store.resource_version == before + 2
        finally:
            await store.close()
    asyncio.run(run())


def test_a_failed_group_fails_each_writer_and_writes_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, 3)
        before = store.resource_version

        def refuse(*_: Any) -> None:
            raise RuntimeError("disk full")

        try:
            event.listen(store.engine.sync_engine, "before_cursor_execute", refuse)
            results = await asyncio.gather(*(
                store.replace_status("nodes", node(f"n{i}", phase="x")) for i in range(3)),
                return_exceptions=True)
            assert all(isinstance(r, RuntimeError) for r in results)
            event.remove(store.engine.sync_engine, "before_cursor_execute", refuse)
            assert store.resource_version == before
            assert store.get(("nodes", "", "n0"))["status"] == {}
            written = await store.replace_status("nodes", node("n0", phase="y"))
            assert written["metadata"]["resourceVersion"] == str(before + 1)
        finally:
            await store.close()
    asyncio.run(run())


def test_a_status_write_takes_only_the_status(tmp_path: Path) -> None:
    """The writer built its object from the cache; whatever else changed meanwhile (the
    spec, labels, a new uid) is not undone by its status."""
    async def run() -> None:
        store = await fleet(tmp_path, 1)
        original = store.get(("nodes", "", "n0"))
        try:
            stale = node("n0", phase="z")
            stale["metadata"].update(uid=original["metadata"]["uid"],
                                     creationTimestamp="1970-01-01T00:00:00Z",
                                     labels={"old": "copy"})
            await store.replace("nodes", {**original, "metadata": {
                **original["metadata"], "labels": {"set": "meanwhile"}},
                "spec": {"taints": []}})
            written = await store.replace_status("nodes", stale)
            assert written["status"] == {"phase": "z"}
            assert written["metadata"]["labels"] == {"set": "meanwhile"}
            assert written["spec"] == {"taints": []}
            assert written["metadata"]["creationTimestamp"] == \
                original["metadata"]["creationTimestamp"]

            stale["metadata"]["uid"] = "an-earlier-object"
            with pytest.raises(NotFound, match="deleted and created again"):
                await store.replace_status("nodes", stale)
        finally:
            await store.close()
    asyncio.run(run())


def test_touch_rewrites_under_a_new_version_due_for_nodes(tmp_path: Path) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, 2)
        heard: list[Event] = []
        store.listeners.append(heard.append)
        try:
            before = store.resource_version
            touched = await asyncio.gather(store.touch(("nodes", "", "n0")),
                                           store.touch(("nodes", "", "n1")),
                                           store.touch(("nodes", "", "ghost")))
            assert [t["metadata"]["resourceVersion"] if t else None for t in touched] == [
                str(before + 1), str(before + 2), None]
            assert [(e.type, e.status_only) for e in heard] == [("MODIFIED", False)] * 2
            assert store.sync_versions[("nodes", "", "n1")] == before + 2
        finally:
            await store.close()
    asyncio.run(run())


@pytest.mark.parametrize("count", [1, 501])
def test_groups_are_bounded_and_all_writes_land(tmp_path: Path, count: int) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, count)
        try:
            await asyncio.gather(*(store.replace_status("nodes", node(f"n{i}", phase="up"))
                                   for i in range(count)))
            assert all(store.get(("nodes", "", f"n{i}"))["status"] == {"phase": "up"}
                       for i in range(count))
        finally:
            await store.close()
    asyncio.run(run())


def test_two_registrations_of_a_new_node_in_one_group_are_one_create(tmp_path: Path) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, 0)
        heard: list[Event] = []
        store.listeners.append(heard.append)
        try:
            first, second = await asyncio.gather(
                store.upsert_status("nodes", node("new", phase="a")),
                store.upsert_status("nodes", node("new", phase="b")))
            assert first["metadata"]["uid"] == second["metadata"]["uid"]
            assert [e.type for e in heard] == ["ADDED", "MODIFIED"]
            assert not heard[0].status_only and heard[1].status_only
            assert store.get(("nodes", "", "new"))["status"] == {"phase": "b"}
            assert store.sync_versions[("nodes", "", "new")] == heard[0].resource_version
        finally:
            await store.close()
    asyncio.run(run())


def test_acks_are_group_committed_in_order(tmp_path: Path) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, 0)
        commits: list[int] = []
        event.listen(store.engine.sync_engine, "commit", lambda _conn: commits.append(1))
        key = ("pods", "default", "web")
        try:
            await asyncio.gather(
                *(store.record_ack(f"n{i}", key, "u1", 5) for i in range(200)),
                store.record_ack("n0", key, "u1", 7),       # a later version of the same key
                store.record_ack("n1", key, "u1", None))    # n1 deleted it
            assert len(commits) <= 2
            assert await store.acked("n0") == {key: ("u1", 7)}
            assert await store.acked("n1") == {}
            assert await store.acked("n199") == {key: ("u1", 5)}
        finally:
            await store.close()
    asyncio.run(run())


def test_node_records_replaced_and_forgotten_in_order_with_acks(tmp_path: Path) -> None:
    async def run() -> None:
        store = await fleet(tmp_path, 0)
        web, db = ("pods", "default", "web"), ("pods", "default", "db")
        try:
            await asyncio.gather(
                store.record_ack("n0", web, "u1", 3),
                store.replace_acked("n0", {db: ("u2", 4)}),   # the inventory: db only
                store.record_ack("n1", web, "u1", 3),
                store.forget_node("n1"))                       # n1 deleted after its ack
            assert await store.acked("n0") == {db: ("u2", 4)}
            assert await store.acked("n1") == {}
        finally:
            await store.close()
    asyncio.run(run())
