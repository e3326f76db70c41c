"""edged: runs the pods bound to this node through CRI, from the edge store.

A reconcile loop with no cloud in it: desired pods come from the local store,
actual state from the runtime, matched by the pod's uid in sandbox labels, so a
restarted edgecore (or a reconnect) finds its pods instead of recreating them.
Containers restart per restartPolicy with crash-loop backoff; status goes to the
cloud through the outbox.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecore.metamanager import MetaManager
from edgecore.runtime import (
    MANAGED_LABEL,
    CallFailed,
    CRIClient,
    RuntimeUnavailable,
    check_endpoint,
)
from moorage.aio import sleep_or_stop

log = logging.getLogger("edgecore.edged")

UID_LABEL = "io.kubernetes.pod.uid"
NAME_LABEL = "io.kubernetes.pod.name"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
CONTAINER_LABEL = "io.kubernetes.container.name"
SANDBOX_READY, CONTAINER_RUNNING, CONTAINER_EXITED = 0, 1, 2
NETWORK_NODE = 2


def rfc3339(nanoseconds: int) -> str | None:
    if not nanoseconds:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(nanoseconds / 1e9))


def parse_quantity(value: str, binary: bool = True) -> int:
    """Kubernetes quantities: memory '64Mi' -> bytes; cpu '500m' -> millicores."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    text = str(value).strip()
    if not binary:
        return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


@dataclass
class Backoff:
    """Crash-loop backoff per container: base, doubled per restart, capped."""

    base: float
    cap: float
    until: dict[tuple[str, str], float] = field(default_factory=dict)
    delay: dict[tuple[str, str], float] = field(default_factory=dict)

    def ready(self, key: tuple[str, str], now: float) -> bool:
        return now >= self.until.get(key, 0.0)

    def restarted(self, key: tuple[str, str], now: float) -> float:
        delay = min(self.cap, self.delay.get(key, self.base / 2) * 2)
        self.delay[key] = delay
        self.until[key] = now + delay
        return delay


