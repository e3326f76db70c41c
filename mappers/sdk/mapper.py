"""The mapper process: registers with edgecore over DMI, serves DeviceMapperService,
runs one :class:`DeviceRunner` per device it is given.

Registration is retried with backoff until edgecore answers. A report that
fails because edgecore went away triggers a new registration, whose answer
(the full device list) is reconciled with what runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mappers.sdk.device import DeviceRunner, Driver, now_ms
from mappers.sdk.errors import DeviceError, MapperConfigError
from mappers.sdk.spec import device_spec
from moorage import __version__, config, sdnotify
from moorage.aio import sleep_or_stop, wait_any
from moorage.backoff import full_jitter
from moorage.config import duration
from moorage.dmi import api_pb2 as dmi
from moorage.dmi import api_pb2_grpc as dmi_grpc
from moorage.dmi.convert import ConversionError

log = logging.getLogger("mappers")

API_VERSION = "v1beta1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class MapperConfig:
    """The mapper's config file (YAML)."""

    name: str = ""
    protocol: str = ""
    edgecore_sock: str = "/var/lib/moorage/edge/dmi.sock"  # `moorage join`'s default data dir
    socket: str = ""
    offline_retry_max: float = duration(30.0)
    call_timeout: float = duration(5.0)

    def validate(self, where: str) -> None:
        for field, value in (("edgecoreSock", self.edgecore_sock), ("socket", self.socket)):
            if not value.startswith("/"):
                raise MapperConfigError(f"{where}.{field}: an absolute unix socket path is "
                                        f"required, got {value!r}")


def load_config(path: str | Path, **overrides: Any) -> MapperConfig:
    cfg = config.load(MapperConfig, path)
    for name, value in overrides.items():
        if value:
            setattr(cfg, name, value)
    cfg.validate("config")
    return cfg


def _dmi_twins(runner: DeviceRunner, names: list[str]) -> list[dmi.Twin]:
    return [dmi.Twin(propertyName=t["propertyName"],
                     reported=dmi.TwinProperty(**t["reported"]) if "reported" in t else None,
                     observedDesired=dmi.TwinProperty(**t["observedDesired"])
                     if "observedDesired" in t else None)
            for t in runner.twins(names)]


