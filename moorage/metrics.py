"""The operations endpoint both daemons serve: ``/metrics``, ``/healthz`` and ``/readyz``.

One aiohttp site in the daemon's own event loop, so collectors read the daemon's
state from the loop's thread (no locks, and the edge's sqlite3 connection is never
used from two threads). Each daemon has its own ``CollectorRegistry``, never the
global one.

Import this module only when metrics are enabled: aiohttp and prometheus_client
cost memory that a small edge node does not spend otherwise.

- ``/metrics``: Prometheus text format (OpenMetrics when the scraper asks for it).
- ``/healthz``: 200 ``ok`` whenever the event loop answers, i.e. the process is alive.
- ``/readyz``: 200 or 503 with a JSON body ``{"ready": bool, "checks": {...}}``; what
  is checked is the daemon's business (see ``cloudcore.metrics``, ``edgecore.metrics``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

# (ready, checks): checks name each part and say how it is, for people reading the body.
Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
READY_TIMEOUT = 5.0


def app(registry: CollectorRegistry, ready: Readiness) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(registry), headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        try:
            ok, checks = await asyncio.wait_for(ready(), READY_TIMEOUT)
        except TimeoutError:
            ok, checks = False, {"readiness": f"checks did not finish in {READY_TIMEOUT:g}s"}
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    return application


async def serve(registry: CollectorRegistry, ready: Readiness, host: str, port: int,
                log: logging.Logger) -> web.AppRunner | None:
    """Start the endpoint; None (and one error line) when the port cannot be bound.

    A busy metrics port does not stop the daemon: its real work matters more than
    its figures (and 9091 is also the Prometheus Pushgateway's default port).
    """
    runner = web.AppRunner(app(registry, ready), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        log.error("metrics endpoint not started: cannot listen on %s:%d (%s); set "
                  "modules.metrics to a free port, or disable it", host, port,
                  exc.strerror or exc)
        return None
    log.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)", host, port)
    return runner
