"""Inventories: a node tells the cloud what it holds, page by page, and the cloud finds what
the node would refuse as old (after the cloud store went back in time)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudcore.sync import (
    MAX_INVENTORY_ENTRIES,
    Inventory,
    InventoryError,
    Target,
    add_inventory_page,
    stale_on_node,
)
from edgecore.metamanager import MetaManager
from edgecore.store import EdgeStore

STORE = 10  # the cloud store's resourceVersion in these tests


def page(number: int = 0, last: bool = True, generation: str = "g1", seen: int = 9,
         objects: list[list[Any]] | None = None,
         deleted: list[list[Any]] | None = None) -> dict[str, Any]:
    return {"generation": generation, "page": number, "last": last, "resourceVersion": seen,
            "objects": objects or [], "deleted": deleted or []}


def test_pages_assemble_into_one_inventory() -> None:
    partial, done = add_inventory_page(None, STORE, page(0, False, objects=[
        ["pods", "default", "web", "u1", 4]]))
    assert not done
    partial, done = add_inventory_page(partial, STORE, page(1, True, seen=12, deleted=[
        ["configmaps", "default", "old", 11]]))
    assert done
    assert partial.held == {("pods", "default", "web"): ("u1", 4)}
    assert partial.deleted == {("configmaps", "default", "old"): 11}
    assert partial.seen == 12


def test_a_new_generation_starts_over_and_a_gap_is_refused() -> None:
    partial, _ = add_inventory_page(None, STORE,
                                    page(0, False, objects=[["pods", "default", "a", "u", 1]]))
    fresh, done = add_inventory_page(partial, STORE, page(0, True, generation="g2"))
    assert done and fresh.held == {}
    with pytest.raises(InventoryError, match="expected page 1, got 2"):
        add_inventory_page(partial, STORE, page(2))
    with pytest.raises(InventoryError, match="first page never came"):
        add_inventory_page(None, STORE, page(3))


@pytest.mark.parametrize("content, complaint", [
    ("nope", "content: expected an object"),
    ({**page(), "generation": ""}, "content.generation"),
    ({**page(), "page": -1}, "content.page"),
    ({**page(), "resourceVersion": True}, "content.resourceVersion"),
    ({**page(), "last": "yes"}, "content.last"),
    ({**page(), "objects": {}}, "expected lists"),
    (page(objects=[["pods", "default", "web", "u1"]]), r"content.objects\[0\]"),
    (page(objects=[["pods", "default", "web", "u1", "4"]]), r"content.objects\[0\]"),
    (page(deleted=[["pods", "default", "web", 4, 4]]), r"content.deleted\[0\]"),
    (page(objects=[["pods", "default", "web", "u" * 65, 4]]), r"content.objects\[0\]"),
    (page(objects=[["pods", "default", "web", "u1", 10]]), "at most content.resourceVersion"),
    (page(objects=[["pods", "default", "web", "u1", 2**63]]), r"content.objects\[0\]"),
    (page(deleted=[["pods", "default", "web", -1]]), r"content.deleted\[0\]"),
])
def test_malformed_pages_are_refused_with_the_field(content: Any, complaint: str) -> None:
    with pytest.raises(InventoryError, match=complaint):
        add_inventory_page(None, STORE, content)


def test_only_objects_the_cloud_sends_count_and_versions_must_be_plausible() -> None:
    with pytest.raises(InventoryError, match="'widgets' default/w is not an object the cloud"):
        add_inventory_page(None, STORE, page(objects=[["widgets", "default", "w", "u", 1]]))
    with pytest.raises(InventoryError, match="implausibly far ahead"):
        add_inventory_page(None, STORE, page(seen=STORE + 10**9 + 1))
    partial, _ = add_inventory_page(None, STORE, page(seen=STORE + 10**9, deleted=[
        ["widgets", "", "w", 3], ["pods", "default", "p", 4]]))
    assert partial.deleted == {("pods", "default", "p"): 4}


def test_an_inventory_is_bounded() -> None:
    rows = [["configmaps", "default", f"c{i}", "u", 1] for i in range(MAX_INVENTORY_ENTRIES)]
    partial, _ = add_inventory_page(None, STORE, page(0, False, objects=rows))
    with pytest.raises(InventoryError, match="more than"):
        add_inventory_page(partial, STORE, page(1, objects=[["pods", "", "x", "u", 1]]))


def target(uid: str, version: int) -> Target:
    return Target(uid, version, version, {})


def test_stale_objects_are_those_the_node_would_refuse() -> None:
    desired = {
        ("configmaps", "default", "same"): target("u-same", 5),
        ("configmaps", "default", "behind"): target("u-behind", 7),    # node has 3: sent
        ("configmaps", "default", "ahead"): target("u-ahead", 5),      # node has 8: stale
        ("configmaps", "default", "replaced"): target("u-new", 6),     # same rv, other uid
        ("configmaps", "default", "missing"): target("u-missing", 4),  # node never had it
        ("configmaps", "default", "buried"): target("u-buried", 4),    # node deleted it at 9
    }
    inventory = Inventory(seen=9, held={
        ("configmaps", "default", "same"): ("u-same", 5),
        ("configmaps", "default", "behind"): ("u-behind", 3),
        ("configmaps", "default", "ahead"): ("u-ahead", 8),
        ("configmaps", "default", "replaced"): ("u-old", 6),
    }, deleted={("configmaps", "default", "buried"): 9})
    assert sorted(k[2] for k in stale_on_node(desired, inventory)) == [
        "ahead", "buried", "replaced"]


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[MetaManager]:
    store = EdgeStore(tmp_path / "edge.db")
    yield MetaManager(store)
    store.close()


def test_the_edge_pages_its_inventory_and_the_cloud_reads_it_back(
        manager: MetaManager) -> None:
    store = manager.store
    for i in range(60):
        store.apply(("configmaps", "default", f"cm-{i:02d}"), f"u{i}", 100 + i,
                    {"metadata": {"name": f"cm-{i:02d}"}})
    for i in range(0, 60, 3):
        store.remove(("configmaps", "default", f"cm-{i:02d}"), 200 + i)

    pages = list(manager.inventory_pages(page_bytes=400))
    assert len(pages) > 3 and [p["page"] for p in pages] == list(range(len(pages)))
    assert [p["last"] for p in pages] == [False] * (len(pages) - 1) + [True]
    assert len({p["generation"] for p in pages}) == 1
    partial = None
    for content in pages:
        partial, done = add_inventory_page(partial, STORE, content)
    assert done and partial is not None
    assert partial.seen == 257
    assert len(partial.held) == 40 and len(partial.deleted) == 20
    assert partial.held[("configmaps", "default", "cm-01")] == ("u1", 101)
    assert partial.deleted[("configmaps", "default", "cm-57")] == 257


def test_an_empty_store_sends_one_empty_last_page(manager: MetaManager) -> None:
    assert [(p["page"], p["last"], p["objects"], p["deleted"], p["resourceVersion"])
            for p in manager.inventory_pages()] == [(0, True, [], [], 0)]