def _remove(sock: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()


def _unix(path: str) -> str:
    return f"unix://{path}" if path.startswith("/") else f"unix:{path}"


class Mapper(dmi_grpc.DeviceMapperServiceServicer):
    def __init__(self, cfg: MapperConfig, driver: Driver) -> None:
        self.cfg, self.driver = cfg, driver
        self.cfg.name = cfg.name or driver.protocol
        self.cfg.protocol = cfg.protocol or driver.protocol
        self.models: dict[tuple[str, str], dmi.DeviceModel] = {}
        self.devices: dict[tuple[str, str], dmi.Device] = {}
        self.runners: dict[tuple[str, str], tuple[DeviceRunner, asyncio.Task[None]]] = {}
        self.stopping = asyncio.Event()
        self.registered = asyncio.Event()
        self.reregister = asyncio.Event()
        self._broken: set[asyncio.Task[None]] = set()  # keeps report tasks referenced
        self.channel: grpc.aio.Channel | None = None
        self.manager: dmi_grpc.DeviceManagerServiceStub | None = None

    # ------------------------------------------------------------ devices

    def _start(self, device: dmi.Device) -> None:
        key = (device.namespace or "default", device.name)
        try:
            spec = device_spec(device, self.models)
            self.driver.check(spec)
        except (DeviceError, ConversionError) as exc:
            log.error("device %s/%s cannot run: %s", *key, exc)
            self._stop(key)
            # Shown at the cloud on every property, so the operator sees why nothing flows.
            task = asyncio.create_task(self._report_broken(device, str(exc)))
            self._broken.add(task)
            task.add_done_callback(self._broken.discard)
            return
        self.devices[key] = device
        running = self.runners.get(key)
        if running is not None:
            runner, task = running
            if runner.spec.same_wiring(spec) and not task.done():
                runner.update(spec)  # desired values only: no restart, no reconnect
                return
            self._stop(key)
        runner = DeviceRunner(spec, self.driver, self._report, self._report_state,
                              self.cfg.offline_retry_max)
        task = asyncio.create_task(runner.run(self.stopping), name=f"device {key[0]}/{key[1]}")
        self.runners[key] = (runner, task)
        log.info("device %s/%s started (%d properties)", *key, len(spec.properties))

    def _stop(self, key: tuple[str, str]) -> None:
        self.devices.pop(key, None)
        running = self.runners.pop(key, None)
        if running is not None:
            running[1].cancel()
            log.info("device %s/%s stopped", *key)

    def _reconcile(self, devices: list[dmi.Device], models: list[dmi.DeviceModel]) -> None:
        self.models = {(m.namespace or "default", m.name): m for m in models}
        wanted = {(d.namespace or "default", d.name): d for d in devices
                  if d.spec.protocol.protocolName in ("", self.cfg.protocol)}
        for key in set(self.runners) - set(wanted):
            self._stop(key)
        for device in wanted.values():
            self._start(device)

    # ------------------------------------------------------------ reporting to edgecore

    async def _call(self, method: str, request: Any) -> bool:
        if self.manager is None:
            return False
        try:
            await getattr(self.manager, method)(request, timeout=self.cfg.call_timeout)
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                if self.registered.is_set():
                    log.warning("edgecore does not answer (%s); registering again",
                                exc.details())
                self.registered.clear()
                self.reregister.set()
            else:
                log.warning("edgecore refused %s: %s", method, exc.details())
            return False

    async def _report(self, runner: DeviceRunner, names: list[str]) -> None:
        twins = _dmi_twins(runner, names)
        await self._call("ReportDeviceStatus", dmi.ReportDeviceStatusRequest(
            deviceName=runner.spec.name, deviceNamespace=runner.spec.namespace,
            reportedDevice=dmi.DeviceStatus(twins=twins, reportToCloud=True)))

    async def _report_state(self, runner: DeviceRunner, state: str) -> None:
        await self._call("ReportDeviceStates", dmi.ReportDeviceStatesRequest(
            deviceName=runner.spec.name, deviceNamespace=runner.spec.namespace, state=state))

    async def _report_broken(self, device: dmi.Device, reason: str) -> None:
        metadata = {"timestamp": now_ms(), "error": reason}
        await self._call("ReportDeviceStatus", dmi.ReportDeviceStatusRequest(
            deviceName=device.name, deviceNamespace=device.namespace,
            reportedDevice=dmi.DeviceStatus(twins=[
                dmi.Twin(propertyName=p.name, reported=dmi.TwinProperty(metadata=metadata))
                for p in device.spec.properties])))
        await self._call("ReportDeviceStates", dmi.ReportDeviceStatesRequest(
            deviceName=device.name, deviceNamespace=device.namespace, state="unknown"))

    async def _register_forever(self) -> None:
        """Register now, and again whenever edgecore was lost."""
        while not self.stopping.is_set():
            delays = full_jitter(0.2, 10.0)
            last = ""
            while not self.stopping.is_set():
                request = dmi.MapperRegisterRequest(withData=True, mapper=dmi.MapperInfo(
                    name=self.cfg.name, version=__version__, api_version=API_VERSION,
                    protocol=self.cfg.protocol, address=self.cfg.socket.encode(),
                    state="running"))
                try:
                    assert self.manager is not None
                    answer = await self.manager.MapperRegister(request,
                                                               timeout=self.cfg.call_timeout)
                    break
                except grpc.aio.AioRpcError as exc:
                    reason = exc.details() or exc.code().name
                    level = logging.WARNING if reason != last else logging.DEBUG
                    log.log(level, "registering with edgecore at %s failed: %s; retrying",
                            self.cfg.edgecore_sock, reason)
                    last = reason
                    if await sleep_or_stop(next(delays), self.stopping):
                        return
            else:
                return
            log.info("registered with edgecore as %s (protocol %s): %d device(s), %d model(s)",
                     self.cfg.name, self.cfg.protocol, len(answer.deviceList),
                     len(answer.modelList))
            self._reconcile(list(answer.deviceList), list(answer.modelList))
            for runner, _ in self.runners.values():
                if runner.state:
                    await self._report_state(runner, runner.state)
            self.registered.set()
            self.reregister.clear()
            await wait_any(None, self.reregister, self.stopping)

    # ------------------------------------------------------------ DeviceMapperService

    async def RegisterDevice(self, request: dmi.RegisterDeviceRequest,
                             context: grpc.aio.ServicerContext) -> dmi.RegisterDeviceResponse:
        self._start(request.device)
        return dmi.RegisterDeviceResponse(deviceName=request.device.name,
                                          deviceNamespace=request.device.namespace)

    async def UpdateDevice(self, request: dmi.UpdateDeviceRequest,
                           context: grpc.aio.ServicerContext) -> dmi.UpdateDeviceResponse:
        self._start(request.device)
        return dmi.UpdateDeviceResponse()

    async def RemoveDevice(self, request: dmi.RemoveDeviceRequest,
                           context: grpc.aio.ServicerContext) -> dmi.RemoveDeviceResponse:
        self._stop((request.deviceNamespace or "default", request.deviceName))
        return dmi.RemoveDeviceResponse()

    async def CreateDeviceModel(self, request: dmi.CreateDeviceModelRequest,
                                context: grpc.aio.ServicerContext
                                ) -> dmi.CreateDeviceModelResponse:
        self.models[(request.model.namespace or "default", request.model.name)] = request.model
        return dmi.CreateDeviceModelResponse(deviceModelName=request.model.name,
                                             deviceModelNamespace=request.model.namespace)

    async def UpdateDeviceModel(self, request: dmi.UpdateDeviceModelRequest,
                                context: grpc.aio.ServicerContext
                                ) -> dmi.UpdateDeviceModelResponse:
        key = (request.model.namespace or "default", request.model.name)
        self.models[key] = request.model
        for device in [d for d in self.devices.values()
                       if (d.namespace or "default", d.spec.deviceModelReference) == key]:
            self._start(device)  # accessMode may have changed
        return dmi.UpdateDeviceModelResponse()

    async def RemoveDeviceModel(self, request: dmi.RemoveDeviceModelRequest,
                                context: grpc.aio.ServicerContext
                                ) -> dmi.RemoveDeviceModelResponse:
        self.models.pop((request.modelNamespace or "default", request.modelName), None)
        return dmi.RemoveDeviceModelResponse()

    async def GetDevice(self, request: dmi.GetDeviceRequest,
                        context: grpc.aio.ServicerContext) -> dmi.GetDeviceResponse:
        key = (request.deviceNamespace or "default", request.deviceName)
        device = self.devices.get(key)
        if device is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"device {key[0]}/{key[1]} is not handled by this mapper")
        answer = dmi.Device()
        answer.CopyFrom(device)
        running = self.runners.get(key)
        if running is not None:
            runner = running[0]
            del answer.status.twins[:]
            answer.status.twins.extend(_dmi_twins(runner, [p.name for p in runner.spec.properties]))
        return dmi.GetDeviceResponse(device=answer)

    # ------------------------------------------------------------ process

    def runner(self, namespace: str, name: str) -> DeviceRunner | None:
        running = self.runners.get((namespace, name))
        return running[0] if running else None

    async def run(self, stopping: asyncio.Event) -> None:
        self.stopping = stopping
        sock = Path(self.cfg.socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        _remove(sock)  # left by a crash: nothing listens on it any more
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        server = grpc.aio.server(options=options)
        dmi_grpc.add_DeviceMapperServiceServicer_to_server(self, server)
        old_umask = os.umask(0o177)  # the socket is born owner-only
        try:
            server.add_insecure_port(_unix(str(sock)))
            await server.start()
        finally:
            os.umask(old_umask)
        log.info("mapper %s (protocol %s) serving DMI on %s", self.cfg.name, self.cfg.protocol,
                 sock)
        sdnotify.ready(f"mapper {self.cfg.name} serving DMI on {sock}")
        self.channel = grpc.aio.insecure_channel(_unix(self.cfg.edgecore_sock), options=options)
        self.manager = dmi_grpc.DeviceManagerServiceStub(self.channel)
        registering = asyncio.create_task(self._register_forever())
        pinging = asyncio.create_task(sdnotify.watchdog(stopping))
        try:
            await stopping.wait()
        finally:
            sdnotify.stopping()
            registering.cancel()
            pinging.cancel()
            for key in list(self.runners):
                self._stop(key)
            await server.stop(1.0)
            await self.channel.close()
            await self.driver.close()
            _remove(sock)
