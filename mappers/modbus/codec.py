"""Modbus values: decode register contents into property values and encode them back.

Pure and synchronous. A property's visitor says where the value lives and how
it is laid out (KubeEdge's Modbus visitor configData):

- ``register``: CoilRegister, DiscreteInputRegister, HoldingRegister, InputRegister
- ``offset``: the first address (protocol address, 0-based); ``limit``: how many
  registers (or bits) to read
- ``dataType``: int16, uint16, int32, uint32, float32, float64, boolean, string
- ``scale``: multiplies the decoded number (and divides it back when writing)
- ``isSwap``: swap the two bytes of every register; ``isRegisterSwap``: reverse
  the order of the registers (word swap), for devices that are little-endian
  in one way or the other

Anything a device sends back is decoded or refused with :class:`CodecError`;
it never raises anything else.
"""

from __future__ import annotations

import difflib
import math
import struct
from dataclasses import dataclass
from typing import Any

REGISTER_TYPES = ("CoilRegister", "DiscreteInputRegister", "HoldingRegister", "InputRegister")
BIT_REGISTERS = ("CoilRegister", "DiscreteInputRegister")
WRITABLE = ("CoilRegister", "HoldingRegister")
# dataType -> (struct format, registers it takes); string and boolean are special.
NUMERIC = {"int16": (">h", 1), "uint16": (">H", 1), "int32": (">i", 2), "uint32": (">I", 2),
           "float32": (">f", 2), "float64": (">d", 4)}
DATA_TYPES = (*NUMERIC, "boolean", "string")
MAX_LIMIT = 125  # the most registers one Modbus read may ask for


VISITOR_FIELDS = ("register", "offset", "limit", "dataType", "scale", "isSwap",
                  "isRegisterSwap")


class CodecError(ValueError):
    """A visitor that makes no sense, or register contents that cannot be the value."""


