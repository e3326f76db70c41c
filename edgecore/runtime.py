"""A CRI v1 client for edged: RuntimeService and ImageService over a unix socket.

The socket path comes from the administrator only (edgecore.yaml or
``moorage join --remote-runtime-endpoint``), and it is checked before use: it
must be a socket owned by root and writable by nobody but root (group root
is fine: that is how containerd creates it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from moorage.errors import MoorageError

DEFAULT_ENDPOINT = "unix:///run/containerd/containerd.sock"
MANAGED_LABEL = "moorage.io/managed"


class RuntimeUnavailable(MoorageError):
    """The container runtime cannot be used (bad socket, not running, failing)."""


class CallFailed(MoorageError):
    """The runtime answered, but refused one request (a pod's problem, not the node's)."""


def check_endpoint(endpoint: str) -> Path:
    """Validate an admin-given CRI endpoint; returns the socket path."""
    if not endpoint.startswith("unix://"):
        raise RuntimeUnavailable(f"remote runtime endpoint {endpoint!r}: only unix:///path "
                                 "sockets are supported")
    path = Path(endpoint.removeprefix("unix://"))
    if not path.is_absolute():
        raise RuntimeUnavailable(f"remote runtime endpoint {endpoint!r}: the path must be "
                                 "absolute (unix:///run/containerd/containerd.sock)")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise RuntimeUnavailable(f"no container runtime socket at {path}: is containerd "
                                 "running, and is the endpoint right?") from None
    except OSError as exc:
        raise RuntimeUnavailable(f"cannot inspect {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise RuntimeUnavailable(f"{path} is not a socket: refusing to use it as the container "
                                 "runtime endpoint")
    if info.st_uid != 0:
        raise RuntimeUnavailable(f"{path} is owned by uid {info.st_uid}, not root: refusing a "
                                 "runtime socket anyone else controls")
    if info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and info.st_gid != 0):
        raise RuntimeUnavailable(f"{path} is writable by group {info.st_gid} or others "
                                 f"(mode {stat.S_IMODE(info.st_mode):o}): refusing it; make it "
                                 "root-only (chmod 660, group root)")
    return path


class CRIClient:
    """Thin async wrapper over the generated stubs; every call has a deadline."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        import grpc  # imported here: it costs ~11 MB and only edged needs it

        from edgecore.cri import api_pb2, api_pb2_grpc

        self.endpoint, self.timeout = endpoint, timeout
        self.pb = api_pb2
        self.grpc = grpc
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, stub: Any, method: str, request: Any, timeout: float | None = None
                   ) -> Any:
        try:
            return await getattr(stub, method)(request, timeout=timeout or self.timeout)
        except self.grpc.aio.AioRpcError as exc:
            code = exc.code()
            text = f"CRI {method} failed: {code.name}: {exc.details()}"
            if code in (self.grpc.StatusCode.UNAVAILABLE, self.grpc.StatusCode.DEADLINE_EXCEEDED,
                        self.grpc.StatusCode.CANCELLED):
                raise RuntimeUnavailable(text) from None
            raise CallFailed(text) from None

    async def version(self) -> Any:
        return await self.call(self.runtime, "Version", self.pb.VersionRequest(version="v1"))

    async def status(self) -> Any:
        return await self.call(self.runtime, "Status", self.pb.StatusRequest())
