"""One device's loop: collect, write desired values, report, go offline and come back.

A protocol is one :class:`Driver` subclass; everything else (scheduling,
backoff, twins, state) is here and shared by every mapper.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from mappers.sdk.errors import DeviceError, DeviceUnreachable
from mappers.sdk.spec import DeviceSpec, PropertySpec, Schedule
from moorage.aio import wait_any
from moorage.backoff import full_jitter

log = logging.getLogger("mappers.device")

ONLINE, OFFLINE = "online", "offline"


class Driver(ABC):
    """A protocol: how to read and write one property of one device."""

    protocol: ClassVar[str]

    def check(self, device: DeviceSpec) -> None:  # noqa: B027 - optional hook
        """Raise DeviceError if the device's protocol or visitor settings are unusable."""

    @abstractmethod
    async def read(self, device: DeviceSpec, prop: PropertySpec) -> Any: ...

    @abstractmethod
    async def write(self, device: DeviceSpec, prop: PropertySpec, value: str) -> Any:
        """Write ``value``, read it back and return what the device now holds; raise
        DeviceError if it does not hold the value written."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def text(value: Any) -> str:
    """A value as a twin carries it (strings; booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)


def now_ms() -> str:
    return str(int(time.time() * 1000))


@dataclass
class Reading:
    value: str | None = None
    at: str = ""
    error: str = ""


Reporter = Callable[["DeviceRunner", list[str]], Awaitable[None]]
StateReporter = Callable[["DeviceRunner", str], Awaitable[None]]


class DeviceRunner:
    def __init__(self, spec: DeviceSpec, driver: Driver, report: Reporter,
                 report_state: StateReporter, retry_max: float = 30.0) -> None:
        self.spec, self.driver = spec, driver
        self.report, self.report_state = report, report_state
        self.retry_max = retry_max
        self.readings = {p.name: Reading() for p in spec.properties}
        self.observed: dict[str, Reading] = {}  # desired values confirmed on the device
        self.write_errors: dict[str, str] = {}
        self.state = ""
        self.wake = asyncio.Event()
        self.reads = self.read_errors = 0

    def update(self, spec: DeviceSpec) -> None:
        """New desired values (same wiring): written on the next pass, no reconnect."""
        self.spec = spec
        self.write_errors.clear()
        self.wake.set()

    def twins(self, names: list[str]) -> list[dict[str, Any]]:
        out = []
        for prop in self.spec.properties:
            if prop.name not in names:
                continue
            reading = self.readings.get(prop.name, Reading())
            twin: dict[str, Any] = {"propertyName": prop.name}
            if reading.value is not None or reading.error:
                metadata = {"timestamp": reading.at or now_ms()}
                if reading.error:
                    metadata["error"] = reading.error
                twin["reported"] = {"value": reading.value or "", "metadata": metadata}
            observed = self.observed.get(prop.name)
            if observed is not None and prop.desired is not None:
                metadata = {"timestamp": observed.at}
                if prop.name in self.write_errors:
                    metadata["error"] = self.write_errors[prop.name]
                twin["observedDesired"] = {"value": observed.value or "", "metadata": metadata}
            elif prop.name in self.write_errors:
                twin["observedDesired"] = {"value": "", "metadata": {
                    "timestamp": now_ms(), "error": self.write_errors[prop.name]}}
            out.append(twin)
        return out

    async def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            log.info("device %s/%s is %s", *self.spec.key, state)
            await self.report_state(self, state)

    async def _collect(self, prop: PropertySpec) -> None:
        self.reads += 1
        try:
            value = await self.driver.read(self.spec, prop)
        except DeviceUnreachable:
            raise
        except DeviceError as exc:
            self.read_errors += 1
            previous = self.readings[prop.name]
            if previous.error != str(exc):
                log.warning("device %s/%s property %s: %s", *self.spec.key, prop.name, exc)
            self.readings[prop.name] = Reading(previous.value, now_ms(), str(exc))
            return
        self.readings[prop.name] = Reading(text(value), now_ms())

    async def _write_desired(self) -> bool:
        """Write desired values the device does not hold yet; True if something was written."""
        wrote = False
        for prop in self.spec.properties:
            desired = prop.desired
            if desired is None or prop.name in self.write_errors:
                continue
            if not prop.writable:
                self.write_errors[prop.name] = ("not written: the property is ReadOnly in its "
                                                "device model (accessMode)")
                continue
            observed = self.observed.get(prop.name)
            if observed is not None and observed.value == desired:
                continue
            try:
                value = await self.driver.write(self.spec, prop, desired)
            except DeviceUnreachable:
                raise
            except DeviceError as exc:
                # Not retried until the desired value changes: the same write would fail again.
                log.warning("device %s/%s property %s: writing %r failed: %s",
                            *self.spec.key, prop.name, desired, exc)
                self.write_errors[prop.name] = str(exc)
                continue
            stamp = now_ms()
            self.observed[prop.name] = Reading(desired, stamp)
            self.readings[prop.name] = Reading(text(value), stamp)
            log.info("device %s/%s property %s set to %s", *self.spec.key, prop.name, desired)
            wrote = True
        return wrote

    async def run(self, stopping: asyncio.Event) -> None:
        if not self.spec.properties:
            await stopping.wait()  # nothing to read: the device only exists at the cloud
            return
        schedule = Schedule(self.spec.properties, time.monotonic())
        delays = None
        while not stopping.is_set():
            try:
                if delays is not None:  # offline: one probe read, then back to the schedule
                    await self._collect(self.spec.properties[0])
                    delays = None
                    schedule = Schedule(self.spec.properties, time.monotonic())
                    await self._set_state(ONLINE)
                by_name = {p.name: p for p in self.spec.properties}
                if await self._write_desired():
                    await self.report(self, list(by_name))  # observedDesired, at once
                for name in schedule.due_collect(time.monotonic()):
                    if name in by_name:
                        await self._collect(by_name[name])
                    if self.state != ONLINE:
                        await self._set_state(ONLINE)
                    # Between reads too: a slow line (many properties at 9600 baud) must
                    # not hold reports back until a whole pass is done.
                    due = schedule.due_report(time.monotonic())
                    if due:
                        await self.report(self, due)
                due = schedule.due_report(time.monotonic())
                if due:
                    await self.report(self, due)
            except DeviceUnreachable as exc:
                if delays is None:
                    log.warning("device %s/%s does not answer: %s; retrying with backoff",
                                *self.spec.key, exc)
                    delays = full_jitter(min(p.collect_cycle for p in self.spec.properties),
                                         self.retry_max)
                    self.read_errors += 1
                    await self._set_state(OFFLINE)
                self.wake.clear()
                await wait_any(next(delays), self.wake, stopping)
                continue
            self.wake.clear()
            wait = schedule.next_deadline() - time.monotonic()
            if wait > 0:
                await wait_any(wait, self.wake, stopping)
