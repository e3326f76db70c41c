"""Modbus value codec: every data type, every swap combination, and garbage."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappers.modbus.codec import (
    CodecError,
    Visitor,
    decode_bits,
    decode_registers,
    encode,
)
from mappers.modbus.driver import Protocol

RANGES = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
          "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}
SWAPS = st.tuples(st.booleans(), st.booleans())


def visitor(data_type: str, swaps: tuple[bool, bool] = (False, False), limit: int = 0,
            scale: float = 1.0, register: str = "HoldingRegister") -> Visitor:
    return Visitor.from_config({"register": register, "offset": 0, "limit": limit,
                                "dataType": data_type, "scale": scale,
                                "isSwap": swaps[0], "isRegisterSwap": swaps[1]})


@pytest.mark.parametrize("data_type", sorted(RANGES))
@given(data=st.data(), swaps=SWAPS)
def test_integers_round_trip_with_every_swap(data_type: str, data: st.DataObject,
                                             swaps: tuple[bool, bool]) -> None:
    low, high = RANGES[data_type]
    value = data.draw(st.integers(low, high))
    v = visitor(data_type, swaps)
    words = encode(value, v)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_registers(words, v) == value


@pytest.mark.parametrize("data_type,width", [("float32", 32), ("float64", 64)])
@given(data=st.data(), swaps=SWAPS)
def test_floats_round_trip_with_every_swap(data_type: str, width: int, data: st.DataObject,
                                           swaps: tuple[bool, bool]) -> None:
    value = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    v = visitor(data_type, swaps)
    assert decode_registers(encode(value, v), v) == value


@given(text=st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=8),
       swaps=SWAPS)
def test_strings_round_trip(text: str, swaps: tuple[bool, bool]) -> None:
    v = visitor("string", swaps, limit=4)
    assert decode_registers(encode(text, v), v) == text


@given(value=st.booleans(), register=st.sampled_from(["HoldingRegister", "CoilRegister"]))
def test_booleans_round_trip(value: bool, register: str) -> None:
    v = visitor("boolean", register=register)
    encoded = encode(value, v)
    decoded = decode_bits(encoded, v) if v.is_bits else decode_registers(encoded, v)
    assert decoded is value


def test_known_layouts() -> None:
    # 0x41200000 is 10.0 as float32; ABCD / CDAB / BADC / DCBA byte orders.
    assert decode_registers([0x4120, 0x0000], visitor("float32")) == 10.0
    assert decode_registers([0x0000, 0x4120], visitor("float32", (False, True))) == 10.0
    assert decode_registers([0x2041, 0x0000], visitor("float32", (True, False))) == 10.0
    assert decode_registers([0x0000, 0x2041], visitor("float32", (True, True))) == 10.0
    assert decode_registers([0xFFFF], visitor("int16")) == -1
    assert decode_registers([0x0001, 0x0000], visitor("uint32", (False, True))) == 1
    assert decode_registers([215], visitor("int16", scale=0.1)) == pytest.approx(21.5)
    assert encode(21.5, visitor("int16", scale=0.1)) == [215]
    assert decode_registers([0x4869, 0x0000], visitor("string", limit=2)) == "Hi"


@given(words=st.lists(st.integers(), max_size=6),
       data_type=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32",
                                  "float64", "boolean", "string"]),
       swaps=SWAPS)
def test_garbage_registers_never_crash_the_decoder(words: list[int], data_type: str,
                                                   swaps: tuple[bool, bool]) -> None:
    v = visitor(data_type, swaps, limit=4 if data_type in ("string", "float64") else 0)
    try:
        value = decode_registers(words, v)
    except CodecError:
        return
    if isinstance(value, float):
        assert math.isfinite(value)


@given(raw=st.binary(min_size=8, max_size=8))
def test_non_finite_floats_are_refused(raw: bytes) -> None:
    words = list(struct.unpack(">4H", raw))
    (number,) = struct.unpack(">d", raw)
    v = visitor("float64")
    if math.isfinite(number):
        assert decode_registers(words, v) == number
    else:
        with pytest.raises(CodecError, match="not a usable number"):
            decode_registers(words, v)


@pytest.mark.parametrize("config,message", [
    ({"register": "Holding", "dataType": "int16"}, "register: 'Holding' is not one of"),
    ({"register": "HoldingRegister", "dataType": "int64"}, "dataType: 'int64' is not one of"),
    ({"register": "HoldingRegister", "dataType": "int32", "limit": 1}, "int32 needs 2"),
    ({"register": "HoldingRegister", "offset": -1}, "offset: expected a non-negative"),
    ({"register": "HoldingRegister", "limit": 126}, "cannot be read in one request"),
    ({"register": "HoldingRegister", "scale": 0}, "scale: expected a non-zero number"),
    ({"register": "HoldingRegister", "isSwap": "yes"}, "isSwap: expected true or false"),
    ({"register": "HoldingRegister", "datatype": "int32"},
     "datatype: unknown field; did you mean dataType"),
    ({"register": "HoldingRegister", "ofset": 3}, "ofset: unknown field; did you mean offset"),
])
def test_bad_visitors_are_refused_naming_the_field(config: dict[str, object],
                                                   message: str) -> None:
    with pytest.raises(CodecError, match=message):
        Visitor.from_config(config)


def test_writes_are_checked() -> None:
    with pytest.raises(CodecError, match="cannot be written"):
        encode(1, visitor("int16", register="InputRegister"))
    with pytest.raises(CodecError, match="out of range for int16"):
        encode(40000, visitor("int16"))
    with pytest.raises(CodecError, match="not a number"):
        encode("warm", visitor("float32"))
    with pytest.raises(CodecError, match="not a boolean"):
        encode("maybe", visitor("boolean", register="CoilRegister"))


@pytest.mark.parametrize("config,message", [
    ({"communicateMode": "TCP", "ip": "127.0.0.1", "slaveId": 3},
     r"protocol.configData.slaveId: unknown field; did you mean slaveID\?"),
    ({"communicateMode": "RTU", "serialPort": "/dev/ttyUSB0", "baudrate": 19200},
     "baudrate: unknown field; did you mean baudRate"),
    ({"communicateMode": "RTU", "serialport": "/dev/ttyUSB0"},
     "serialport: unknown field; did you mean serialPort"),
])
def test_misspelled_protocol_fields_are_refused(config: dict[str, object], message: str) -> None:
    """Read as absent, a misspelled slaveID would address slave 1: refused instead."""
    with pytest.raises(CodecError, match=message):
        Protocol.from_config(config)


def test_fields_unlike_any_known_one_are_left_alone() -> None:
    """KubeEdge manifests carry other fields; only near misses of ours are refused."""
    protocol = Protocol.from_config({"communicateMode": "TCP", "ip": "127.0.0.1", "slaveID": 4,
                                     "protocolName": "modbus", "comment": "boiler room"})
    assert protocol.slave_id == 4
    assert Visitor.from_config({"register": "CoilRegister", "offset": 2,
                                "note": "door"}).offset == 2
