"""A real containerd for edge tests, and a tiny busybox image built locally (no registry).

``Containerd`` starts ``containerd --config FILE`` on its own root, state and gRPC socket
(all under one short directory in /tmp, since unix socket paths must stay under 108
bytes), with the CRI plugin configured so that it never pulls anything: both the busybox image
(``.image``) and the CRI ``sandbox_image`` (``.sandbox_image``, the same layer with a
command that stays alive) are built locally and imported with ``ctr`` at start.

    with Containerd() as ctrd:
        grpc.insecure_channel(ctrd.endpoint)   # CRI v1 RuntimeService/ImageService
        ctrd.ctr("run", "--rm", ctrd.image, "c1", "echo", "hi")

``stop()`` leaves nothing of this instance behind: containerd, the shims it started and
their containers, mounts under its directories, and the directories themselves.
Fixed locations outside them that containerd 1.6 shares between instances
(``/run/containerd/s`` shim sockets, ``/run/containerd/runc/<ns>`` runc state for
containers not started through CRI) are cleaned only for this instance's containers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import SCALE

BUSYBOX = Path("/bin/busybox")
DEFAULT_IMAGE = "moorage.local/busybox:1"
SANDBOX_IMAGE = "moorage.local/pause:1"  # same layer, Cmd ["sleep", "inf"]
APPLETS = ("sh", "echo", "sleep", "cat", "true", "false", "env", "ls", "date")
CNI_BIN_DIR = Path("/usr/lib/cni")
BINARIES = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")
NAMESPACE = "k8s.io"  # the CRI plugin's namespace
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the trailing NUL
SHIM_SOCKET_DIR = Path("/run/containerd/s")  # fixed in containerd 1.6
SHARED_RUNC_ROOT = Path("/run/containerd/runc")  # runc v2 shim default --root

_ARCH = {"x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", "v8"),
         "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
         "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
         "riscv64": ("riscv64", None), "i686": ("386", None), "i386": ("386", None)}


# --------------------------------------------------------------------------- image


def _arch() -> tuple[str, str | None]:
    machine = platform.machine()  # what `uname -m` prints
    return _ARCH.get(machine, (machine, None))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A deterministic tar: fixed times and owners, entries in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    return info, None


def _rootfs_layer() -> bytes:
    busybox = BUSYBOX.read_bytes()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _dir("bin"), _file("bin/busybox", busybox, 0o755),
        *(_symlink(f"bin/{applet}", "busybox") for applet in APPLETS),
        _dir("dev"), _dir("etc"),
        _file("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
        _file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                            b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        _dir("proc"), _dir("root", 0o700), _dir("sys"), _dir("tmp", 0o1777),
    ]
    return _tar(entries)


def _manifest(layer: bytes, arch: str, variant: str | None, cmd: list[str],
              blobs: dict[str, bytes]) -> bytes:
    """An image config and manifest over ``layer``; adds all three blobs to ``blobs``."""
    layer_digest = _digest(layer)  # an uncompressed layer: its digest is its diff_id
    image_config: dict[str, Any] = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": "moorage tests: Debian busybox-static"}],
    }
    if variant:
        image_config["variant"] = variant
    config = _json(image_config)
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    })
    for blob in (layer, config, manifest):
        blobs[_digest(blob)] = blob
    return manifest


def _tag(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def build_busybox_image(path: Path, name: str = DEFAULT_IMAGE,
                        sandbox_name: str | None = SANDBOX_IMAGE) -> Path:
    """Write an OCI image layout tar holding Debian's static busybox; return its path.

    ``path`` is the tar file to write, or (when it is an existing directory or has no
    ``.tar`` suffix) a directory that receives ``busybox-oci.tar``. The same inputs give
    the same bytes (fixed times, owners and order), so digests are stable across runs.

    The layout holds the image ``name`` (Cmd ``["sh"]``) and, unless ``sandbox_name`` is
    None, a second image over the same layer whose Cmd is ``["sleep", "inf"]``: the CRI
    plugin runs its ``sandbox_image`` with the image's own command, and a pod sandbox
    must stay alive (``sh`` without a terminal exits at once, and then every container
    of the pod fails to join the sandbox's namespaces).
    """
    path = Path(path)
    if path.is_dir() or path.suffix != ".tar":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "busybox-oci.tar"
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} is missing: install busybox-static "
                                "(scripts/install-system-deps.sh)")
    arch, variant = _arch()
    platform_desc = {"architecture": arch, "os": "linux"}
    if variant:
        platform_desc["variant"] = variant
    layer = _rootfs_layer()
    blobs: dict[str, bytes] = {}
    images = [(name, ["sh"])]
    if sandbox_name and sandbox_name != name:
        images.append((sandbox_name, ["sleep", "inf"]))
    descriptors = []
    for image_name, cmd in images:
        manifest = _manifest(layer, arch, variant, cmd, blobs)
        descriptors.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": _digest(manifest), "size": len(manifest),
            "platform": platform_desc,
            "annotations": {"io.containerd.image.name": image_name,
                            "org.opencontainers.image.ref.name": _tag(image_name)},
        })
    index = _json({"schemaVersion": 2,
                   "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": descriptors})
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        _file("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
        _file("index.json", index),
        _dir("blobs"), _dir("blobs/sha256"),
        *(_file(f"blobs/sha256/{d.split(':', 1)[1]}", blobs[d]) for d in sorted(blobs)),
    ]
    data = _tar(entries)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- containerd


def containerd_available() -> str | None:
    """None when a real containerd can be run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "containerd tests need root"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    if not (CNI_BIN_DIR / "loopback").exists():
        missing.append(str(CNI_BIN_DIR / "loopback"))
    if missing:
        return (f"missing {', '.join(missing)}: run scripts/install-system-deps.sh "
                "(containerd runc busybox-static containernetworking-plugins)")
    return None


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string here


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class ContainerdError(RuntimeError):
    pass


class Containerd:
    """A private containerd: own root, state, socket and config under /tmp/mctr-XXXX."""

    def __init__(self, image: str = DEFAULT_IMAGE, *, sandbox_image: str = SANDBOX_IMAGE,
                 start: bool = True,
                 parent: Path = Path("/tmp"), start_timeout: float = 20.0) -> None:
        reason = containerd_available()
        if reason:
            raise ContainerdError(reason)
        self.image = image
        self.sandbox_image = sandbox_image
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="mctr-", dir=parent))
        self.socket = self.dir / "c.sock"
        if len(str(self.socket).encode()) > SOCKET_PATH_MAX:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise ContainerdError(f"socket path too long for a unix socket: {self.socket}")
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.cni_conf_dir = self.dir / "cni"
        self.config = self.dir / "config.toml"
        self.log_path = self.dir / "containerd.log"
        self.image_tar = self.dir / "busybox-oci.tar"
        self.proc: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}
        for d in (self.root, self.state, self.cni_conf_dir):
            d.mkdir(mode=0o711)
        self.config.write_text(self._config_text())
        if start:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise

    # ----------------------------------------------------------------- properties

    @property
    def endpoint(self) -> str:
        """The gRPC target for CRI clients (grpc in Python needs an absolute unix URI)."""
        return f"unix://{self.socket}"

    @property
    def runc_root(self) -> Path:
        """Where runc keeps state for containers started through CRI (ours alone)."""
        return self.state / "runc"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # ----------------------------------------------------------------- lifecycle

    def _config_text(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""\
version = 2
root = {_toml_str(self.root)}
state = {_toml_str(self.state)}
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = {_toml_str(self.socket)}

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {_toml_str(self.root / "opt")}

[{cri}]
  sandbox_image = {_toml_str(self.sandbox_image)}
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = {_toml_str(self.runc_root)}

[{cri}.cni]
  bin_dir = {_toml_str(CNI_BIN_DIR)}
  conf_dir = {_toml_str(self.cni_conf_dir)}
"""

    def start(self) -> Containerd:
        """Start containerd (and import the image the first time); wait until it answers."""
        if self.running:
            return self
        started = time.monotonic()
        self._spawn()
        self.timings["socket"] = time.monotonic() - started
        if not self.timings.get("import"):
            begun = time.monotonic()
            build_busybox_image(self.image_tar, self.image, self.sandbox_image)
            self.timings["build"] = time.monotonic() - begun
            begun = time.monotonic()
            result = self.ctr("images", "import", str(self.image_tar), check=False)
            if result.returncode != 0:
                raise ContainerdError(f"ctr images import failed ({result.returncode}): "
                                      f"{result.stdout}{result.stderr}\n"
                                      f"containerd log tail:\n{self.log_tail()}")
            self.timings["import"] = time.monotonic() - begun
        self.timings["total"] = time.monotonic() - started
        return self

    def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        with self.log_path.open("ab") as handle:
            handle.write(f"---- moorage tests: starting containerd at {time.ctime()}\n".encode())
            handle.flush()
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)], stdin=subprocess.DEVNULL,
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout * SCALE
        last = ""
        while True:
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.proc.returncode} "
                                      f"while starting; log tail:\n{self.log_tail()}")
            if self.socket.exists():
                result = self._ctr_raw(["version"], namespace=None, timeout=5)
                if result.returncode == 0:
                    return
                last = (result.stdout + result.stderr).strip()
            if time.monotonic() > deadline:
                raise ContainerdError(
                    f"containerd did not answer on {self.socket} within "
                    f"{self.start_timeout * SCALE:.0f}s (last ctr error: {last or '-'}); "
                    f"log tail:\n{self.log_tail()}")
            time.sleep(0.02)

    def restart(self) -> Containerd:
        """Stop containerd alone (shims, containers and state live on) and start it again."""
        self._stop_daemon()
        begun = time.monotonic()
        self._spawn()
        self.timings["restart"] = time.monotonic() - begun
        return self

    def stop_daemon(self) -> None:
        """Stop containerd alone, leaving shims and state: the runtime 'goes away'."""
        self._stop_daemon()

    def _stop_daemon(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Stop containerd and remove every trace of this instance (errors tolerated)."""
        self._stop_daemon()
        self._kill_tasks()
        self._unmount()
        for _ in range(3):
            shutil.rmtree(self.dir, ignore_errors=True)
            if not self.dir.exists():
                break
            self._unmount()
            time.sleep(0.1)

    def __enter__(self) -> Containerd:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ----------------------------------------------------------------- teardown

    def _task_dirs(self) -> list[Path]:
        """Bundles of the tasks (containers and sandboxes) this instance's shims run."""
        base = self.state / "io.containerd.runtime.v2.task"
        return [d for d in base.glob("*/*") if d.is_dir()] if base.is_dir() else []

    def shim_pids(self) -> set[int]:
        """Live containerd-shim processes that belong to this instance."""
        pids: set[int] = set()
        for bundle in self._task_dirs():
            pid = _read_pid(bundle / "shim.pid")
            if pid and _pid_alive(pid) and any("containerd-shim" in a for a in _cmdline(pid)):
                pids.add(pid)
        marks = (str(self.socket), str(self.dir))
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            argv = _cmdline(int(entry.name))
            if (argv and "containerd-shim" in Path(argv[0]).name
                    and any(m in a for a in argv for m in marks)
                    and _pid_alive(int(entry.name))):
                pids.add(int(entry.name))
        return pids

    def processes(self) -> list[int]:
        """Live processes whose command line mentions this instance's directory or socket:
        its containerd and its shims (zombies count as gone)."""
        marks = (str(self.socket), str(self.dir))
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                argv = _cmdline(int(entry.name))
                if (any(m in a for a in argv for m in marks)
                        and any("containerd" in Path(a).name for a in argv[:1])
                        and _pid_alive(int(entry.name))):
                    found.append(int(entry.name))
        return sorted(found)

    def _kill_tasks(self) -> None:
        shims = self.shim_pids()
        for bundle in self._task_dirs():
            namespace, task_id = bundle.parent.name, bundle.name
            # runc kills the container's processes and removes its cgroup and state.
            for runc_root in (self.runc_root / namespace, SHARED_RUNC_ROOT / namespace):
                state = runc_root / task_id / "state.json"
                with contextlib.suppress(OSError):
                    if str(self.dir) in state.read_text(errors="replace"):
                        subprocess.run(["runc", "--root", str(runc_root), "delete", "--force",
                                        task_id], capture_output=True, timeout=20, check=False)
            init = _read_pid(bundle / "init.pid")
            if init and _pid_alive(init):
                with contextlib.suppress(OSError):
                    os.kill(init, signal.SIGKILL)
        for pid in shims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10 * SCALE
        while any(_pid_alive(p) for p in shims) and time.monotonic() < deadline:
            time.sleep(0.02)
        # The shims' sockets live in a fixed, shared directory: remove only ours.
        for bundle in self._task_dirs():
            with contextlib.suppress(OSError):
                address = (bundle / "address").read_text().strip()
                sock = Path(address.removeprefix("unix://"))
                if sock.parent == SHIM_SOCKET_DIR:
                    sock.unlink()

    def _mounts(self) -> list[str]:
        prefix = str(self.dir) + "/"
        found = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix):
                    found.append(point)
        return found

    def _unmount(self) -> None:
        for point in sorted(set(self._mounts()), key=len, reverse=True):
            subprocess.run(["umount", "-R", point], capture_output=True, timeout=20,
                           check=False)
        for point in sorted(set(self._mounts()), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=20,
                           check=False)

    # ----------------------------------------------------------------- ctr

    def _ctr_raw(self, args: list[str], namespace: str | None = NAMESPACE,
                 timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.socket)]
        if namespace:
            argv += ["--namespace", namespace]
        return subprocess.run([*argv, *args], capture_output=True, text=True,
                              timeout=timeout * SCALE, check=False, stdin=subprocess.DEVNULL)

    def ctr(self, *args: str, namespace: str = NAMESPACE, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``ctr -a SOCK -n NAMESPACE ARGS``; raise with containerd's log on failure."""
        result = self._ctr_raw(list(args), namespace=namespace, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)} failed ({result.returncode}):\n"
                                  f"{result.stdout}{result.stderr}\n"
                                  f"containerd log tail:\n{self.log_tail()}")
        return result
