"""An event loop whose TLS connections are cheap and whose handshake failures are visible.

CPython 3.11's ``asyncio.sslproto.SSLProtocol`` gives every TLS connection a
256 KiB read buffer, which dominates the memory of thousands of idle edge
connections; frames are capped far below that anyway. It also reports failed
handshakes only in debug mode, leaving operators blind to refused clients, and
drops the TLS alert that would tell the client why. The
loop below uses a subclass that fixes both. It overrides private asyncio hooks
(``_make_ssl_transport``), checked against CPython 3.11 and 3.12.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from asyncio import sslproto
from collections import Counter
from typing import Any

from certs.tls import describe_tls_error

log = logging.getLogger("cloudcore.tls")

# 4 KiB rather than a whole TLS record (16 KiB): 12 KiB less per idle node (82.7 -> 70.7
# KiB per connection at 2,000 nodes); bulk reads run at ~0.6x, which only the rare large
# message (a 5 MB ServiceBus body: ~18 ms instead of ~11 ms) notices.
SSL_READ_BUFFER = 4 * 1024


class _SmallBufferSSLProtocol(sslproto.SSLProtocol):
    max_size = SSL_READ_BUFFER

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None and self._server_side:
            peer = self._transport.get_extra_info("peername") if self._transport else None
            where = f"{peer[0]}:{peer[1]}" if peer else "unknown peer"
            dropped = (isinstance(handshake_exc, type)
                       and issubclass(handshake_exc, TimeoutError | ConnectionError)) or \
                isinstance(handshake_exc, TimeoutError | ConnectionError)
            if dropped:
                # Port probes and load-balancer health checks do this all day long.
                log.debug("connection from %s closed before the TLS handshake ended", where)
            else:
                log.warning("TLS handshake refused from %s: %s", where,
                            describe_tls_error(handshake_exc))
                self._count(handshake_failure_reason(handshake_exc))
            # Send OpenSSL's alert before closing, so the client learns why (the stock
            # protocol aborts with the alert still queued, and clients see a bare EOF).
            with contextlib.suppress(Exception):
                self._process_outgoing()
        super()._on_handshake_complete(handshake_exc)

    def _check_handshake_timeout(self) -> None:
        if self._state == sslproto.SSLProtocolState.DO_HANDSHAKE and self._server_side:
            self._count("timeout")
        super()._check_handshake_timeout()

    def _count(self, reason: str) -> None:
        failures = getattr(self._loop, "handshake_failures", None)
        if failures is not None:
            failures[reason] += 1


def handshake_failure_reason(exc: BaseException | type[BaseException]) -> str:
    """The metrics label of a refused TLS handshake: ``certificate``, ``tls`` or ``other``."""
    if isinstance(exc, type):
        return "other"
    text = f"{getattr(exc, 'reason', None) or ''} {exc}".upper()
    if "CERT" in text or "UNKNOWN_CA" in text:
        return "certificate"  # missing, expired, from another CA, rejected by the peer
    return "tls" if isinstance(exc, ssl.SSLError) else "other"


class HubEventLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        # Refused TLS handshakes by reason (``handshake_failure_reason`` or ``timeout``),
        # for cloudcore_handshake_failures_total. Connections closed before a handshake
        # began (port probes, health checks) are not counted.
        self.handshake_failures: Counter[str] = Counter()

    def _make_ssl_transport(  # type: ignore[override]
        self, rawsock: Any, protocol: Any, sslcontext: Any, waiter: Any = None, *,
        server_side: bool = False, server_hostname: str | None = None, extra: Any = None,
        server: Any = None, ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Any:
        kwargs = {}
        if ssl_handshake_timeout is not None:
            kwargs["ssl_handshake_timeout"] = ssl_handshake_timeout
        if ssl_shutdown_timeout is not None:
            kwargs["ssl_shutdown_timeout"] = ssl_shutdown_timeout
        ssl_protocol = _SmallBufferSSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, **kwargs)
        asyncio.selector_events._SelectorSocketTransport(  # type: ignore[attr-defined]
            self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport
