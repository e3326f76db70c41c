"""What a mapper knows of a device, and when to read and report each property.

Pure logic: DMI messages become frozen dataclasses, and :class:`Schedule`
answers "what is due now, and when is the next thing due" without sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moorage.dmi import api_pb2 as dmi
from moorage.dmi.convert import ConversionError, config_dict

DEFAULT_CYCLE_MS = 1000
MIN_CYCLE_MS = 10  # a faster cycle would only starve the other devices on the line


@dataclass(frozen=True)
class PropertySpec:
    name: str
    visitor: dict[str, Any]
    collect_cycle: float  # seconds
    report_cycle: float
    desired: str | None = None  # None: nothing to write
    writable: bool = True  # the model's accessMode allows writes
    report_to_cloud: bool = True


@dataclass(frozen=True)
class DeviceSpec:
    namespace: str
    name: str
    model: str
    protocol_name: str
    protocol: dict[str, Any]
    properties: tuple[PropertySpec, ...] = field(default_factory=tuple)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def same_wiring(self, other: DeviceSpec) -> bool:
        """True if only desired values differ: the device keeps running (no reconnect)."""
        def wiring(spec: DeviceSpec) -> Any:
            return (spec.protocol_name, spec.protocol, spec.model,
                    [(p.name, p.visitor, p.collect_cycle, p.report_cycle, p.writable,
                      p.report_to_cloud) for p in spec.properties])
        return wiring(self) == wiring(other)


def _cycle(value: int, where: str) -> float:
    if value < 0:
        raise ConversionError(f"{where}: must be a positive number of milliseconds")
    return max(value or DEFAULT_CYCLE_MS, MIN_CYCLE_MS) / 1000


def device_spec(device: dmi.Device, models: dict[tuple[str, str], dmi.DeviceModel]
                ) -> DeviceSpec:
    """A DMI Device as a DeviceSpec; the model (if known) says which properties are writable."""
    namespace = device.namespace or "default"
    model = models.get((namespace, device.spec.deviceModelReference))
    modes = {p.name: p.accessMode for p in model.spec.properties} if model else {}
    properties = []
    for prop in device.spec.properties:
        where = f"device {namespace}/{device.name} property {prop.name!r}"
        desired = prop.desired.value if prop.HasField("desired") and prop.desired.value != "" \
            else None
        properties.append(PropertySpec(
            name=prop.name, visitor=config_dict(prop.visitors.configData),
            collect_cycle=_cycle(prop.collectCycle, f"{where} collectCycle"),
            report_cycle=_cycle(prop.reportCycle, f"{where} reportCycle"),
            desired=desired, writable=modes.get(prop.name, "ReadWrite") != "ReadOnly",
            report_to_cloud=prop.reportToCloud))
    return DeviceSpec(namespace=namespace, name=device.name,
                      model=device.spec.deviceModelReference,
                      protocol_name=device.spec.protocol.protocolName,
                      protocol=config_dict(device.spec.protocol.configData),
                      properties=tuple(properties))


class Schedule:
    """Per-property collect and report deadlines on a monotonic clock."""

    def __init__(self, properties: tuple[PropertySpec, ...], now: float) -> None:
        self.cycles = {p.name: (p.collect_cycle, p.report_cycle) for p in properties}
        self.next_collect = dict.fromkeys(self.cycles, now)
        # The first report waits one collect so that it carries values.
        self.next_report = {name: now + c for name, (c, _) in self.cycles.items()}

    def due_collect(self, now: float) -> list[str]:
        due = [name for name, at in self.next_collect.items() if at <= now]
        for name in due:
            self.next_collect[name] = _advance(self.next_collect[name],
                                               self.cycles[name][0], now)
        return due

    def due_report(self, now: float) -> list[str]:
        due = [name for name, at in self.next_report.items() if at <= now]
        for name in due:
            self.next_report[name] = _advance(self.next_report[name], self.cycles[name][1], now)
        return due

    def next_deadline(self) -> float:
        return min([*self.next_collect.values(), *self.next_report.values()], default=math.inf)


def _advance(at: float, cycle: float, now: float) -> float:
    """The next slot on the cycle's grid after ``now``; slots missed while busy are skipped,
    not run in a burst."""
    at += cycle
    if at <= now:
        at += math.ceil((now - at) / cycle) * cycle
        if at <= now:
            at += cycle
    return at
