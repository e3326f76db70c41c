"""Logging for the daemons: one line per event on stderr, journald-friendly."""

from __future__ import annotations

import json
import logging
import os
import sys


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        # journald stamps each line itself: do not print a second timestamp.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (one line per refused handshake) duplicates our own lines.
    for noisy in ("websockets", "aiohttp.access", "aiohttp.server"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def passphrase(file: str = "") -> bytes | None:
    """The passphrase of encrypted keys: from a file if configured, else the environment."""
    if file:
        with open(file, "rb") as handle:
            return handle.read(4096).strip() or None
    value = os.environ.get("MOORAGE_KEY_PASSPHRASE")
    return value.encode() if value else None
