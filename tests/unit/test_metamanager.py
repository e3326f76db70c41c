"""MetaManager: downstream messages become commits and acks; reports become outbox entries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecore import metamanager as metamanager_module
from edgecore.metamanager import MetaManager
from edgecore.store import EdgeStore
from moorage import envelope
from moorage.envelope import Message
from moorage.errors import ManifestError
from moorage.events import Event, TooOld


def pod(name: str = "web", version: int = 1, uid: str = "u-web",
        ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid,
                         "resourceVersion": str(version)},
            "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "x"}]}}


def message(operation: str, resource: str, content: Any = None,
            version: int | str = 1) -> Message:
    return Message(source="edgecontroller", group=envelope.GROUP_RESOURCE, operation=operation,
                   resource=resource, content=content, resource_version=str(version))


def insert(name: str = "web", version: int = 1, uid: str = "u-web",
           operation: str = envelope.INSERT) -> Message:
    return message(operation, f"default/pod/{name}", pod(name, version, uid), version)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    edge = EdgeStore(tmp_path / "edge.db")
    yield edge
    edge.close()


@pytest.fixture
def manager(store: EdgeStore) -> MetaManager:
    return MetaManager(store)


@pytest.fixture
def events(manager: MetaManager) -> list[Event]:
    heard: list[Event] = []
    manager.listeners.append(heard.append)
    return heard


def assert_ack(request: Message, reply: Message) -> None:
    assert reply.operation == envelope.RESPONSE, reply.content
    assert reply.parent_msg_id == request.msg_id
    assert reply.resource == request.resource
    assert reply.source == "metamanager"


def assert_refused(request: Message, reply: Message) -> None:
    assert reply.operation == envelope.ERROR
    assert reply.parent_msg_id == request.msg_id


# ------------------------------------------------------------ downstream


def test_insert_is_applied_and_acked(manager: MetaManager, store: EdgeStore,
                                     events: list[Event]) -> None:
    request = insert(version=3)
    reply = manager.handle(request)
    assert_ack(request, reply)
    assert reply.content == "OK"
    assert store.get(("pods", "default", "web")) == pod(version=3)
    assert manager.resource_version == 3
    assert [(e.type, e.kind, e.resource_version) for e in events] == [("ADDED", "pods", 3)]
    assert events[0].obj == pod(version=3)


def test_update_is_applied_and_heard_as_modified(manager: MetaManager, store: EdgeStore,
                                                 events: list[Event]) -> None:
    manager.handle(insert(version=1))
    request = insert(version=2, operation=envelope.UPDATE)
    assert_ack(request, manager.handle(request))
    assert store.keys() == {("pods", "default", "web"): 2}
    assert [(e.type, e.resource_version) for e in events] == [("ADDED", 1), ("MODIFIED", 2)]


def test_stale_resend_is_acked_but_changes_nothing(manager: MetaManager, store: EdgeStore,
                                                   events: list[Event]) -> None:
    manager.handle(insert(version=5))
    for version in (5, 4):
        request = insert(version=version, operation=envelope.UPDATE)
        assert_ack(request, manager.handle(request))
    assert store.keys() == {("pods", "default", "web"): 5}
    assert [e.type for e in events] == ["ADDED"]


def test_delete_is_applied_acked_and_heard(manager: MetaManager, store: EdgeStore,
                                           events: list[Event]) -> None:
    manager.handle(insert(version=2))
    request = message(envelope.DELETE, "default/pod/web",
                      {"metadata": {"name": "web", "uid": "u-web"}}, 9)
    assert_ack(request, manager.handle(request))
    assert store.get(("pods", "default", "web")) is None
    assert [e.type for e in events] == ["ADDED", "DELETED"]
    gone = events[-1]
    assert (gone.kind, gone.resource_version) == ("pods", 9)
    assert gone.obj["metadata"]["resourceVersion"] == "9"
    assert gone.obj["metadata"]["uid"] == "u-web"
    # The tombstone holds against the late insert.
    late = insert(version=3)
    assert_ack(late, manager.handle(late))
    assert store.get(("pods", "default", "web")) is None
    assert len(events) == 2


def test_delete_of_an_unknown_object_is_acked_silently(manager: MetaManager,
                                                       events: list[Event]) -> None:
    request = message(envelope.DELETE, "default/pod/ghost", None, 4)
    assert_ack(request, manager.handle(request))
    assert events == []


def test_cluster_scoped_resource_drops_the_namespace(manager: MetaManager,
                                                     store: EdgeStore) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-1", "uid": "n"}}
    request = message(envelope.INSERT, "default/node/edge-1", node, 2)
    assert_ack(request, manager.handle(request))
    assert store.get(("nodes", "", "edge-1")) == node


def test_parse() -> None:
    assert MetaManager.parse("default/pod/web") == ("pods", "default", "web")
    assert MetaManager.parse("prod/configmaps/cfg") == ("configmaps", "prod", "cfg")
    assert MetaManager.parse("default/dm/sensor") == ("devicemodels", "default", "sensor")
    assert MetaManager.parse("x/node/edge-1") == ("nodes", "", "edge-1")


REFUSED = {
    "too few parts": message(envelope.INSERT, "default/pod", pod(), 1),
    "too many parts": message(envelope.INSERT, "default/pod/web/x", pod(), 1),
    "empty part": message(envelope.INSERT, "default//web", pod(), 1),
    "unknown type": message(envelope.INSERT, "default/widget/web", pod(), 1),
    "no resourceversion": message(envelope.INSERT, "default/pod/web", pod(), ""),
    "zero resourceversion": message(envelope.INSERT, "default/pod/web", pod(), 0),
    "non-numeric resourceversion": message(envelope.INSERT, "default/pod/web", pod(), "abc"),
    "no uid": message(envelope.INSERT, "default/pod/web",
                      {"metadata": {"name": "web"}, "spec": {}}, 1),
    "non-string uid": message(envelope.INSERT, "default/pod/web",
                              {"metadata": {"name": "web", "uid": 7}}, 1),
    "mismatching name": message(envelope.UPDATE, "default/pod/web", pod("other"), 1),
    "no metadata": message(envelope.INSERT, "default/pod/web", {"spec": {}}, 1),
    "content not an object": message(envelope.INSERT, "default/pod/web", "hello", 1),
    "delete without version": message(envelope.DELETE, "default/pod/web", None, ""),
    "unhandled operation": message(envelope.QUERY, "default/pod/web", None, 1),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_messages_are_refused_and_change_nothing(case: str, manager: MetaManager,
                                                     store: EdgeStore,
                                                     events: list[Event]) -> None:
    manager.handle(insert(version=1))
    before = (store.keys(), store.get(("pods", "default", "web")), manager.resource_version)
    events.clear()
    request = REFUSED[case]
    reply = manager.handle(request)
    assert_refused(request, reply)
    assert isinstance(reply.content, str) and reply.content
    assert (store.keys(), store.get(("pods", "default", "web")),
            manager.resource_version) == before
    assert events == []
    assert manager.since(1) == []


def test_a_failing_listener_does_not_stop_the_others(manager: MetaManager) -> None:
    heard: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    manager.listeners[:] = [broken, lambda e: heard.append(e.type)]
    request = insert()
    assert_ack(request, manager.handle(request))
    assert heard == ["ADDED"]


# ------------------------------------------------------------ history


def test_since_returns_history_after_a_version(manager: MetaManager) -> None:
    for version in (1, 2, 3):
        manager.handle(insert(f"p{version}", version, f"u{version}"))
    assert [e.resource_version for e in manager.since(0)] == [1, 2, 3]
    assert [e.resource_version for e in manager.since(1)] == [2, 3]
    assert manager.since(3) == []


def test_since_raises_too_old_when_history_no_longer_reaches(
        store: EdgeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metamanager_module, "HISTORY", 3)
    manager = MetaManager(store)
    for version in range(1, 6):
        manager.handle(insert(f"p{version}", version, f"u{version}"))
    assert [e.resource_version for e in manager.since(2)] == [3, 4, 5]
    with pytest.raises(TooOld):
        manager.since(1)
    with pytest.raises(TooOld):
        manager.since(0)


def test_since_does_not_silently_skip_evicted_events_after_a_status_report(
        store: EdgeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A status event carries the pod's older version; eviction must not hide later events."""
    monkeypatch.setattr(metamanager_module, "HISTORY", 2)
    manager = MetaManager(store)
    manager.handle(insert("web", 5, "u-web"))
    manager.handle(insert("api", 10, "u-api"))
    listed_at = manager.resource_version  # a client lists here (10), then watches from it
    manager.handle(insert("db", 11, "u-db"))
    manager.report_pod_status("default", "web", {"phase": "Running"})  # event at version 5
    manager.handle(insert("cache", 12, "u-cache"))  # history: [web status (5), cache (12)]
    try:
        resumed = [e.resource_version for e in manager.since(listed_at)]
    except TooOld:
        return  # acceptable: the watcher relists
    assert 11 in resumed, f"the ADDED event for db (11) was lost: since(10) -> {resumed}"


