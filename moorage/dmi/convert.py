"""Device and DeviceModel objects (Kubernetes JSON) to DMI messages, and back.

Free-form settings (protocol and visitor ``configData``) travel as
``google.protobuf.Any``. We pack scalars in the well-known wrappers
(StringValue, Int64Value, DoubleValue, BoolValue), as KubeEdge's mappers
expect, and anything nested as a ``google.protobuf.Value``. Unpacking accepts
all of them, so mappers written for KubeEdge interoperate both ways.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2

from moorage.dmi import api_pb2 as dmi

_WRAPPERS = {
    "google.protobuf.StringValue": wrappers_pb2.StringValue,
    "google.protobuf.BoolValue": wrappers_pb2.BoolValue,
    "google.protobuf.Int32Value": wrappers_pb2.Int32Value,
    "google.protobuf.Int64Value": wrappers_pb2.Int64Value,
    "google.protobuf.UInt32Value": wrappers_pb2.UInt32Value,
    "google.protobuf.UInt64Value": wrappers_pb2.UInt64Value,
    "google.protobuf.FloatValue": wrappers_pb2.FloatValue,
    "google.protobuf.DoubleValue": wrappers_pb2.DoubleValue,
}


class ConversionError(ValueError):
    """A DMI message that cannot be the object it claims to be."""


def pack(value: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    if isinstance(value, bool):
        packed.Pack(wrappers_pb2.BoolValue(value=value))
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        packed.Pack(wrappers_pb2.Int64Value(value=value))
    elif isinstance(value, float):
        packed.Pack(wrappers_pb2.DoubleValue(value=value))
    elif isinstance(value, str):
        packed.Pack(wrappers_pb2.StringValue(value=value))
    else:
        holder = struct_pb2.Value()
        json_format.ParseDict(value, holder)
        packed.Pack(holder)
    return packed


def unpack(packed: any_pb2.Any) -> Any:
    name = packed.TypeName()
    wrapper = _WRAPPERS.get(name)
    if wrapper is not None:
        message = wrapper()
        packed.Unpack(message)
        return message.value
    if name == "google.protobuf.Value":
        holder = struct_pb2.Value()
        packed.Unpack(holder)
        value = json_format.MessageToDict(holder)
        # Value holds every number as a double: give integers back as integers.
        return int(value) if isinstance(value, float) and value.is_integer() else value
    raise ConversionError(f"configData holds a {name or 'untyped'} value; expected a "
                          "string, number, boolean or JSON value")


def config_data(mapping: dict[str, Any] | None) -> dmi.CustomizedValue:
    return dmi.CustomizedValue(data={k: pack(v) for k, v in (mapping or {}).items()})


def config_dict(value: dmi.CustomizedValue) -> dict[str, Any]:
    return {k: unpack(v) for k, v in value.data.items()}


def _twin_property(data: Any) -> dmi.TwinProperty:
    if not isinstance(data, dict):
        return dmi.TwinProperty()
    metadata = data.get("metadata") or {}
    return dmi.TwinProperty(value=_text(data.get("value")),
                            metadata={str(k): _text(v) for k, v in metadata.items()})


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def device_to_dmi(obj: dict[str, Any]) -> dmi.Device:
    """A Device object as the edge store holds it, as DMI's Device."""
    meta, spec = obj.get("metadata", {}), obj.get("spec") or {}
    protocol = spec.get("protocol") or {}
    properties = []
    for prop in spec.get("properties") or []:
        visitors = prop.get("visitors") or {}
        properties.append(dmi.DeviceProperty(
            name=prop.get("name", ""), desired=_twin_property(prop.get("desired")),
            visitors=dmi.VisitorConfig(protocolName=visitors.get("protocolName", ""),
                                       configData=config_data(visitors.get("configData"))),
            reportCycle=int(prop.get("reportCycle") or 0),
            collectCycle=int(prop.get("collectCycle") or 0),
            reportToCloud=bool(prop.get("reportToCloud", True))))
    status = obj.get("status") or {}
    twins = [dmi.Twin(propertyName=t.get("propertyName", ""),
                      observedDesired=_twin_property(t.get("observedDesired")),
                      reported=_twin_property(t.get("reported")))
             for t in status.get("twins") or [] if isinstance(t, dict)]
    return dmi.Device(
        name=meta.get("name", ""), namespace=meta.get("namespace", "default"),
        spec=dmi.DeviceSpec(
            deviceModelReference=(spec.get("deviceModelRef") or {}).get("name", ""),
            protocol=dmi.ProtocolConfig(protocolName=protocol.get("protocolName", ""),
                                        configData=config_data(protocol.get("configData"))),
            properties=properties),
        status=dmi.DeviceStatus(twins=twins, reportToCloud=True))


def model_to_dmi(obj: dict[str, Any]) -> dmi.DeviceModel:
    meta, spec = obj.get("metadata", {}), obj.get("spec") or {}
    return dmi.DeviceModel(
        name=meta.get("name", ""), namespace=meta.get("namespace", "default"),
        spec=dmi.DeviceModelSpec(properties=[
            dmi.ModelProperty(name=p.get("name", ""), description=p.get("description", ""),
                              type=p.get("type", ""), accessMode=p.get("accessMode", ""),
                              minimum=_text(p.get("minimum")), maximum=_text(p.get("maximum")),
                              unit=p.get("unit", ""))
            for p in spec.get("properties") or [] if isinstance(p, dict)]))


def twin_dict(twin: dmi.Twin) -> dict[str, Any]:
    """A reported DMI Twin as the Device status holds it."""
    out: dict[str, Any] = {"propertyName": twin.propertyName}
    for field in ("reported", "observedDesired"):
        if twin.HasField(field):
            prop = getattr(twin, field)
            out[field] = {"value": prop.value, "metadata": dict(prop.metadata)}
    return out