def check_field_names(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a field that is a misspelling of a known one (``slaveId`` for ``slaveID``):
    read as absent, its default would quietly address the wrong register or device.
    Fields that resemble none are left alone: KubeEdge manifests carry others."""
    for name in data:
        if not isinstance(name, str) or name in known:
            continue
        near = [k for k in known if k.lower() == name.lower()] or \
            difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if near:
            raise CodecError(f"{where}.{name}: unknown field; did you mean {near[0]}?")


@dataclass(frozen=True)
class Visitor:
    register: str
    offset: int
    limit: int
    data_type: str
    scale: float = 1.0
    swap_bytes: bool = False
    swap_registers: bool = False

    @property
    def is_bits(self) -> bool:
        return self.register in BIT_REGISTERS

    @property
    def writable(self) -> bool:
        return self.register in WRITABLE

    @classmethod
    def from_config(cls, data: Any, where: str = "visitors.configData") -> Visitor:
        """Parse KubeEdge's visitor configData, with errors naming the field."""
        if not isinstance(data, dict):
            raise CodecError(f"{where}: expected a mapping")
        check_field_names(data, VISITOR_FIELDS, where)
        register = data.get("register")
        if register not in REGISTER_TYPES:
            raise CodecError(f"{where}.register: {register!r} is not one of "
                             f"{', '.join(REGISTER_TYPES)}")
        data_type = str(data.get("dataType", "boolean" if register in BIT_REGISTERS
                                 else "int16")).lower()
        if data_type not in DATA_TYPES:
            raise CodecError(f"{where}.dataType: {data_type!r} is not one of "
                             f"{', '.join(DATA_TYPES)}")
        offset, limit = data.get("offset", 0), data.get("limit", None)
        for name, value in (("offset", offset), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise CodecError(f"{where}.{name}: expected a non-negative integer, "
                                 f"got {value!r}")
        if offset > 65535:
            raise CodecError(f"{where}.offset: {offset} is beyond the last address 65535")
        needed = 1 if register in BIT_REGISTERS or data_type == "boolean" else \
            NUMERIC[data_type][1] if data_type in NUMERIC else 1
        limit = needed if limit in (None, 0) else limit
        if not 1 <= limit <= MAX_LIMIT or offset + limit > 65536:
            raise CodecError(f"{where}.limit: {limit} registers from {offset} cannot be read "
                             f"in one request (1-{MAX_LIMIT}, within 0-65535)")
        if data_type in NUMERIC and limit < NUMERIC[data_type][1] and register not in \
                BIT_REGISTERS:
            raise CodecError(f"{where}.limit: {data_type} needs {NUMERIC[data_type][1]} "
                             f"registers, limit is {limit}")
        scale = data.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or \
                not math.isfinite(scale) or scale == 0:
            raise CodecError(f"{where}.scale: expected a non-zero number, got {scale!r}")
        flags = {}
        for name in ("isSwap", "isRegisterSwap"):
            value = data.get(name, False)
            if not isinstance(value, bool):
                raise CodecError(f"{where}.{name}: expected true or false, got {value!r}")
            flags[name] = value
        return cls(register, offset, limit, data_type, float(scale), flags["isSwap"],
                   flags["isRegisterSwap"])


def _scaled(value: float | int, visitor: Visitor) -> float | int:
    if visitor.scale == 1.0:
        return value
    return value * visitor.scale


def _arrange(words: list[int], visitor: Visitor) -> list[int]:
    """Apply the visitor's byte and word swaps (each is its own inverse)."""
    if visitor.swap_bytes:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if visitor.swap_registers:
        words = list(reversed(words))
    return words


def decode_registers(words: list[int], visitor: Visitor) -> Any:
    """The property value held in ``words`` (what a register read returned)."""
    if len(words) < visitor.limit:
        raise CodecError(f"the device returned {len(words)} register(s), expected "
                         f"{visitor.limit}")
    words = list(words[: visitor.limit])
    if any(not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 0xFFFF
           for w in words):
        raise CodecError("the device returned values that are not 16-bit registers")
    kind = visitor.data_type
    if kind == "boolean":
        return any(words)
    if kind == "string":
        raw = struct.pack(f">{len(words)}H", *_arrange(words, visitor))
        text = raw.rstrip(b"\x00").decode("ascii", "replace")
        return text
    fmt, count = NUMERIC[kind]
    raw = struct.pack(f">{count}H", *_arrange(words[:count], visitor))
    (value,) = struct.unpack(fmt, raw)
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecError(f"the registers hold {value} as {kind}, not a usable number")
    return _scaled(value, visitor)


def decode_bits(bits: list[bool], visitor: Visitor) -> Any:
    """The value of a coil or discrete input read."""
    if not bits:
        raise CodecError("the device returned no bits")
    if visitor.data_type == "boolean":
        return bool(bits[0])
    if visitor.data_type == "string":
        raise CodecError("a string cannot live in coils or discrete inputs")
    value = sum(1 << i for i, bit in enumerate(bits[: visitor.limit]) if bit)
    return _scaled(value, visitor)


def encode(value: Any, visitor: Visitor) -> list[int] | list[bool]:
    """Registers (or bits) to write so that the device holds ``value``."""
    if not visitor.writable:
        raise CodecError(f"{visitor.register} cannot be written: use a HoldingRegister or "
                         "CoilRegister for ReadWrite properties")
    kind = visitor.data_type
    if visitor.is_bits:
        if kind == "boolean":
            return [_boolean(value)]
        number = _number(value, visitor, integral=True)
        if number < 0 or number >= 1 << visitor.limit:
            raise CodecError(f"{value!r} does not fit in {visitor.limit} bit(s)")
        return [bool(number >> i & 1) for i in range(visitor.limit)]
    if kind == "boolean":
        return [1 if _boolean(value) else 0]
    if kind == "string":
        data = str(value).encode("ascii", "strict") if str(value).isascii() else None
        if data is None or len(data) > visitor.limit * 2:
            raise CodecError(f"{value!r} is not ASCII text of at most {visitor.limit * 2} "
                             "characters")
        data = data.ljust(visitor.limit * 2, b"\x00")
        return _arrange(list(struct.unpack(f">{visitor.limit}H", data)), visitor)
    fmt, count = NUMERIC[kind]
    number = _number(value, visitor, integral=not kind.startswith("float"))
    try:
        raw = struct.pack(fmt, number)
    except struct.error:
        raise CodecError(f"{value!r} is out of range for {kind}") from None
    return _arrange(list(struct.unpack(f">{count}H", raw)), visitor)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "on"):
        return True
    if text in ("false", "0", "off"):
        return False
    raise CodecError(f"{value!r} is not a boolean (true/false)")


def _number(value: Any, visitor: Visitor, integral: bool) -> int | float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CodecError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise CodecError(f"{value!r} is not a finite number")
    number /= visitor.scale
    return round(number) if integral else number
