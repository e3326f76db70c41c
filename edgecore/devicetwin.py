"""DeviceTwin: the DMI server mappers register with, and the twins of this node's devices.

Mappers call DeviceManagerService on a unix socket (owner-only, or a
configured group). Devices and models that reach the edge store are pushed to
the mapper of their protocol over its DeviceMapperService; a change of desired
values only is an UpdateDevice that the mapper applies without a restart.
Reported twins and states become the device's status in the edge store and go
upstream through the outbox, so readings taken offline reach the cloud later.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from edgecore import eventbus
from edgecore.metamanager import MetaManager
from edgecore.store import StoreError
from moorage.aio import wait_any
from moorage.dmi import api_pb2 as dmi
from moorage.dmi import api_pb2_grpc as dmi_grpc
from moorage.dmi.convert import device_to_dmi, model_to_dmi, twin_dict
from moorage.errors import ManifestError
from moorage.events import Event

log = logging.getLogger("edgecore.devicetwin")

MAX_VALUE_CHARS = 64 * 1024
STATES = ("online", "offline", "ok", "unknown", "disconnected")
CALL_TIMEOUT = 5.0


@dataclass(frozen=True)
class MapperRef:
    name: str
    protocol: str
    address: str  # the mapper's unix socket
    version: str = ""


class TwinError(ValueError):
    """A report that cannot be applied; the message goes back to the mapper."""


def merge_twins(status: dict[str, Any], twins: list[dict[str, Any]],
                properties: set[str]) -> dict[str, Any]:
    """The device status with ``twins`` merged in by property name (pure)."""
    unknown = [t["propertyName"] for t in twins if t["propertyName"] not in properties]
    if unknown:
        raise TwinError(f"the device has no propert{'y' if len(unknown) == 1 else 'ies'} "
                        f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(properties))}")
    for twin in twins:
        for field in ("reported", "observedDesired"):
            value = twin.get(field, {}).get("value", "")
            if len(value) > MAX_VALUE_CHARS:
                raise TwinError(f"twin {twin['propertyName']!r} {field} value is "
                                f"{len(value)} characters; the limit is {MAX_VALUE_CHARS}")
    by_name = {t["propertyName"]: dict(t) for t in status.get("twins") or []
               if isinstance(t, dict) and t.get("propertyName") in properties}
    for twin in twins:
        merged = by_name.setdefault(twin["propertyName"], {"propertyName": twin["propertyName"]})
        for field in ("reported", "observedDesired"):
            if field in twin:
                merged[field] = twin[field]
    return {**status, "twins": [by_name[name] for name in sorted(by_name)]}


def _stamp(side: dict[str, Any]) -> int | None:
    try:
        return int((side.get("metadata") or {}).get("timestamp"))
    except (TypeError, ValueError):
        return None


def kubeedge_twins(device: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The device's twins in the shape KubeEdge's MQTT payloads use: per property, the
    desired value (``expected``) and the reported one (``actual``)."""
    status = device.get("status") or {}
    reported = {t.get("propertyName"): t.get("reported") or {}
                for t in status.get("twins") or [] if isinstance(t, dict)}
    out: dict[str, dict[str, Any]] = {}
    for prop in (device.get("spec") or {}).get("properties") or []:
        name = prop.get("name")
        twin: dict[str, Any] = {}
        desired = (prop.get("desired") or {}).get("value")
        if desired not in (None, ""):
            twin["expected"] = {"value": desired}
        actual = reported.get(name) or {}
        if actual.get("value") not in (None, ""):
            twin["actual"] = {"value": actual["value"], "metadata": {
                "timestamp": _stamp(actual)}}
        out[name] = twin
    return out


