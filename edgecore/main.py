"""``edgecore --config FILE``: the edge daemon."""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from certs import CertError
from edgecore import config as edge_config
from edgecore.certmanager import CertManager
from edgecore.config import EdgeCoreConfig, check_address
from edgecore.edgehub import EdgeHub
from edgecore.metamanager import MetaManager
from edgecore.nodeinfo import node_object
from edgecore.store import EdgeStore, StoreCorrupt, StoreError
from moorage import __version__, envelope, logs, sdnotify
from moorage.enroll import Endpoint
from moorage.errors import ConfigError, MoorageError

log = logging.getLogger("edgecore")

MAX_PENDING_UPLOADS = 10_000  # apps' uploads waiting for the cloud; beyond it the oldest go


def _local_ip(server: str) -> str:
    """The address this machine uses to reach the cloud: the node's InternalIP by default."""
    host, _, port = server.rpartition(":")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_DGRAM) as probe:
            probe.connect((host.strip("[]"), int(port)))  # UDP: no packet is sent
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def open_store(path: Path) -> EdgeStore:
    """The edge store; a damaged one is moved aside and a new one started, since the cloud
    sends a node everything it lacks when it connects (the node's inventory is empty)."""
    try:
        try:
            return EdgeStore(path)
        except StoreCorrupt as exc:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            aside = path.with_name(f"{path.name}.damaged-{stamp}")
            for n in range(1, 100):  # never overwrite an earlier damaged copy
                if not aside.exists():
                    break
                aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{path}{suffix}")
                if part.exists():
                    part.rename(f"{aside}{suffix}")
            log.error("%s; moved it to %s and starting with an empty store: the cloud sends "
                      "this node its objects again when it connects (reports not yet sent "
                      "are lost). Until then the node runs nothing.", exc, aside)
            return EdgeStore(path)
    except (sqlite3.Error, OSError, StoreError) as exc:
        raise ConfigError(f"cannot open the edge store {path}: {exc}") from None


