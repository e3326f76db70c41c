"""edgecore's DMI socket: owner-only, and bad calls get clear refusals, never a crash."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import grpc
import pytest

from moorage.dmi import api_pb2 as dmi
from moorage.dmi import api_pb2_grpc as dmi_grpc
from tests.support import Env, edit_yaml, join, make_cloud, wait_for, write_manifests


def _status(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    error = caught.value
    return error.code(), error.details()  # type: ignore[attr-defined]


def test_dmi_socket_refuses_bad_calls_clearly_and_edgecore_survives(env: Env,
                                                                    tmp_path: Path) -> None:
    cloud = make_cloud(env).start()
    edge = join(cloud, "edge-dmi")
    edit_yaml(edge.config, lambda d: d["modules"].setdefault("deviceTwin", {}).update(
        maxMessageBytes=64 * 1024))
    edge.start()
    sock = edge.dir / "dmi.sock"
    wait_for(sock.exists, 15, what=lambda: f"the DMI socket:\n{edge.log()}")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

    cloud.moorage("apply", "-f", str(write_manifests(tmp_path / "d.yaml", [{
        "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
        "metadata": {"name": "meter", "namespace": "default"},
        "spec": {"deviceModelRef": {"name": "m"}, "nodeName": "edge-dmi",
                 "protocol": {"protocolName": "modbus"},
                 "properties": [{"name": "temperature"}]}}])))
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        manager = dmi_grpc.DeviceManagerServiceStub(channel)

        def report(name: str, prop: str = "temperature", value: str = "1") -> None:
            manager.ReportDeviceStatus(dmi.ReportDeviceStatusRequest(
                deviceName=name, deviceNamespace="default", reportedDevice=dmi.DeviceStatus(
                    twins=[dmi.Twin(propertyName=prop,
                                    reported=dmi.TwinProperty(value=value))])), timeout=5)

        code, details = _status(lambda: manager.MapperRegister(dmi.MapperRegisterRequest(
            withData=True, mapper=dmi.MapperInfo(name="m", protocol="modbus",
                                                 address=b"relative.sock")), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "absolute path" in details
        code, details = _status(lambda: manager.MapperRegister(dmi.MapperRegisterRequest(
            mapper=dmi.MapperInfo(address=b"/run/x.sock")), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "mapper.name" in details

        code, details = _status(lambda: report("nobody"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "device default/nobody is not on this node" in details

        wait_for(lambda: report("meter") is None, 15, what="the device to reach the edge")
        code, details = _status(lambda: report("meter", prop="pressure"))
        assert "no property 'pressure'; known: temperature" in details
        code, details = _status(lambda: manager.ReportDeviceStates(
            dmi.ReportDeviceStatesRequest(deviceName="meter", state="exploded"), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "use one of online" in details
        code, _ = _status(lambda: report("meter", value="x" * 100_000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # over the socket's message cap

    # Garbage on the socket is not HTTP/2: dropped, and the DMI server carries on.
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(sock))
        raw.sendall(os.urandom(4096))
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        manager = dmi_grpc.DeviceManagerServiceStub(channel)
        manager.ReportDeviceStates(dmi.ReportDeviceStatesRequest(
            deviceName="meter", deviceNamespace="default", state="online"), timeout=5)
    wait_for(lambda: json.loads(cloud.moorage("get", "device", "meter", "-o", "json").stdout)
             .get("status", {}).get("state") == "online", 15, what="the state at the cloud")
    assert edge.daemon is not None and edge.daemon.running
    assert "Traceback" not in edge.log()


def test_a_dmi_group_that_does_not_exist_is_a_config_error(env: Env) -> None:
    cloud = make_cloud(env).start()
    edge = join(cloud, "edge-grp")
    edit_yaml(edge.config, lambda d: d["modules"].update(
        deviceTwin={"dmiSockGroup": "no-such-group-here"}))
    result = env.run("edgecore", "--config", str(edge.config), check=False)
    assert result.returncode == 2
    assert "deviceTwin.dmiSockGroup: no group named 'no-such-group-here'" in result.stderr
