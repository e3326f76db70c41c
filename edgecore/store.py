"""The edge's own store (metamanager): everything the node received, and its outbox.

Standard-library sqlite3 in WAL mode with full fsync, because edgecore must stay
small (SQLAlchemy alone would cost 18 MB of RSS). Every method is one short
transaction; an ack for a downstream message is sent only after ``apply`` or
``remove`` returned, i.e. after the commit.

Idempotence: an object is replaced only by a newer resourceVersion, and a
delete leaves a tombstone so that a late resend of an older version cannot
bring the object back.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Key = tuple[str, str, str]
MAX_TOMBSTONES = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    uid TEXT NOT NULL, resource_version INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS tombstones (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    resource_version INTEGER NOT NULL, PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, object_key TEXT NOT NULL,
    resource TEXT NOT NULL, operation TEXT NOT NULL, content TEXT NOT NULL,
    created REAL NOT NULL);
-- Superseding and capping an object's unsent reports look them up at every report.
CREATE INDEX IF NOT EXISTS outbox_by_object ON outbox (object_key, seq);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(Exception):
    """The local store cannot be written (disk full, read-only, corrupt)."""


class StoreCorrupt(StoreError):
    """The store file is damaged (not a database, or failing SQLite's integrity check)."""


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    object_key: str
    resource: str
    operation: str
    content: Any


class EdgeStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        if not existed:
            os.chmod(path, 0o600)
        try:
            # A power cut on a cheap SD card can damage the file; say so before using it.
            verdict = self.db.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked, unreadable: not damage
            self.db.close()
            raise StoreCorrupt(f"{path} is damaged: {exc}") from None
        if verdict is None or verdict[0] != "ok":
            self.db.close()
            raise StoreCorrupt(f"{path} is damaged: {verdict[0] if verdict else 'no answer'}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.resource_version = self._max_version()
        row = self.db.execute("SELECT value FROM state WHERE name='revision'").fetchone()
        # The local revision orders every change here (the cloud's versions, and status
        # reports made on this node); it is what MetaServer lists and watches use.
        self.revision = max(int(row[0]) if row else 0, self.resource_version)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"the edge store {self.path} cannot be written: {exc}") from exc

    def _bump(self, db: sqlite3.Connection, at_least: int = 0) -> int:
        revision = max(self.revision + 1, at_least)
        db.execute("INSERT OR REPLACE INTO state VALUES ('revision', ?)", (str(revision),))
        return revision

    def _max_version(self) -> int:
        row = self.db.execute("SELECT MAX(resource_version) FROM meta").fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------ desired state

    def apply(self, key: Key, uid: str, resource_version: int, obj: dict[str, Any]) -> bool:
        """Store ``obj`` unless what we hold (or deleted) is as new; True if it changed."""
        with self._tx() as db:
            row = db.execute("SELECT resource_version FROM meta WHERE kind=? AND namespace=? "
                             "AND name=?", key).fetchone()
            if row is not None and row[0] >= resource_version:
                return False
            tomb = db.execute("SELECT resource_version FROM tombstones WHERE kind=? AND "
                              "namespace=? AND name=?", key).fetchone()
            if tomb is not None and tomb[0] >= resource_version:
                return False
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?, ?, ?)",
                       (*key, uid, resource_version, json.dumps(obj, separators=(",", ":"))))
            if tomb is not None:
                db.execute("DELETE FROM tombstones WHERE kind=? AND namespace=? AND name=?", key)
            revision = self._bump(db, resource_version)
        self.revision = revision
        self.resource_version = max(self.resource_version, resource_version)
        return True

    def remove(self, key: Key, resource_version: int) -> bool:
        """Delete ``key`` if what we hold is older than the delete; True if it was removed."""
        with self._tx() as db:
            row = db.execute("SELECT resource_version FROM meta WHERE kind=? AND namespace=? "
                             "AND name=?", key).fetchone()
            if row is not None and row[0] > resource_version:
                return False
            db.execute("DELETE FROM meta WHERE kind=? AND namespace=? AND name=?", key)
            db.execute("INSERT INTO tombstones VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                       "resource_version = max(resource_version, excluded.resource_version)",
                       (*key, resource_version))
            db.execute("DELETE FROM tombstones WHERE rowid IN (SELECT rowid FROM tombstones "
                       "ORDER BY resource_version DESC LIMIT -1 OFFSET ?)", (MAX_TOMBSTONES,))
            revision = self._bump(db, resource_version)
        self.revision = revision
        self.resource_version = max(self.resource_version, resource_version)
        return row is not None

    def report_status(self, key: Key, status: dict[str, Any]) -> None:
        """Replace the status of our copy; its resourceVersion stays the cloud's."""
        with self._tx() as db:
            row = db.execute("SELECT body FROM meta WHERE kind=? AND namespace=? AND name=?",
                             key).fetchone()
            if row is None:
                return
            obj = {**json.loads(row[0]), "status": status}
            db.execute("UPDATE meta SET body=? WHERE kind=? AND namespace=? AND name=?",
                       (json.dumps(obj, separators=(",", ":")), *key))
            revision = self._bump(db)
        self.revision = revision

    def get(self, key: Key) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM meta WHERE kind=? AND namespace=? AND name=?",
                              key).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace is None:
            rows = self.db.execute("SELECT body FROM meta WHERE kind=? ORDER BY namespace, name",
                                   (kind,))
        else:
            rows = self.db.execute("SELECT body FROM meta WHERE kind=? AND namespace=? "
                                   "ORDER BY name", (kind, namespace))
        return [json.loads(row[0]) for row in rows]

    def pod_phases(self) -> dict[str, int]:
        """How many pods have each ``status.phase`` ("" for a pod with no status yet)."""
        rows = self.db.execute(
            "SELECT COALESCE(json_extract(body, '$.status.phase'), ''), COUNT(*) FROM meta "
            "WHERE kind='pods' GROUP BY 1")
        return {str(phase): int(count) for phase, count in rows}

    def keys(self) -> dict[Key, int]:
        return {(k, ns, n): rv for k, ns, n, rv in self.db.execute(
            "SELECT kind, namespace, name, resource_version FROM meta")}

    def inventory(self) -> tuple[int, list[list[Any]], list[list[Any]]]:
        """What this node holds and deleted, for the cloud to check its record against:
        (highest version seen, [[kind, namespace, name, uid, rv]], [[kind, namespace, name,
        rv]])."""
        held = [list(row) for row in self.db.execute(
            "SELECT kind, namespace, name, uid, resource_version FROM meta")]
        deleted = [list(row) for row in self.db.execute(
            "SELECT kind, namespace, name, resource_version FROM tombstones")]
        seen = max([self.resource_version, *(row[4] for row in held),
                    *(row[3] for row in deleted)])
        return seen, held, deleted

    # ------------------------------------------------------------ small local state

    def set_state(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, value))

    def state_items(self, prefix: str) -> list[str]:
        rows = self.db.execute("SELECT value FROM state WHERE name >= ? AND name < ? "
                               "ORDER BY name", (prefix, prefix + "\uffff"))
        return [row[0] for row in rows]

    # ------------------------------------------------------------ outbox (upstream)

    def enqueue(self, object_key: str, resource: str, operation: str, content: Any,
                replace: bool = False, cap: int = 0) -> int:
        """Queue a report; with ``replace``, it supersedes the unsent ones of the same object;
        with ``cap``, at most that many of this ``object_key`` wait (the oldest go)."""
        with self._tx() as db:
            if replace:
                db.execute("DELETE FROM outbox WHERE object_key=? AND seq > "
                           "(SELECT COALESCE(MIN(seq), 0) FROM outbox)", (object_key,))
            if cap:
                db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE "
                           "object_key=? ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                           (object_key, cap - 1))
            cursor = db.execute(
                "INSERT INTO outbox (object_key, resource, operation, content, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (object_key, resource, operation, json.dumps(content, separators=(",", ":")),
                 time.time()))
            return int(cursor.lastrowid or 0)

    def pending(self, limit: int = 100) -> list[OutboxEntry]:
        rows = self.db.execute("SELECT seq, object_key, resource, operation, content FROM outbox "
                               "ORDER BY seq LIMIT ?", (limit,))
        return [OutboxEntry(seq, key, res, op, json.loads(content))
                for seq, key, res, op, content in rows]

    def done(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE seq=?", (seq,))

    def outbox_depth(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
