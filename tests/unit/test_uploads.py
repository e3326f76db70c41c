"""Uploads: what the cloud accepts from a node, and the edge's bounded queue of them."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cloudcore.uploads import MAX_PAYLOAD_BYTES, parse_upload
from edgecore.store import EdgeStore
from moorage.errors import ProtocolError


def test_uploads_are_checked_before_they_are_queued() -> None:
    good = {"topic": "$hw/events/upload/a/b", "payload": base64.b64encode(b"x").decode()}
    assert parse_upload(good) == ("$hw/events/upload/a/b", "eA==")
    for content, message in (
            ("text", "expected {topic, payload}"),
            ({**good, "topic": "$hw/events/device/x"}, "expected \\$hw/events/upload/"),
            ({**good, "topic": "$hw/events/upload/" + "x" * 2000}, "at most 1024"),
            ({**good, "payload": "!!"}, "not base64"),
            ({**good, "payload": "A" * (MAX_PAYLOAD_BYTES * 2)}, "at most")):
        with pytest.raises(ProtocolError, match=message):
            parse_upload(content)


def test_the_edge_keeps_at_most_cap_uploads_and_never_drops_other_reports(
        tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge.db")
    try:
        store.enqueue("pods/default/p", "default/podstatus/p", "update", {"status": {}})
        for i in range(10):
            store.enqueue("uploads", "default/upload/n", "upload", {"i": i}, cap=3)
        contents = [e.content for e in store.pending(20)]
        assert contents == [{"status": {}}, {"i": 7}, {"i": 8}, {"i": 9}]
    finally:
        store.close()