class Edged:
    def __init__(self, meta: MetaManager, cri: CRIClient, node_name: str, data_dir: Path,
                 *, period: float = 1.0, backoff_base: float = 10.0,
                 backoff_cap: float = 300.0, node_ip: str = "") -> None:
        self.meta, self.cri, self.node_name = meta, cri, node_name
        self.pods_dir = data_dir / "pods"
        self.period, self.node_ip = period, node_ip
        self.backoff = Backoff(backoff_base, backoff_cap)
        self.reported: dict[str, dict[str, Any]] = {}
        self.runtime_ready = False
        self.network_ready = False
        self.runtime_info: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.on_runtime_change: Any = lambda: None  # edgecore reports node status then
        meta.listeners.append(lambda event: self.wake.set() if event.kind == "pods" else None)

    # ------------------------------------------------------------ loop

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                if not self.runtime_ready:
                    check_endpoint(self.cri.endpoint)
                await self.reconcile()
                if not self.runtime_ready:
                    log.info("container runtime %s %s is ready",
                             self.runtime_info.get("name"), self.runtime_info.get("version"))
                    self.runtime_ready = True
                    self.on_runtime_change()
            except RuntimeUnavailable as exc:
                if self.runtime_ready or "error" not in self.runtime_info:
                    log.warning("container runtime unavailable: %s; retrying", exc)
                if self.runtime_ready:
                    self.runtime_ready = False
                    self.on_runtime_change()
                self.runtime_info["error"] = str(exc)
            except Exception:
                log.exception("reconcile failed; retrying")
            self.wake.clear()
            waiter = asyncio.ensure_future(self.wake.wait())
            await asyncio.wait([waiter, asyncio.ensure_future(stopping.wait())],
                               timeout=self.period, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        await sleep_or_stop(0, stopping)

    def desired(self) -> dict[str, dict[str, Any]]:
        return {pod["metadata"]["uid"]: pod for pod in self.meta.store.list("pods")
                if pod.get("spec", {}).get("nodeName") == self.node_name}

    async def reconcile(self) -> None:
        version = await self.cri.version()
        self.runtime_info = {"name": version.runtime_name, "version": version.runtime_version}
        status = await self.cri.status()
        self.network_ready = any(c.type == "NetworkReady" and c.status
                                 for c in status.status.conditions)
        pb = self.cri.pb
        desired = self.desired()
        listing = await self.cri.call(self.cri.runtime, "ListPodSandbox", pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(label_selector={MANAGED_LABEL: "true"})))
        sandboxes: dict[str, list[Any]] = {}
        for sandbox in listing.items:
            sandboxes.setdefault(sandbox.labels.get(UID_LABEL, ""), []).append(sandbox)
        for uid, found in sandboxes.items():
            if uid not in desired:
                for sandbox in found:
                    await self._remove_sandbox(sandbox.id, sandbox.labels.get(NAME_LABEL, "?"))
        for uid, pod in desired.items():
            ready = [s for s in sandboxes.get(uid, []) if s.state == SANDBOX_READY]
            for stale in [s for s in sandboxes.get(uid, []) if s.state != SANDBOX_READY]:
                await self._remove_sandbox(stale.id, pod["metadata"]["name"])
            try:
                await self._sync_pod(pod, ready[0].id if ready else None)
            except CallFailed as exc:
                # This pod's problem (an image that cannot be pulled, a bad mount): say so
                # in its status and go on with the others.
                self._report(pod, {"phase": "Pending", "reason": "CreateFailed",
                                   "message": str(exc)})
        for uid in list(self.reported):
            if uid not in desired:
                del self.reported[uid]

    # ------------------------------------------------------------ one pod

    def _sandbox_config(self, pod: dict[str, Any]) -> Any:
        pb, meta, spec = self.cri.pb, pod["metadata"], pod.get("spec", {})
        log_dir = self.pods_dir / meta["uid"] / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        labels = {MANAGED_LABEL: "true", UID_LABEL: meta["uid"], NAME_LABEL: meta["name"],
                  NAMESPACE_LABEL: meta.get("namespace", "default")}
        # Without a pod network (no CNI on the node) only host networking can work.
        host_network = bool(spec.get("hostNetwork")) or not self.network_ready
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=meta["name"], uid=meta["uid"],
                                           namespace=meta.get("namespace", "default")),
            log_directory=str(log_dir), labels=labels,
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(
                    network=NETWORK_NODE if host_network else 0))))

    async def _sync_pod(self, pod: dict[str, Any], sandbox_id: str | None) -> None:
        pb, meta, spec = self.cri.pb, pod["metadata"], pod.get("spec", {})
        config = self._sandbox_config(pod)
        if sandbox_id is None:
            answer = await self.cri.call(self.cri.runtime, "RunPodSandbox",
                                         pb.RunPodSandboxRequest(config=config), timeout=60)
            sandbox_id = answer.pod_sandbox_id
            log.info("pod %s/%s: sandbox %s started", meta.get("namespace"), meta["name"],
                     sandbox_id[:12])
        listing = await self.cri.call(self.cri.runtime, "ListContainers", pb.ListContainersRequest(
            filter=pb.ContainerFilter(pod_sandbox_id=sandbox_id)))
        by_name: dict[str, list[Any]] = {}
        for container in listing.containers:
            by_name.setdefault(container.labels.get(CONTAINER_LABEL, ""), []).append(container)
        policy = spec.get("restartPolicy", "Always")
        statuses = []
        now = time.monotonic()
        for container_spec in spec.get("containers", []):
            name = container_spec["name"]
            existing = sorted(by_name.get(name, []), key=lambda c: c.metadata.attempt)
            latest = existing[-1] if existing else None
            status = await self._status(latest.id) if latest else None
            previous = await self._status(existing[-2].id) if len(existing) > 1 else None
            key = (meta["uid"], name)
            if latest is None:
                latest_id = await self._start_container(pod, container_spec, sandbox_id,
                                                        config, 0)
                status = await self._status(latest_id)
            elif status.state == CONTAINER_EXITED and self._should_restart(policy, status) \
                    and self.backoff.ready(key, now):
                attempt = latest.metadata.attempt + 1
                delay = self.backoff.restarted(key, now)
                log.info("pod %s: container %s exited (%d); restart %d, next backoff "
                         "%.0fs", meta["name"], name, status.exit_code, attempt, delay)
                for old in existing[:-1]:
                    await self._remove_container(old.id)  # keep only the last one, for logs
                latest_id = await self._start_container(pod, container_spec, sandbox_id,
                                                        config, attempt)
                previous, status = status, await self._status(latest_id)
                latest = None
            restarts = (latest.metadata.attempt if latest is not None
                        else max((c.metadata.attempt for c in existing), default=-1) + 1)
            statuses.append(self._container_status(container_spec, status, previous, restarts,
                                                   key, now))
        sandbox = await self.cri.call(self.cri.runtime, "PodSandboxStatus",
                                      pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
        self._report(pod, self._pod_status(pod, statuses, sandbox.status))

    @staticmethod
    def _should_restart(policy: str, status: Any) -> bool:
        return policy == "Always" or (policy == "OnFailure" and status.exit_code != 0)

    async def _status(self, container_id: str) -> Any:
        pb = self.cri.pb
        answer = await self.cri.call(self.cri.runtime, "ContainerStatus",
                                     pb.ContainerStatusRequest(container_id=container_id))
        return answer.status

    async def _ensure_image(self, image: str, config: Any) -> None:
        pb = self.cri.pb
        found = await self.cri.call(self.cri.images, "ImageStatus",
                                    pb.ImageStatusRequest(image=pb.ImageSpec(image=image)))
        if found.image.id:
            return
        log.info("pulling image %s", image)
        try:
            await self.cri.call(self.cri.images, "PullImage", pb.PullImageRequest(
                image=pb.ImageSpec(image=image), sandbox_config=config), timeout=300)
        except CallFailed as exc:
            raise CallFailed(f"image {image} is not on this node and cannot be pulled ({exc}); "
                             "import it with `ctr -n k8s.io images import` while offline"
                             ) from None

    async def _start_container(self, pod: dict[str, Any], spec: dict[str, Any],
                               sandbox_id: str, config: Any, attempt: int) -> str:
        pb = self.cri.pb
        await self._ensure_image(spec["image"], config)
        log_dir = Path(config.log_directory) / spec["name"]
        log_dir.mkdir(parents=True, exist_ok=True)
        resources = pb.LinuxContainerResources()
        limits = (spec.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            resources.memory_limit_in_bytes = parse_quantity(limits["memory"])
        if "cpu" in limits:
            resources.cpu_period = 100_000
            resources.cpu_quota = parse_quantity(limits["cpu"], binary=False) * 100
        container_config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=spec["name"], attempt=attempt),
            image=pb.ImageSpec(image=spec["image"]),
            command=spec.get("command") or [], args=spec.get("args") or [],
            working_dir=spec.get("workingDir", ""),
            envs=[pb.KeyValue(key=k, value=v) for k, v in self._env(pod, spec).items()],
            mounts=self._mounts(pod, spec),
            labels={CONTAINER_LABEL: spec["name"], UID_LABEL: pod["metadata"]["uid"],
                    MANAGED_LABEL: "true"},
            log_path=f"{spec['name']}/{attempt}.log",
            linux=pb.LinuxContainerConfig(resources=resources))
        created = await self.cri.call(self.cri.runtime, "CreateContainer",
                                      pb.CreateContainerRequest(pod_sandbox_id=sandbox_id,
                                                                config=container_config,
                                                                sandbox_config=config),
                                      timeout=60)
        await self.cri.call(self.cri.runtime, "StartContainer",
                            pb.StartContainerRequest(container_id=created.container_id),
                            timeout=60)
        return str(created.container_id)

    async def _remove_container(self, container_id: str) -> None:
        pb = self.cri.pb
        await self.cri.call(self.cri.runtime, "StopContainer",
                            pb.StopContainerRequest(container_id=container_id, timeout=5),
                            timeout=30)
        await self.cri.call(self.cri.runtime, "RemoveContainer",
                            pb.RemoveContainerRequest(container_id=container_id))

    async def _remove_sandbox(self, sandbox_id: str, name: str) -> None:
        pb = self.cri.pb
        await self.cri.call(self.cri.runtime, "StopPodSandbox",
                            pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
        await self.cri.call(self.cri.runtime, "RemovePodSandbox",
                            pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
        log.info("pod %s: sandbox %s removed", name, sandbox_id[:12])

    # ------------------------------------------------------------ env and volumes

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        obj = self.meta.store.get((kind, namespace, name)) or {}
        if kind == "secrets":
            data = {k: base64.b64decode(v).decode("utf-8", "replace")
                    for k, v in (obj.get("data") or {}).items()}
            data.update(obj.get("stringData") or {})
            return data
        return dict(obj.get("data") or {})

    def _env(self, pod: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"].get("namespace", "default")
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            if "configMapRef" in source:
                env.update(self._lookup("configmaps", ns, source["configMapRef"]["name"]))
            if "secretRef" in source:
                env.update(self._lookup("secrets", ns, source["secretRef"]["name"]))
        for item in spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            ref = item.get("valueFrom") or {}
            if "configMapKeyRef" in ref:
                data = self._lookup("configmaps", ns, ref["configMapKeyRef"]["name"])
                env[item["name"]] = data.get(ref["configMapKeyRef"]["key"], "")
            if "secretKeyRef" in ref:
                data = self._lookup("secrets", ns, ref["secretKeyRef"]["name"])
                env[item["name"]] = data.get(ref["secretKeyRef"]["key"], "")
        return env

    def _mounts(self, pod: dict[str, Any], spec: dict[str, Any]) -> list[Any]:
        pb, meta = self.cri.pb, pod["metadata"]
        ns = meta.get("namespace", "default")
        volumes = {v["name"]: v for v in pod.get("spec", {}).get("volumes") or []}
        mounts = []
        for mount in spec.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            base = self.pods_dir / meta["uid"] / "volumes" / mount["name"]
            if "hostPath" in volume:
                host = volume["hostPath"]["path"]
            else:
                base.mkdir(parents=True, exist_ok=True, mode=0o700)
                host = str(base)
                files: dict[str, str] = {}
                if "configMap" in volume:
                    files = self._lookup("configmaps", ns, volume["configMap"]["name"])
                elif "secret" in volume:
                    files = self._lookup("secrets", ns, volume["secret"]["secretName"])
                for key, value in files.items():
                    path = base / key
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                 0o600 if "secret" in volume else 0o644)
                    with os.fdopen(fd, "w") as handle:
                        handle.write(value)
            mounts.append(pb.Mount(container_path=mount["mountPath"], host_path=host,
                                   readonly=bool(mount.get("readOnly", False))))
        return mounts

    # ------------------------------------------------------------ logs and node status

    def logs(self, namespace: str, name: str, container: str | None, tail: int | None,
             limit: int = 1024 * 1024) -> tuple[int, str]:
        """The text a container wrote (its latest run), like `kubectl logs`."""
        pod = self.meta.store.get(("pods", namespace, name))
        if pod is None or pod.get("spec", {}).get("nodeName") != self.node_name:
            return 404, f'pod "{name}" is not on node {self.node_name}'
        names = [c["name"] for c in pod["spec"].get("containers", [])]
        if container is None:
            if len(names) != 1:
                return 400, (f"pod {name} has containers {', '.join(names)}: choose one "
                             "with -c")
            container = names[0]
        if container not in names:
            return 404, f"pod {name} has no container {container!r}"
        directory = self.pods_dir / pod["metadata"]["uid"] / "logs" / container
        runs = sorted(directory.glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit()
                      else -1)
        if not runs:
            return 404, f"container {container} of pod {name} has not written a log yet"
        with open(runs[-1], "rb") as handle:
            handle.seek(max(0, runs[-1].stat().st_size - limit))
            raw = handle.read(limit).decode("utf-8", "replace").splitlines()
        # CRI log lines: "<time> <stream> <P|F> <text>"; keep the text.
        lines = [line.split(" ", 3)[3] if line.count(" ") >= 3 else line for line in raw]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        return 200, "".join(line + "\n" for line in lines)

    def node_conditions(self) -> list[dict[str, str]]:
        """The runtime's state, for the Node status the edge reports."""
        if self.runtime_ready:
            return [{"type": "ContainerRuntimeReady", "status": "True", "reason": "RuntimeUp",
                     "message": f"{self.runtime_info.get('name')} "
                                f"{self.runtime_info.get('version')} is serving CRI"}]
        return [{"type": "ContainerRuntimeReady", "status": "False",
                 "reason": "RuntimeUnavailable",
                 "message": self.runtime_info.get("error", "not reached yet")}]

    # ------------------------------------------------------------ status

    @staticmethod
    def _terminated(status: Any) -> dict[str, Any]:
        return {"terminated": {"exitCode": status.exit_code,
                               "reason": status.reason or "Completed",
                               "startedAt": rfc3339(status.started_at),
                               "finishedAt": rfc3339(status.finished_at)}}

    def _container_status(self, spec: dict[str, Any], status: Any, previous: Any,
                          restarts: int, key: tuple[str, str], now: float) -> dict[str, Any]:
        state: dict[str, Any]
        last = self._terminated(previous) if previous is not None and \
            previous.state == CONTAINER_EXITED else None
        if status is None:
            state = {"waiting": {"reason": "ContainerCreating"}}
        elif status.state == CONTAINER_RUNNING:
            state = {"running": {"startedAt": rfc3339(status.started_at)}}
        elif status.state == CONTAINER_EXITED:
            state = self._terminated(status)
            if not self.backoff.ready(key, now):
                last = state
                state = {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": f"back-off restarting {spec['name']}"}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return {"name": spec["name"], "image": spec["image"], "restartCount": max(0, restarts),
                "ready": status is not None and status.state == CONTAINER_RUNNING,
                "containerID": f"containerd://{status.id}" if status is not None else "",
                "state": state, **({"lastState": last} if last else {})}

    def _pod_status(self, pod: dict[str, Any], containers: list[dict[str, Any]],
                    sandbox: Any) -> dict[str, Any]:
        policy = pod.get("spec", {}).get("restartPolicy", "Always")
        terminated = [c["state"].get("terminated") for c in containers]
        if containers and all(c["ready"] for c in containers):
            phase = "Running"
        elif containers and all(terminated) and policy != "Always":
            phase = "Succeeded" if all(t["exitCode"] == 0 for t in terminated) else "Failed"
        elif any(c["ready"] for c in containers) or any(
                c["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
                for c in containers):
            phase = "Running"
        else:
            phase = "Pending"
        ready = "True" if containers and all(c["ready"] for c in containers) else "False"
        ip = sandbox.network.ip or self.node_ip
        return {"phase": phase, "podIP": ip, "hostIP": self.node_ip,
                "startTime": rfc3339(sandbox.created_at),
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Initialized", "status": "True"},
                               {"type": "ContainersReady", "status": ready},
                               {"type": "Ready", "status": ready}],
                "containerStatuses": containers}

    def _report(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if self.reported.get(uid) == status:
            return
        self.reported[uid] = status
        self.meta.report_pod_status(pod["metadata"].get("namespace", "default"),
                                    pod["metadata"]["name"], status)