class EdgeCore:
    def __init__(self, cfg: EdgeCoreConfig) -> None:
        self.cfg = cfg
        hub_cfg = cfg.modules.edge_hub
        host_port = hub_cfg.http_server.removeprefix("https://").rstrip("/")
        host, _, port = host_port.rpartition(":")
        self.certs = CertManager(
            node_name=cfg.node_name, ca_file=Path(hub_cfg.tls_ca_file),
            cert_file=Path(hub_cfg.tls_cert_file), key_file=Path(hub_cfg.tls_private_key_file),
            enrollment=Endpoint(host.strip("[]"), int(port)), ciphers=hub_cfg.tls_cipher_suites,
            passphrase=logs.passphrase(cfg.key_passphrase_file))
        self.certs.check()
        edged = cfg.modules.edged
        self.node_ip = edged.node_ip or _local_ip(hub_cfg.websocket.server)
        self.store = open_store(cfg.database_path)
        self.meta = MetaManager(self.store)
        self.hub = EdgeHub(hub_cfg, cfg.node_name, self.certs.client_context,
                           self.node_object,
                           edged.node_status_update_frequency, self.meta,
                           preflight=self.certs.check)
        meta_cfg = cfg.modules.meta_manager.meta_server
        self.metaserver_address = check_address(meta_cfg.server,
                                                meta_cfg.insecure_allow_non_loopback) \
            if meta_cfg.enable else None
        self.stopping = asyncio.Event()

    def _logs(self, path: str, args: dict[str, Any]) -> tuple[int, str]:
        parts = path.split("/")  # logs/<namespace>/<pod>
        if len(parts) != 3:
            return 400, "expected logs/<namespace>/<pod>"
        tail = args.get("tailLines")
        container = args.get("container")
        return self.edged.logs(parts[1], parts[2], container if isinstance(container, str)
                               else None, tail if isinstance(tail, int) else None)

    def _runtime_changed(self) -> None:
        self.meta.report_node_status(self.cfg.node_name, self.node_object()["status"])

    def _upload(self, topic: str, payload: bytes) -> None:
        """An app's message on $hw/events/upload/#: to the cloud through the outbox."""
        try:
            self.store.enqueue("uploads", f"default/upload/{self.cfg.node_name}",
                               envelope.UPLOAD, {"topic": topic,
                                                 "payload": base64.b64encode(payload).decode()},
                               cap=MAX_PENDING_UPLOADS)
        except StoreError as exc:
            log.error("upload on %s not queued: %s", topic, exc)
            return
        self.meta.changed()

    def node_object(self) -> dict[str, Any]:
        edged_cfg = self.cfg.modules.edged
        node = node_object(self.cfg.node_name, self.node_ip, edged_cfg.labels)
        edged = getattr(self, "edged", None)
        if edged is not None:
            info = edged.runtime_info
            if info.get("name"):
                node["status"]["nodeInfo"]["containerRuntimeVersion"] = \
                    f"{info['name']}://{info.get('version', '')}"
            node["status"]["conditions"] = edged.node_conditions()
        return node

    async def _ready(self) -> None:
        """systemd's READY=1 once the local servers serve: the cloud may well be away."""
        twin = getattr(self, "devicetwin", None)
        if twin is not None:
            await twin.serving.wait()  # never set if the DMI server fails: no READY
        sdnotify.ready(f"node {self.cfg.node_name} serving from its local store")
        await sdnotify.watchdog(self.stopping)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("edgecore %s starting as node %s", __version__, self.cfg.node_name)
        runner = None
        if self.metaserver_address is not None:
            from aiohttp import web  # only when enabled: it costs ~13 MB of RSS

            from edgecore.metaserver import MetaServer

            runner = web.AppRunner(MetaServer(self.meta).app(), access_log=None,
                                   handle_signals=False)
            await runner.setup()
            host, port = self.metaserver_address
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            log.info("MetaServer on http://%s:%d serving %d object(s) from the local store",
                     host, port, len(self.store.keys()))
        bus = self.cfg.modules.service_bus
        self.servicebus = None
        if bus.enable:
            from edgecore.servicebus import ServiceBus

            self.servicebus = ServiceBus(bus, self.hub.request)
            await self.servicebus.start()
            self.hub.async_queries["servicebus"] = self.servicebus.call_app
        else:
            self.hub.async_queries["servicebus"] = _servicebus_disabled
        metrics_runner = None
        if self.cfg.modules.metrics.enable:
            from edgecore import metrics  # only when enabled: aiohttp, prometheus_client

            metrics_runner = await metrics.start(self)
        tasks = [asyncio.create_task(self.hub.run(self.stopping))]
        edged_cfg = self.cfg.modules.edged
        if edged_cfg.enable:
            from edgecore.edged import Edged
            from edgecore.runtime import CRIClient

            self.edged = Edged(self.meta, CRIClient(edged_cfg.remote_runtime_endpoint),
                               self.cfg.node_name, self.cfg.data_path,
                               period=edged_cfg.sync_period,
                               backoff_base=edged_cfg.crash_loop_backoff_base,
                               backoff_cap=edged_cfg.crash_loop_backoff_max,
                               node_ip=self.node_ip)
            self.hub.queries["logs"] = self._logs
            self.edged.on_runtime_change = self._runtime_changed
            tasks.append(asyncio.create_task(self.edged.run(self.stopping)))
        twin_cfg = self.cfg.modules.device_twin
        if twin_cfg.enable:
            from edgecore.devicetwin import DeviceTwin

            self.devicetwin = DeviceTwin(self.meta, self.cfg.dmi_sock_path,
                                         twin_cfg.dmi_sock_group, twin_cfg.max_message_bytes)
            bus_cfg = self.cfg.modules.event_bus
            if bus_cfg.enable:
                from edgecore.eventbus import EventBus

                self.devicetwin.bus = EventBus(bus_cfg, self.cfg.node_name,
                                               self.devicetwin.update_from_app, self._upload)
                tasks.append(asyncio.create_task(self.devicetwin.bus.run(self.stopping)))
            tasks.append(asyncio.create_task(self.devicetwin.run(self.stopping)))
        if self.cfg.modules.edge_hub.rotate_certificates:
            tasks.append(asyncio.create_task(self.certs.run(self.hub.switch, self.stopping)))
        ready = asyncio.create_task(self._ready())
        await self.stopping.wait()
        log.info("edgecore stopping")
        sdnotify.stopping()
        ready.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if self.servicebus is not None:
            await self.servicebus.close()
        self.store.close()


async def _servicebus_disabled(content: Any) -> dict[str, Any]:
    from moorage.servicebus import HTTPResponse

    return HTTPResponse.error(503, "the ServiceBus is off on this node: set "
                                   "modules.serviceBus.enable: true in its edgecore.yaml"
                              ).to_content()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecore", description=__doc__)
    parser.add_argument("--config", required=True, help="edgecore.yaml written by moorage join")
    parser.add_argument("--log-level", default=os.environ.get("MOORAGE_LOG_LEVEL", "info"))
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        cfg = edge_config.load(args.config)
        asyncio.run(_run(cfg))
    except (MoorageError, CertError) as exc:
        print(f"edgecore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"edgecore: {exc.strerror or exc}{where} (is another process using the port, or "
              "is the data dir unreadable?)", file=sys.stderr)
        return 2
    return 0


async def _run(cfg: EdgeCoreConfig) -> None:
    await EdgeCore(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
