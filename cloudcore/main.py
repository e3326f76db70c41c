"""``cloudcore --config FILE``: the hub, the enrollment service and the admin API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
from pathlib import Path

from certs import CertError, pki
from certs.tls import load_chain, server_context
from cloudcore import config as cloud_config
from cloudcore import metrics as cloud_metrics
from cloudcore.admin import AdminAPI, start_site
from cloudcore.authority import Authority
from cloudcore.config import CloudCoreConfig
from cloudcore.dispatch import Dispatcher
from cloudcore.enrollment import Enrollment
from cloudcore.hub import Hub, HubSettings
from cloudcore.nodes import NodeRegistry
from cloudcore.objects import ObjectStore, open_store, sqlite_url
from cloudcore.servicebus import ServiceBus
from cloudcore.tlsloop import HubEventLoop
from cloudcore.uploads import Uploads
from moorage import __version__, logs, sdnotify
from moorage.errors import MoorageError

log = logging.getLogger("cloudcore")


class CloudCore:
    def __init__(self, cfg: CloudCoreConfig, store: ObjectStore) -> None:
        self.cfg = cfg
        hub_cfg = cfg.modules.cloud_hub
        self.passphrase = logs.passphrase(cfg.key_passphrase_file)
        self.store = store
        ca = pki.load_pair(pki.PairPaths(Path(hub_cfg.tls_ca_file), Path(hub_cfg.tls_ca_key_file)),
                           self.passphrase)
        self.authority = Authority(ca, self.store,
                                   dt.timedelta(seconds=hub_cfg.edge_cert_validity))
        self.token_key = cfg.token_key_path.read_bytes()
        self.registry = NodeRegistry(self.store, hub_cfg.node_grace_period)

        def context(client_cert: str):  # type: ignore[no-untyped-def]
            return server_context(cert_file=hub_cfg.tls_cert_file,
                                  key_file=hub_cfg.tls_private_key_file,
                                  ca_file=hub_cfg.tls_ca_file, client_cert=client_cert,
                                  passphrase=self.passphrase,
                                  ciphers=hub_cfg.tls_cipher_suites,
                                  minimum=hub_cfg.tls_min_version)

        self.contexts = [context("required"), context("optional"), context("required")]
        self.hub = Hub(
            HubSettings(host=hub_cfg.websocket.address, port=hub_cfg.websocket.port,
                        node_limit=hub_cfg.node_limit,
                        max_message_bytes=hub_cfg.max_message_bytes,
                        keepalive_interval=hub_cfg.keepalive_interval,
                        handshake_timeout=hub_cfg.handshake_timeout),
            self.contexts[0], self.registry, set())
        self.enrollment = Enrollment(self.authority, self.store, self.token_key,
                                     hub_cfg.enroll_rate_per_client, hub_cfg.enroll_rate_total,
                                     is_connected=self.hub.is_connected,
                                     on_revoke=self.hub.revoked.update)
        self.dispatcher = Dispatcher(self.store, self.hub)
        self.hub.on_connect = self.dispatcher.node_connected
        self.hub.on_disconnect = self.dispatcher.node_disconnected
        self.hub.on_ack = self.dispatcher.on_ack
        self.hub.on_report = self.dispatcher.apply_report
        self.hub.on_inventory = self.dispatcher.inventory
        self.uploads = Uploads(self.store, cfg.modules.router)
        self.hub.on_upload = self.uploads.accept
        self.servicebus = ServiceBus(cfg.modules.service_bus, self.hub,
                                     hub_cfg.max_message_bytes)
        self.hub.on_servicebus = self.servicebus.upstream
        self.admin = AdminAPI(self.store, self.registry, self.hub, self.token_key,
                              pki.ca_hash(ca.cert), hub_cfg.token_ttl,
                              on_node_deleted=self.dispatcher.node_deleted,
                              synced=self.dispatcher.sync_state, servicebus=self.servicebus)
        self.runners: list = []
        self.stopping = asyncio.Event()

    def reload_certificates(self) -> None:
        """SIGHUP: new handshakes use the server certificate on disk; sessions stay open."""
        hub_cfg = self.cfg.modules.cloud_hub
        try:
            for ctx in self.contexts:
                load_chain(ctx, hub_cfg.tls_cert_file, hub_cfg.tls_private_key_file,
                           self.passphrase)
            serial = pki.serial_hex(pki.load_cert(Path(hub_cfg.tls_cert_file)).serial_number)
        except CertError as exc:
            log.error("certificate reload failed, still serving the previous one: %s", exc)
            return
        log.info("server certificate reloaded (serial %s); %d session(s) kept", serial,
                 len(self.hub.sessions))

    async def _monitor(self) -> None:
        period = max(0.2, min(2.0, self.cfg.modules.cloud_hub.node_grace_period / 4))
        while not self.stopping.is_set():
            try:
                await self.registry.check()
                self.hub.expire_sessions()
            except Exception:
                log.exception("node monitor failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), period)

    async def run(self) -> None:
        hub_cfg = self.cfg.modules.cloud_hub
        self.hub.revoked.update(await self.store.revoked_serials())
        await self.dispatcher.load()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload_certificates)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        metrics_runner = await cloud_metrics.start(self)  # None: off, or its port is taken
        if metrics_runner is not None:
            self.runners.append(metrics_runner)
        if hub_cfg.websocket.enable:
            await self.hub.start()
            log.info("hub listening on wss://%s:%d", hub_cfg.websocket.address,
                     hub_cfg.websocket.port)
        if hub_cfg.https.enable:
            self.runners.append(await start_site(self.enrollment.app(), hub_cfg.https.address,
                                                 hub_cfg.https.port, self.contexts[1]))
            log.info("enrollment service on https://%s:%d", hub_cfg.https.address,
                     hub_cfg.https.port)
        admin_cfg = self.cfg.modules.admin
        if admin_cfg.enable:
            self.runners.append(await start_site(self.admin.app(), admin_cfg.address,
                                                 admin_cfg.port, self.contexts[2]))
            log.info("admin API on https://%s:%d", admin_cfg.address, admin_cfg.port)
        log.info("cloudcore %s ready", __version__)
        sdnotify.ready(f"cloudcore {__version__} serving")  # every listener above accepts
        tasks = [asyncio.create_task(self._monitor()),
                 asyncio.create_task(self.dispatcher.run(self.stopping)),
                 asyncio.create_task(self.uploads.run(self.stopping)),
                 asyncio.create_task(sdnotify.watchdog(self.stopping))]
        await self.stopping.wait()
        log.info("cloudcore stopping")
        sdnotify.stopping()
        await asyncio.gather(*tasks)
        await self.hub.stop()
        for runner in self.runners:
            await runner.cleanup()
        await self.servicebus.close()
        await self.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cloudcore", description=__doc__)
    parser.add_argument("--config", required=True, help="cloudcore.yaml written by moorage init")
    parser.add_argument("--log-level", default=os.environ.get("MOORAGE_LOG_LEVEL", "info"))
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        cfg = cloud_config.load(args.config)
        with asyncio.Runner(loop_factory=HubEventLoop) as runner:
            core = runner.run(_build(cfg))
            runner.run(core.run())
    except (MoorageError, CertError) as exc:
        print(f"cloudcore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cloudcore: {_describe_os_error(exc)} (is another process using the port, or is "
              "the data dir unreadable?)", file=sys.stderr)
        return 2
    return 0


def _describe_os_error(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


async def _build(cfg: CloudCoreConfig) -> CloudCore:
    cfg.database_path.parent.mkdir(parents=True, exist_ok=True)
    store = await open_store(cfg.database.data_source or sqlite_url(cfg.database_path))
    return CloudCore(cfg, store)


if __name__ == "__main__":
    sys.exit(main())