def test_watch_resumed_from_a_listed_version_sees_a_later_status_report(
        manager: MetaManager) -> None:
    manager.handle(insert("web", 5, "u-web"))
    manager.handle(insert("api", 10, "u-api"))
    listed_at = manager.resource_version
    manager.report_pod_status("default", "web", {"phase": "Running"})
    resumed = manager.since(listed_at)
    assert [(e.type, e.obj["metadata"]["name"]) for e in resumed] == [("MODIFIED", "web")]


# ------------------------------------------------------------ upstream


def test_report_pod_status_of_unknown_pod(manager: MetaManager, store: EdgeStore) -> None:
    with pytest.raises(ManifestError, match='pods "ghost" not found'):
        manager.report_pod_status("default", "ghost", {"phase": "Running"})
    assert store.outbox_depth() == 0


def test_report_pod_status_queues_and_publishes(manager: MetaManager, store: EdgeStore,
                                                events: list[Event]) -> None:
    woken: list[bool] = []
    manager.changed = lambda: woken.append(True)
    manager.handle(message(envelope.INSERT, "prod/pod/api", pod("api", 7, "u-api", "prod"), 7))
    events.clear()

    manager.report_pod_status("prod", "api", {"phase": "Running"})

    [entry] = store.pending()
    assert entry.object_key == "pods/prod/api"
    assert entry.resource == "prod/podstatus/api"
    assert entry.operation == envelope.UPDATE
    assert entry.content == {"status": {"phase": "Running"}}
    # A local change: it gets a new local revision, after everything before it.
    assert [(e.type, e.kind, e.resource_version) for e in events] == [("MODIFIED", "pods", 8)]
    assert manager.resource_version == 8
    assert events[0].obj["status"] == {"phase": "Running"}
    assert events[0].obj["metadata"]["name"] == "api"
    held = store.get(("pods", "prod", "api"))
    assert held is not None and held["status"] == {"phase": "Running"}
    assert store.keys() == {("pods", "prod", "api"): 7}
    assert woken == [True]


def test_report_node_status_queues(manager: MetaManager, store: EdgeStore) -> None:
    woken: list[bool] = []
    manager.changed = lambda: woken.append(True)
    manager.report_node_status("edge-1", {"ready": True})
    [entry] = store.pending()
    assert (entry.object_key, entry.resource, entry.operation, entry.content) == (
        "nodes//edge-1", "default/nodestatus/edge-1", envelope.UPDATE,
        {"status": {"ready": True}})
    assert woken == [True]
