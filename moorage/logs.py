"""Logging for the daemons: one line per event on stderr, journald-friendly."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class _JSONFormatter(logging.Formatter):
    """One JSON object per line (tracebacks inside it): time (UTC, RFC 3339), level,
    logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _JournalFormatter(logging.Formatter):
    """No timestamp (journald stamps each line) and an sd-daemon ``<N>`` prefix, so the
    journal records the level as the entry's priority (``journalctl -p warning``)."""

    PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for lvl, p in self.PRIORITY.items() if record.levelno >= lvl), 7)
        return f"<{prio}>{super().format(record)}"


def journal_stderr(env: dict[str, str] | None = None, fd: int = 2) -> bool:
    """True when stderr is systemd's journal stream: ``JOURNAL_STREAM`` names its
    device:inode (systemd.exec(5)). A mere inherited variable is not enough: a child
    whose stderr was redirected elsewhere keeps the variable but not the stream."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(fd)
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    elif journal_stderr():
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
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