def twin_values(twins: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    return {name: ((t.get("expected") or {}).get("value"), (t.get("actual") or {}).get("value"))
            for name, t in twins.items()}


def twin_deltas(twins: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Desired values the device does not report yet."""
    return {name: str(expected) for name, (expected, actual) in twin_values(twins).items()
            if expected is not None and expected != actual}


def reading_outcomes(twins: list[dict[str, Any]]) -> tuple[int, int]:
    """(good reads, failed reads) among reported twins: a reported value whose metadata
    carries an ``error`` is a failed read (pure)."""
    reported = [t["reported"] for t in twins if isinstance(t.get("reported"), dict)]
    failed = sum(1 for r in reported if (r.get("metadata") or {}).get("error"))
    return len(reported) - failed, failed


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec_digest(obj: dict[str, Any]) -> str:
    return json.dumps(obj.get("spec"), sort_keys=True)


class DeviceTwin(dmi_grpc.DeviceManagerServiceServicer):
    def __init__(self, meta: MetaManager, sock_path: Path, group: str = "",
                 max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self.meta, self.store = meta, meta.store
        self.sock_path, self.group = sock_path, group
        self.max_message_bytes = max_message_bytes
        # The MQTT EventBus, when enabled: twins go out on it, apps' updates come in.
        self.bus: eventbus.EventBus | None = None
        self.twins_published: dict[tuple[str, str], dict[str, Any]] = {}
        self._saving = False
        self.mappers: dict[str, MapperRef] = {}  # by protocol
        self.sent: dict[tuple[str, str], tuple[str, str]] = {}  # device -> (mapper, spec)
        self.models_sent: dict[str, set[tuple[str, str]]] = {}  # mapper -> models it has
        self.dirty: set[tuple[str, str, str]] = set()  # (plural, namespace, name)
        self.wake = asyncio.Event()
        self.serving = asyncio.Event()  # set once the DMI socket accepts mappers
        self.channels: dict[str, grpc.aio.Channel] = {}
        # Readings mappers reported, per device (namespace, name): edgecore_device_reads_total.
        self.reads: Counter[tuple[str, str]] = Counter()
        self.read_errors: Counter[tuple[str, str]] = Counter()
        for raw in self.store.state_items("mapper/"):
            ref = MapperRef(**json.loads(raw))
            self.mappers[ref.protocol] = ref
        meta.listeners.append(self._on_event)

    # ------------------------------------------------------------ desired state -> mappers

    def _on_event(self, event: Event) -> None:
        if event.kind not in ("devices", "devicemodels"):
            return
        meta = event.obj.get("metadata", {})
        key = (event.kind, meta.get("namespace", ""), meta.get("name", ""))
        if event.kind == "devices" and event.type == "DELETED":
            for counts in (self.reads, self.read_errors):
                counts.pop((key[1] or "default", key[2]), None)
        if self._saving:
            return  # our own status write
        if event.kind == "devices" and event.type == "MODIFIED":
            sent = self.sent.get(key[1:])
            if sent is not None and sent[1] == spec_digest(event.obj):
                return  # the cloud changed the status only
        if event.kind == "devices" and event.type != "DELETED":
            self._publish(event.obj)  # new desired values: a delta for apps
        self.dirty.add(key)
        self.wake.set()

    def _stub(self, ref: MapperRef) -> dmi_grpc.DeviceMapperServiceStub:
        channel = self.channels.get(ref.address)
        if channel is None:
            channel = self.channels[ref.address] = grpc.aio.insecure_channel(
                f"unix://{ref.address}",
                options=[("grpc.max_send_message_length", self.max_message_bytes),
                         ("grpc.max_receive_message_length", self.max_message_bytes)])
        return dmi_grpc.DeviceMapperServiceStub(channel)

    async def _push(self, key: tuple[str, str, str]) -> bool:
        """Bring the mapper up to date with one object; False to try again later."""
        plural, namespace, name = key
        obj = self.store.get(key)
        if plural == "devicemodels":
            for ref in list(self.mappers.values()):
                stub = self._stub(ref)
                known = self.models_sent.setdefault(ref.name, set())
                if obj is None:
                    await stub.RemoveDeviceModel(dmi.RemoveDeviceModelRequest(
                        modelName=name, modelNamespace=namespace), timeout=CALL_TIMEOUT)
                    known.discard((namespace, name))
                elif (namespace, name) in known:
                    await stub.UpdateDeviceModel(dmi.UpdateDeviceModelRequest(
                        model=model_to_dmi(obj)), timeout=CALL_TIMEOUT)
                else:
                    await stub.CreateDeviceModel(dmi.CreateDeviceModelRequest(
                        model=model_to_dmi(obj)), timeout=CALL_TIMEOUT)
                    known.add((namespace, name))
            return True
        device_key = (namespace, name)
        sent = self.sent.get(device_key)
        protocol = ((obj or {}).get("spec", {}).get("protocol") or {}).get("protocolName", "")
        ref = self.mappers.get(protocol)
        if sent is not None and (obj is None or ref is None or ref.name != sent[0]):
            old = next((m for m in self.mappers.values() if m.name == sent[0]), None)
            if old is not None:
                await self._stub(old).RemoveDevice(dmi.RemoveDeviceRequest(
                    deviceName=name, deviceNamespace=namespace), timeout=CALL_TIMEOUT)
            self.sent.pop(device_key, None)
            sent = None
        if obj is None or ref is None:
            return True  # no mapper for it yet: it gets the device when it registers
        digest = spec_digest(obj)
        if sent is not None and sent[1] == digest:
            return True
        model_name = (obj.get("spec", {}).get("deviceModelRef") or {}).get("name")
        if isinstance(model_name, str) and (namespace, model_name) not in \
                self.models_sent.get(ref.name, set()) and \
                self.store.get(("devicemodels", namespace, model_name)) is not None:
            # Its model first: the model says which properties are writable.
            await self._push(("devicemodels", namespace, model_name))
        device = device_to_dmi(obj)
        stub = self._stub(ref)
        if sent is None:
            await stub.RegisterDevice(dmi.RegisterDeviceRequest(device=device),
                                      timeout=CALL_TIMEOUT)
        else:
            await stub.UpdateDevice(dmi.UpdateDeviceRequest(device=device), timeout=CALL_TIMEOUT)
        self.sent[device_key] = (ref.name, digest)
        return True

    async def _pusher(self, stopping: asyncio.Event) -> None:
        failures: dict[tuple[str, str, str], str] = {}
        while not stopping.is_set():
            await wait_any(2.0 if failures else 60.0, self.wake, stopping)
            self.wake.clear()
            batch, self.dirty = self.dirty, set()
            batch |= set(failures)
            # Models first: a device's writable properties come from its model.
            for key in sorted(batch, key=lambda k: k[0] != "devicemodels"):
                try:
                    await self._push(key)
                    failures.pop(key, None)
                except grpc.aio.AioRpcError as exc:
                    reason = exc.details() or exc.code().name
                    if failures.get(key) != reason:
                        log.warning("could not give %s %s/%s to its mapper: %s; retrying",
                                    key[0], key[1], key[2], reason)
                    failures[key] = reason

    # ------------------------------------------------------------ DeviceManagerService

    async def MapperRegister(self, request: dmi.MapperRegisterRequest,
                             context: grpc.aio.ServicerContext) -> dmi.MapperRegisterResponse:
        info = request.mapper
        address = info.address.decode("utf-8", "replace")
        if not info.name or not info.protocol:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "mapper.name and mapper.protocol are required")
        if not address.startswith("/") or len(address) > 255:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "mapper.address: the absolute path of the mapper's unix socket "
                                f"is required, got {address!r}")
        ref = MapperRef(info.name, info.protocol, address, info.version)
        previous = self.mappers.get(ref.protocol)
        if previous is not None and previous.name != ref.name:
            log.warning("mapper %s replaces mapper %s for protocol %s", ref.name, previous.name,
                        ref.protocol)
        self.mappers[ref.protocol] = ref
        with contextlib.suppress(StoreError):
            self.store.set_state(f"mapper/{ref.name}", json.dumps(asdict(ref)))
        devices = [d for d in self.store.list("devices")
                   if (d.get("spec", {}).get("protocol") or {}).get("protocolName")
                   == ref.protocol]
        models = self.store.list("devicemodels")
        self.models_sent[ref.name] = {(m["metadata"].get("namespace", "default"),
                                       m["metadata"]["name"]) for m in models}
        for device in devices:
            meta = device["metadata"]
            self.sent[(meta.get("namespace", "default"), meta["name"])] = (ref.name,
                                                                          spec_digest(device))
        log.info("mapper %s %s registered for protocol %s (socket %s): given %d device(s)",
                 ref.name, ref.version, ref.protocol, ref.address, len(devices))
        if not request.withData:
            return dmi.MapperRegisterResponse()
        return dmi.MapperRegisterResponse(deviceList=[device_to_dmi(d) for d in devices],
                                          modelList=[model_to_dmi(m) for m in models])

    def _device(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get(("devices", namespace or "default", name))
        if obj is None:
            raise TwinError(f"device {namespace or 'default'}/{name} is not on this node "
                            "(deleted, or bound to another node)")
        return obj

    def _save(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._saving = True  # MetaManager tells its listeners, us too, synchronously
        try:
            self.meta.report_status("devices", meta.get("namespace", "default"), meta["name"],
                                    status)
        finally:
            self._saving = False
        self._publish({**obj, "status": status})

    def _publish(self, device: dict[str, Any]) -> None:
        """KubeEdge's twin document (values changed) and delta (desired values not reported
        yet) for apps on the EventBus."""
        if self.bus is None:
            return
        meta = device["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        after = kubeedge_twins(device)
        before = self.twins_published.get((namespace, name), {})
        self.twins_published[(namespace, name)] = after
        try:
            if twin_values(before) != twin_values(after):
                self.bus.publish(eventbus.twin_document_topic(namespace, name),
                                 eventbus.twin_document(before, after))
            delta = twin_deltas(after)
            if delta and delta != twin_deltas(before):
                self.bus.publish(eventbus.twin_delta_topic(namespace, name),
                                 eventbus.twin_delta(after, delta))
        except eventbus.EventBusError as exc:
            log.warning("the twin of %s/%s is not published: %s", namespace, name, exc)

    def update_from_app(self, namespace: str, name: str, values: dict[str, str]) -> None:
        """An app set reported values over MQTT: they become the device's twins, and the
        answer goes to .../twin/update/result (the twins now held, or why not)."""
        assert self.bus is not None
        stamp = eventbus.now_ms()
        topic = eventbus.twin_update_result_topic(namespace, name)
        try:
            self.apply_twins(namespace, name, [
                {"propertyName": prop, "reported": {"value": value,
                                                    "metadata": {"timestamp": str(stamp)}}}
                for prop, value in values.items()])
        except TwinError as exc:
            log.warning("twin update for %s/%s over MQTT refused: %s", namespace, name, exc)
            self.bus.publish(topic, eventbus.twin_update_error(str(exc)))
            return
        self.bus.publish(topic, {"event_id": str(uuid.uuid4()), "timestamp": stamp,
                                 "twin": {prop: eventbus.twin(actual=value, timestamp=stamp)
                                          for prop, value in values.items()}})

    def apply_twins(self, namespace: str, name: str, twins: list[dict[str, Any]]) -> None:
        """Reported twins (from a mapper, or from an app over MQTT) into the device status."""
        obj = self._device(namespace, name)
        properties = {p.get("name") for p in obj.get("spec", {}).get("properties") or []}
        status = merge_twins(obj.get("status") or {}, twins, properties)
        if status.get("state") in ("online", "ok"):
            status["lastOnlineTime"] = _now()  # last heard from, as in KubeEdge
        self._save(obj, status)

    async def ReportDeviceStatus(self, request: dmi.ReportDeviceStatusRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> dmi.ReportDeviceStatusResponse:
        try:
            twins = [twin_dict(t) for t in request.reportedDevice.twins]
            self.apply_twins(request.deviceNamespace, request.deviceName, twins)
        except (TwinError, ManifestError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        good, failed = reading_outcomes(twins)
        device = (request.deviceNamespace or "default", request.deviceName)
        self.reads[device] += good
        self.read_errors[device] += failed
        return dmi.ReportDeviceStatusResponse()

    async def ReportDeviceStates(self, request: dmi.ReportDeviceStatesRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> dmi.ReportDeviceStatesResponse:
        state = request.state.lower()
        if state not in STATES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"state {request.state!r}: use one of {', '.join(STATES)}")
        try:
            obj = self._device(request.deviceNamespace, request.deviceName)
            status = {**(obj.get("status") or {}), "state": state}
            if state in ("online", "ok"):
                status["lastOnlineTime"] = _now()
            self._save(obj, status)
        except TwinError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return dmi.ReportDeviceStatesResponse()

    # ------------------------------------------------------------ process

    def _secure_socket(self) -> None:
        if self.group:  # checked when the config was loaded
            os.chown(self.sock_path, -1, grp.getgrnam(self.group).gr_gid)
            os.chmod(self.sock_path, 0o660)
        else:
            os.chmod(self.sock_path, 0o600)

    async def run(self, stopping: asyncio.Event) -> None:
        self.sock_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()  # left by a crash
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes)])
        dmi_grpc.add_DeviceManagerServiceServicer_to_server(self, server)
        old_umask = os.umask(0o177)  # never a moment where others could connect
        try:
            server.add_insecure_port(f"unix://{self.sock_path}")
            await server.start()
        finally:
            os.umask(old_umask)
        self._secure_socket()
        self.serving.set()
        log.info("DMI server on %s (%d mapper(s) known)", self.sock_path, len(self.mappers))
        # Mappers known from before a restart get any change made meanwhile.
        for plural in ("devicemodels", "devices"):
            for obj in self.store.list(plural):
                meta = obj["metadata"]
                self.dirty.add((plural, meta.get("namespace", ""), meta["name"]))
        self.wake.set()
        try:
            await self._pusher(stopping)
        finally:
            await server.stop(1.0)
            for channel in self.channels.values():
                await channel.close()
            with contextlib.suppress(FileNotFoundError):
                self.sock_path.unlink()
