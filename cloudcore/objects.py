"""The cloud's desired state: every API object in one table, one monotonic resourceVersion.

SQLAlchemy 2 async. SQLite by default; nothing here is SQLite-specific except
:func:`sqlite_url`, so PostgreSQL can take its place. Reads are served from an
in-memory copy kept in step with the table; every write is one transaction
that bumps the global resourceVersion, and only after it commits do watchers
hear of it. What nodes cause (their Node objects when they register, the status
they report) is committed in groups: one transaction, one fsync, for all the
writes waiting, so a fleet connecting at once is not a queue of thousands of
commits.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from moorage.errors import ConfigError
from moorage.events import Event, History

log = logging.getLogger("cloudcore.objects")

GROUP_LIMIT = 500  # writes per group commit

metadata = MetaData()
schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))
counter = Table(
    "counter", metadata,
    Column("id", Integer, primary_key=True),
    Column("resource_version", BigInteger, nullable=False),
)
objects = Table(
    "objects", metadata,
    Column("kind", String(64), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("uid", String(36), nullable=False),
    Column("resource_version", BigInteger, nullable=False),
    # resourceVersion of the last change nodes must receive (status-only writes skip it).
    Column("sync_version", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    PrimaryKeyConstraint("kind", "namespace", "name"),
)
object_sync = Table(
    "object_sync", metadata,
    Column("node", String(253), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("uid", String(36), nullable=False),
    Column("resource_version", BigInteger, nullable=False),
    PrimaryKeyConstraint("node", "kind", "namespace", "name"),
)
join_tokens = Table(
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
uploads = Table(
    "uploads", metadata,  # edge apps' $hw/events/upload messages waiting to be forwarded
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("node", String(253), nullable=False),
    Column("topic", String(1024), nullable=False),
    Column("payload", Text, nullable=False),  # base64
    Column("received", Float, nullable=False),
)


async def _adopt_issue2_nodes(conn: AsyncConnection) -> None:
    """Version 1: stores written by the first release kept Node objects in ``nodes``."""
    tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
    if "nodes" not in tables:
        return
    rows = await conn.execute(text("SELECT name, uid, resource_version, body FROM nodes"))
    for name, uid, rv, body in rows.all():
        await conn.execute(insert(objects).values(
            kind="nodes", namespace="", name=name, uid=uid, resource_version=rv,
            sync_version=rv, body=body))
    await conn.execute(text("DROP TABLE nodes"))


# Schema migrations: each store runs the steps newer than its recorded version, in
# order, in the transaction that opens it, so an upgrade keeps the data.
MIGRATIONS: list[tuple[int, Callable[[AsyncConnection], Awaitable[None]]]] = [
    (1, _adopt_issue2_nodes),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

Key = tuple[str, str, str]  # (kind plural, namespace or "", name)
HISTORY = 20_000  # watch events kept for resuming watches


class Conflict(Exception):
    pass


class NotFound(Exception):
    pass


Change = Event


def key_of(kind: str, obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata", {})
    return kind, meta.get("namespace", "") or "", meta.get("name", "")


def rfc3339(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts if ts is not None else time.time()))


class GroupCommit:
    """Writes committed together: each ``submit`` waits for the commit of a group holding
    every item queued by then (at most ``limit``). ``commit`` takes the items and returns
    one result (or exception) per item; if it raises, every item of the group fails."""

    def __init__(self, commit: Callable[[list[Any]], Awaitable[list[Any]]],
                 limit: int = GROUP_LIMIT) -> None:
        self.commit, self.limit = commit, limit
        self.waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, item: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self.waiting:
            batch = self.waiting[:self.limit]
            del self.waiting[:self.limit]
            try:
                results = await self.commit([item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its writer went away; the write stands
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class ObjectStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.cache: dict[Key, dict[str, Any]] = {}
        self.sync_versions: dict[Key, int] = {}
        self.resource_version = 0
        self.history = History(HISTORY)
        self.listeners: list[Callable[[Change], None]] = []
        self._write = asyncio.Lock()
        # Group commits: of objects nodes write ("upsert" a Node, "status"), and of their acks.
        self._objects_group = GroupCommit(self._commit_objects)
        self._acks_group = GroupCommit(self._commit_acks)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            row = (await conn.execute(select(schema_version.c.version))).first()
            if row is None:
                await conn.execute(insert(schema_version).values(version=0))
            current = row[0] if row else 0
            if current > SCHEMA_VERSION:
                raise ConfigError(f"the cloud store has schema version {current}, newer than "
                                  f"this cloudcore knows ({SCHEMA_VERSION}): upgrade cloudcore, "
                                  "or restore a backup made by this version")
            for version, step in MIGRATIONS:
                if version > current:
                    await step(conn)
                    await conn.execute(update(schema_version).values(version=version))
                    log.info("cloud store migrated to schema version %d", version)
            if (await conn.execute(select(counter.c.id))).first() is None:
                await conn.execute(insert(counter).values(id=1, resource_version=0))
            self.resource_version = int((await conn.execute(
                select(counter.c.resource_version))).scalar_one())
            self.history.floor = self.resource_version  # no history before this start
            for kind, sync_version, body in await conn.execute(
                    select(objects.c.kind, objects.c.sync_version, objects.c.body)):
                obj = json.loads(body)
                key = key_of(kind, obj)
                self.cache[key] = obj
                self.sync_versions[key] = int(sync_version)

    async def close(self) -> None:
        await self.engine.dispose()

    # ------------------------------------------------------------ reads

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.cache.get(key)

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        items = [obj for (k, ns, _), obj in self.cache.items()
                 if k == kind and (namespace is None or ns == namespace)]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def changes_since(self, resource_version: int) -> list[Change]:
        """Changes after ``resource_version``; TooOld (410) when history no longer reaches it."""
        return self.history.since(resource_version)

    # ------------------------------------------------------------ writes

    async def _bump(self, conn: AsyncConnection) -> int:
        result = await conn.execute(
            update(counter).where(counter.c.id == 1)
            .values(resource_version=counter.c.resource_version + 1)
            .returning(counter.c.resource_version))
        return int(result.scalar_one())

    def _publish(self, change: Change) -> None:
        self.resource_version = change.resource_version
        self.history.append(change)
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:
                log.exception("a change listener failed")

    async def create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        key = key_of(kind, obj)
        async with self._write:
            if key in self.cache:
                raise Conflict(f'{kind} "{key[2]}" already exists')
            obj = copy.deepcopy(obj)
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rfc3339()
            meta.pop("resourceVersion", None)
            async with self.engine.begin() as conn:
                rv = await self._bump(conn)
                meta["resourceVersion"] = str(rv)
                await conn.execute(insert(objects).values(
                    kind=kind, namespace=key[1], name=key[2], uid=meta["uid"],
                    resource_version=rv, sync_version=rv, body=json.dumps(obj)))
            self.cache[key] = obj
            self.sync_versions[key] = rv
            self._publish(Change("ADDED", kind, obj, rv))
            return obj

    async def replace(self, kind: str, obj: dict[str, Any],
                      expected_version: str | None = None,
                      status_only: bool = False) -> dict[str, Any]:
        """Update an object; with ``expected_version``, only if it is still current.

        ``status_only`` marks a write of the status reported by a node: it bumps the
        resourceVersion but does not make the object due for sending to nodes again.
        """
        key = key_of(kind, obj)
        async with self._write:
            current = self.cache.get(key)
            if current is None:
                raise NotFound(f'{kind} "{key[2]}" not found')
            if expected_version and expected_version != current["metadata"]["resourceVersion"]:
                raise Conflict(
                    f'Operation cannot be fulfilled on {kind} "{key[2]}": the object has been '
                    "modified; please apply your changes to the latest version and try again")
            obj = copy.deepcopy(obj)
            meta = obj["metadata"]
            for field in ("uid", "creationTimestamp"):
                meta[field] = current["metadata"][field]
            if _same(current, obj):
                return current  # a no-op write does not bump the version (like Kubernetes)
            sync_version = self.sync_versions.get(key, 0)
            async with self.engine.begin() as conn:
                rv = await self._bump(conn)
                meta["resourceVersion"] = str(rv)
                if not status_only:
                    sync_version = rv
                await conn.execute(update(objects).where(
                    objects.c.kind == kind, objects.c.namespace == key[1],
                    objects.c.name == key[2]).values(resource_version=rv,
                                                     sync_version=sync_version,
                                                     body=json.dumps(obj)))
            self.cache[key] = obj
            self.sync_versions[key] = sync_version
            self._publish(Change("MODIFIED", kind, obj, rv, status_only))
            return obj

    async def replace_status(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """``replace(kind, obj, status_only=True)``, committed in a group with the other
        writes waiting (a node's registration, node, pod and device status). Returns once
        committed, like ``replace``."""
        return await self._objects_group.submit(("status", kind, obj))  # type: ignore[no-any-return]

    async def upsert_status(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj``, or if it exists by then, write its status (``replace_status``);
        committed in a group. For a Node registering: twice at once is one create."""
        return await self._objects_group.submit(("upsert", kind, obj))  # type: ignore[no-any-return]

    async def _commit_objects(self, batch: list[tuple[str, str, dict[str, Any]]]
                              ) -> list[dict[str, Any] | Exception | None]:
        """Ops: "upsert" (create, or if it exists a status write), "status" (only the
        submitted ``status`` is taken: the rest is the current object's, so a spec changed
        meanwhile is not undone), "touch" (the current object under a new version)."""
        async with self._write:  # the counter, the cache and the feed move together
            staged: dict[Key, dict[str, Any]] = {}
            results: list[dict[str, Any] | Exception | None] = []
            changes: list[Change] = []
            async with self.engine.begin() as conn:
                rv = int((await conn.execute(select(counter.c.resource_version))).scalar_one())
                for op, kind, obj in batch:
                    key = key_of(kind, obj)
                    current = staged.get(key) or self.cache.get(key)
                    create = op == "upsert" and current is None
                    if create:
                        new = copy.deepcopy(obj)
                        new["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=rfc3339())
                    elif current is None:
                        results.append(None if op == "touch" else
                                       NotFound(f'{kind} "{key[2]}" not found'))
                        continue
                    elif op == "touch":
                        new = copy.deepcopy(current)
                    else:
                        uid = obj.get("metadata", {}).get("uid")
                        if uid and uid != current["metadata"]["uid"]:
                            results.append(NotFound(f'{kind} "{key[2]}" was deleted and created '
                                                    "again: this status is for the old one"))
                            continue
                        if obj.get("status") == current.get("status"):
                            results.append(current)
                            continue
                        new = {**copy.deepcopy(current), "status": copy.deepcopy(obj.get("status"))}
                    rv += 1
                    new["metadata"]["resourceVersion"] = str(rv)
                    if create:
                        await conn.execute(insert(objects).values(
                            kind=kind, namespace=key[1], name=key[2], uid=new["metadata"]["uid"],
                            resource_version=rv, sync_version=rv, body=json.dumps(new)))
                        changes.append(Change("ADDED", kind, new, rv))
                    else:
                        touch = op == "touch"
                        values: dict[str, Any] = {"resource_version": rv, "body": json.dumps(new)}
                        if touch:
                            values["sync_version"] = rv
                        await conn.execute(update(objects).where(
                            objects.c.kind == kind, objects.c.namespace == key[1],
                            objects.c.name == key[2]).values(**values))
                        changes.append(Change("MODIFIED", kind, new, rv, not touch))
                    staged[key] = new
                    results.append(new)
                if changes:
                    await conn.execute(update(counter).where(counter.c.id == 1)
                                       .values(resource_version=rv))
            for change in changes:
                key = key_of(change.kind, change.obj)
                self.cache[key] = change.obj
                if not change.status_only:
                    self.sync_versions[key] = change.resource_version
                self._publish(change)
            return results

    async def touch(self, key: Key) -> dict[str, Any] | None:
        """Write ``key`` again unchanged under a new resourceVersion, so that nodes take it
        (they refuse versions they have seen); group-committed. None if it does not exist."""
        return await self._objects_group.submit(  # type: ignore[no-any-return]
            ("touch", key[0], {"metadata": {"namespace": key[1], "name": key[2]}}))

    async def advance_to(self, resource_version: int) -> None:
        """Move the version counter up to ``resource_version`` (never down): versions a node
        has already seen are not handed out again."""
        async with self._write:
            if resource_version <= self.resource_version:
                return
            async with self.engine.begin() as conn:
                await conn.execute(update(counter).where(
                    counter.c.id == 1, counter.c.resource_version < resource_version)
                    .values(resource_version=resource_version))
            self.resource_version = resource_version

    async def delete(self, key: Key) -> dict[str, Any]:
        async with self._write:
            current = self.cache.get(key)
            if current is None:
                raise NotFound(f'{key[0]} "{key[2]}" not found')
            async with self.engine.begin() as conn:
                rv = await self._bump(conn)
                await conn.execute(delete(objects).where(
                    objects.c.kind == key[0], objects.c.namespace == key[1],
                    objects.c.name == key[2]))
            del self.cache[key]
            self.sync_versions.pop(key, None)
            gone = copy.deepcopy(current)
            gone["metadata"]["resourceVersion"] = str(rv)
            self._publish(Change("DELETED", key[0], gone, rv))
            return gone

    # ------------------------------------------------------------ per-node sync records

    async def acked(self, node: str) -> dict[Key, tuple[str, int]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(
                object_sync.c.kind, object_sync.c.namespace, object_sync.c.name,
                object_sync.c.uid, object_sync.c.resource_version).where(
                object_sync.c.node == node))
            return {(k, ns, n): (uid, int(rv)) for k, ns, n, uid, rv in rows}

    async def record_ack(self, node: str, key: Key, uid: str, rv: int | None) -> None:
        """Remember what ``node`` holds: ``rv`` None means it deleted the object. Committed
        in a group with the other acks waiting."""
        await self._acks_group.submit((node, {key: (uid, rv)}, False))

    async def replace_acked(self, node: str, held: dict[Key, tuple[str, int]]) -> None:
        """Record that ``node`` holds exactly ``held`` (what it reported on connecting)."""
        await self._acks_group.submit((node, held, True))

    async def forget_node(self, node: str) -> None:
        await self._acks_group.submit((node, {}, True))

    async def _commit_acks(self, batch: list[tuple[str, dict[Key, tuple[str, int | None]],
                                                   bool]]) -> list[None]:
        """Acks, node records replaced (an inventory) and forgotten (a node deleted), in the
        order they were made, so an ack still waiting cannot outlive a newer record."""
        async with self.engine.begin() as conn:
            for node, entries, whole in batch:
                if whole:
                    await conn.execute(delete(object_sync).where(object_sync.c.node == node))
                for key, (uid, rv) in entries.items():
                    if not whole:
                        await conn.execute(delete(object_sync).where(
                            object_sync.c.node == node, object_sync.c.kind == key[0],
                            object_sync.c.namespace == key[1], object_sync.c.name == key[2]))
                    if rv is not None:
                        await conn.execute(insert(object_sync).values(
                            node=node, kind=key[0], namespace=key[1], name=key[2], uid=uid,
                            resource_version=rv))
        return [None] * len(batch)

    # ------------------------------------------------------------ tokens and certificates

    # ------------------------------------------------------------ uploads to forward

    async def add_upload(self, node: str, topic: str, payload: str, cap: int) -> int:
        """Queue an upload; beyond ``cap`` queued, the oldest go. Returns how many went."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(uploads).values(node=node, topic=topic, payload=payload,
                                                      received=time.time()))
            count = (await conn.execute(select(func.count()).select_from(uploads))).scalar_one()
            if count <= cap:
                return 0
            oldest = select(uploads.c.seq).order_by(uploads.c.seq).limit(count - cap)
            await conn.execute(delete(uploads).where(uploads.c.seq.in_(oldest)))
            return int(count - cap)

    async def pending_uploads(self, limit: int = 100) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(uploads).order_by(uploads.c.seq).limit(limit))
            return [dict(row._mapping) for row in rows]

    async def upload_done(self, seq: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(uploads).where(uploads.c.seq == seq))

    async def add_token(self, digest: str, expires: float) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(delete(join_tokens).where(join_tokens.c.expires < now))
            await conn.execute(insert(join_tokens).values(digest=digest, expires=expires,
                                                          created=now))

    async def token_valid(self, digest: str) -> bool:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(join_tokens.c.expires).where(
                join_tokens.c.digest == digest))).first()
        return row is not None and row[0] > time.time()

    async def record_cert(self, serial: str, node: str, not_after: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(issued_certs).values(serial=serial, node=node,
                                                           not_after=not_after))

    async def revoke_node(self, node: str) -> list[str]:
        async with self.engine.begin() as conn:
            serials = [row[0] for row in await conn.execute(select(issued_certs.c.serial).where(
                issued_certs.c.node == node, issued_certs.c.revoked_at.is_(None)))]
            if serials:
                await conn.execute(update(issued_certs).where(
                    issued_certs.c.serial.in_(serials)).values(revoked_at=time.time()))
        return serials

    async def revoked_serials(self) -> set[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(issued_certs.c.serial).where(
                issued_certs.c.revoked_at.is_not(None), issued_certs.c.not_after > time.time()))
            return {row[0] for row in rows}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = ("resourceVersion", "managedFields")

    def clean(o: dict[str, Any]) -> dict[str, Any]:
        return {**o, "metadata": {k: v for k, v in o.get("metadata", {}).items()
                                  if k not in strip}}

    return clean(a) == clean(b)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def open_store(url: str) -> ObjectStore:
    engine = create_async_engine(url)
    if url.startswith("sqlite"):
        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

    store = ObjectStore(engine)
    await store.open()
    return store
