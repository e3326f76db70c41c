"""What this machine is: the Node object edgecore registers."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from moorage import __version__

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def _os_image() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _memory_kib() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read(64).strip()
        except OSError:
            continue
    return ""


def node_status(node_ip: str) -> dict[str, Any]:
    memory = f"{_memory_kib()}Ki"
    cpus = str(os.cpu_count() or 1)
    capacity = {"cpu": cpus, "memory": memory, "pods": "110"}
    return {
        "addresses": [{"type": "InternalIP", "address": node_ip},
                      {"type": "Hostname", "address": socket.gethostname()}],
        "capacity": capacity,
        "allocatable": dict(capacity),
        "nodeInfo": {
            "machineID": _machine_id(),
            "kernelVersion": platform.release(),
            "osImage": _os_image(),
            "operatingSystem": "linux",
            "architecture": _ARCH.get(platform.machine(), platform.machine()),
            "kubeletVersion": f"v{__version__}-moorage",
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "",
        },
    }


def node_object(name: str, node_ip: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels)},
            "status": node_status(node_ip)}
