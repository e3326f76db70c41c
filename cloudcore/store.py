"""Durable cloud state for the secure channel: nodes, join tokens, issued and revoked certs.

SQLAlchemy Core so that PostgreSQL can take SQLite's place; nothing here is
SQLite-specific except the URL built in :func:`open_store`. Calls are short
transactions made from the event loop: a node's liveness is kept in memory and
only transitions are written, so the write rate does not grow with heartbeats.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

metadata = MetaData()

counter = Table(
    "counter", metadata,
    Column("id", Integer, primary_key=True),
    Column("resource_version", Integer, nullable=False),
)
nodes = Table(
    "nodes", metadata,
    Column("name", String(253), primary_key=True),
    Column("uid", String(36), nullable=False),
    Column("resource_version", Integer, nullable=False),
    Column("body", Text, nullable=False),
)
tokens = Table(
    "join_tokens", metadata,
    Column("digest", String(64), primary_key=True),
    Column("expires", Float, nullable=False),
    Column("created", Float, nullable=False),
)
issued_certs = Table(
    "issued_certs", metadata,
    Column("serial", String(64), primary_key=True),
    Column("node", String(253), nullable=False, index=True),
    Column("not_after", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        with engine.begin() as conn:
            if conn.execute(select(counter.c.id)).first() is None:
                conn.execute(insert(counter).values(id=1, resource_version=0))

    def _bump(self, conn: Any) -> int:
        conn.execute(update(counter).where(counter.c.id == 1)
                     .values(resource_version=counter.c.resource_version + 1))
        return int(conn.execute(select(counter.c.resource_version)).scalar_one())

    # ------------------------------------------------------------ nodes

    def put_node(self, name: str, uid: str, body: dict[str, Any]) -> int:
        """Insert or replace a Node object; returns its new resourceVersion."""
        with self.engine.begin() as conn:
            rv = self._bump(conn)
            body = {**body, "metadata": {**body.get("metadata", {}), "resourceVersion": str(rv)}}
            values = {"uid": uid, "resource_version": rv, "body": json.dumps(body)}
            done = conn.execute(update(nodes).where(nodes.c.name == name).values(**values))
            if done.rowcount == 0:
                conn.execute(insert(nodes).values(name=name, **values))
            return rv

    def get_node(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(nodes.c.body).where(nodes.c.name == name)).first()
        return json.loads(row[0]) if row else None

    def list_nodes(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(nodes.c.body).order_by(nodes.c.name)).all()
        return [json.loads(row[0]) for row in rows]

    def delete_node(self, name: str) -> bool:
        with self.engine.begin() as conn:
            self._bump(conn)
            return conn.execute(delete(nodes).where(nodes.c.name == name)).rowcount > 0

    def resource_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(counter.c.resource_version)).scalar_one())

    # ------------------------------------------------------------ tokens

    def add_token(self, digest: str, expires: float) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(delete(tokens).where(tokens.c.expires < now))
            conn.execute(insert(tokens).values(digest=digest, expires=expires, created=now))

    def token_valid(self, digest: str, now: float | None = None) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(select(tokens.c.expires).where(tokens.c.digest == digest)).first()
        return row is not None and row[0] > (now if now is not None else time.time())

    # ------------------------------------------------------------ certificates

    def record_cert(self, serial: str, node: str, not_after: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(issued_certs).values(serial=serial, node=node, not_after=not_after))

    def revoke_node(self, node: str) -> list[str]:
        """Revoke every unexpired certificate issued to ``node``; returns their serials."""
        now = time.time()
        with self.engine.begin() as conn:
            serials = [row[0] for row in conn.execute(
                select(issued_certs.c.serial).where(
                    issued_certs.c.node == node, issued_certs.c.revoked_at.is_(None)))]
            conn.execute(update(issued_certs).where(issued_certs.c.serial.in_(serials))
                         .values(revoked_at=now))
        return serials

    def revoked_serials(self) -> set[str]:
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(select(issued_certs.c.serial).where(
                issued_certs.c.revoked_at.is_not(None), issued_certs.c.not_after > now))
            return {row[0] for row in rows}


def open_store(path: Path) -> Store:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    if path.exists():
        path.chmod(0o600)
    store = Store(engine)
    path.chmod(0o600)
    return store
