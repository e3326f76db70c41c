"""The example files in examples/ are valid: what users copy must work."""

from __future__ import annotations

from pathlib import Path

from mappers.modbus.codec import Visitor
from mappers.modbus.driver import Protocol
from mappers.sdk.mapper import load_config
from moorage import resources, yamlio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_device_manifests_validate_and_their_modbus_settings_parse() -> None:
    docs = list(yamlio.load_all((EXAMPLES / "modbus-thermometer.yaml").read_text()))
    kinds = [resources.validate(doc, "default")[0].kind for doc in docs]
    assert kinds == ["DeviceModel", "Device"]
    device = docs[1]["spec"]
    assert Protocol.from_config(device["protocol"]["configData"]).mode == "TCP"
    visitors = [Visitor.from_config(p["visitors"]["configData"]) for p in device["properties"]]
    assert [v.register for v in visitors] == ["HoldingRegister", "InputRegister",
                                             "CoilRegister", "DiscreteInputRegister"]


def test_example_mapper_config_loads() -> None:
    cfg = load_config(EXAMPLES / "modbus-mapper.yaml")
    assert cfg.protocol == "modbus" and cfg.offline_retry_max == 30.0
    assert cfg.socket.startswith("/") and cfg.edgecore_sock.endswith("dmi.sock")
