"""A cloud store written by the first release opens with its data intact."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from cloudcore.objects import SCHEMA_VERSION, open_store, sqlite_url

# The schema of the first release (issue 2), as its store created it.
FIRST_RELEASE = """
CREATE TABLE counter (id INTEGER PRIMARY KEY, resource_version INTEGER NOT NULL);
CREATE TABLE nodes (name VARCHAR(253) PRIMARY KEY, uid VARCHAR(36) NOT NULL,
                    resource_version INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE join_tokens (digest VARCHAR(64) PRIMARY KEY, expires FLOAT NOT NULL,
                          created FLOAT NOT NULL);
CREATE TABLE issued_certs (serial VARCHAR(64) PRIMARY KEY, node VARCHAR(253) NOT NULL,
                           not_after FLOAT NOT NULL, revoked_at FLOAT);
"""


def test_first_release_store_is_migrated_keeping_nodes_tokens_and_revocations(
        tmp_path: Path) -> None:
    path = tmp_path / "cloudcore.db"
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "old-edge", "uid": "u-1", "resourceVersion": "7"},
            "status": {"nodeInfo": {"architecture": "arm64"}}}
    db = sqlite3.connect(path)
    db.executescript(FIRST_RELEASE)
    db.execute("INSERT INTO counter VALUES (1, 7)")
    db.execute("INSERT INTO nodes VALUES ('old-edge', 'u-1', 7, ?)", (json.dumps(node),))
    db.execute("INSERT INTO join_tokens VALUES ('d' , 4102444800, 1)")
    db.execute("INSERT INTO issued_certs VALUES ('AB', 'old-edge', 4102444800, 5)")
    db.commit()
    db.close()

    async def check() -> None:
        store = await open_store(sqlite_url(path))
        try:
            assert store.get(("nodes", "", "old-edge")) == node
            assert store.resource_version == 7
            assert await store.token_valid("d")
            assert await store.revoked_serials() == {"AB"}
            created = await store.create("configmaps", {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "new", "namespace": "default"}})
            assert created["metadata"]["resourceVersion"] == "8"  # the counter carried on
        finally:
            await store.close()
        reopened = await open_store(sqlite_url(path))  # a second open migrates nothing more
        try:
            assert reopened.get(("nodes", "", "old-edge")) == node
        finally:
            await reopened.close()

    asyncio.run(check())
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "nodes" not in tables
    db.close()
