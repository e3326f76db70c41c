"""Uploads: messages edge apps publish on ``$hw/events/upload/#``, forwarded by the cloud.

The edge sends each through its outbox; the cloud queues it in its store before it
acks, and a forwarder POSTs it to ``modules.router.uploadURL``, deleting it only after a
2xx answer. So nothing is lost across a cut link or a restart of either side, and an
endpoint that is down gets the backlog when it is back (up to ``maxPending``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout

from cloudcore.config import Router
from cloudcore.objects import ObjectStore, rfc3339
from moorage.aio import sleep_or_stop, wait_any
from moorage.backoff import doubling
from moorage.errors import ProtocolError

log = logging.getLogger("cloudcore.uploads")

MAX_TOPIC_CHARS = 1024
MAX_PAYLOAD_BYTES = 1024 * 1024


def parse_upload(content: Any) -> tuple[str, str]:
    """An upload message's content -> (topic, base64 payload); checked, never trusted."""
    if not isinstance(content, dict):
        raise ProtocolError("content: expected {topic, payload}")
    topic, payload = content.get("topic"), content.get("payload", "")
    if not isinstance(topic, str) or not topic.startswith("$hw/events/upload/") or \
            len(topic) > MAX_TOPIC_CHARS:
        raise ProtocolError("content.topic: expected $hw/events/upload/... (at most "
                            f"{MAX_TOPIC_CHARS} characters)")
    if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_BYTES * 4 // 3 + 4:
        raise ProtocolError(f"content.payload: expected base64 of at most {MAX_PAYLOAD_BYTES} "
                            "bytes")
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("content.payload: not base64") from None
    return topic, payload


class Uploads:
    def __init__(self, store: ObjectStore, cfg: Router) -> None:
        self.store, self.cfg = store, cfg
        self.wake = asyncio.Event()
        self.dropped_nodes: set[str] = set()
        self.forwarded = 0

    async def accept(self, node: str, content: Any) -> None:
        """Queue one upload from ``node`` (the hub acks after this returns)."""
        topic, payload = parse_upload(content)
        if not self.cfg.upload_url:
            if node not in self.dropped_nodes:
                self.dropped_nodes.add(node)
                log.info("node %s sends uploads (%s); they are dropped: set "
                         "modules.router.uploadURL in cloudcore.yaml to receive them", node,
                         topic)
            return
        lost = await self.store.add_upload(node, topic, payload, self.cfg.max_pending)
        if lost:
            log.warning("%d upload(s) dropped: more than %d wait for %s (modules.router."
                        "maxPending)", lost, self.cfg.max_pending, self.cfg.upload_url)
        self.wake.set()

    async def _post(self, session: ClientSession, row: dict[str, Any]) -> str:
        """'' when delivered, else why not."""
        body = {"node": row["node"], "topic": row["topic"], "payload": row["payload"],
                "received": rfc3339(row["received"])}
        try:
            async with session.post(self.cfg.upload_url, json=body,
                                    timeout=ClientTimeout(total=self.cfg.timeout)) as answer:
                await answer.read()
                if 200 <= answer.status < 300:
                    return ""
                return f"it answered {answer.status}"
        except TimeoutError:
            return f"no answer within {self.cfg.timeout:g}s"
        except ClientError as exc:
            return str(exc) or type(exc).__name__

    async def run(self, stopping: asyncio.Event) -> None:
        if not self.cfg.upload_url:
            return
        delays = doubling(1.0, 30.0)
        last_error = ""
        async with ClientSession() as session:
            while not stopping.is_set():
                rows = await self.store.pending_uploads()
                if not rows:
                    self.wake.clear()
                    await wait_any(30.0, self.wake, stopping)
                    continue
                for row in rows:
                    error = await self._post(session, row)
                    if error:
                        if error != last_error:
                            log.warning("forwarding uploads to %s failed (%s); retrying with "
                                        "backoff", self.cfg.upload_url, error)
                        last_error = error
                        await sleep_or_stop(next(delays), stopping)
                        break
                    if last_error:
                        log.info("forwarding uploads to %s works again", self.cfg.upload_url)
                        last_error, delays = "", doubling(1.0, 30.0)
                    await self.store.upload_done(row["seq"])
                    self.forwarded += 1
