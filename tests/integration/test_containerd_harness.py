"""The containerd harness: a real containerd on its own socket runs a real container from
the locally built busybox image, and stopping it leaves nothing of it behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.containerd import Containerd, containerd_available
from tests.support import SCALE, require, wait_for


def ctr(socket: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ctr", "-a", str(socket), "-n", "k8s.io", *args],
                            capture_output=True, text=True, timeout=timeout * SCALE,
                            check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (f"ctr {' '.join(args)} failed ({result.returncode}):\n"
                                    f"{result.stdout}{result.stderr}")
    return result


def mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


def test_real_containerd_runs_the_local_busybox_image_and_cleans_up() -> None:
    reason = containerd_available()
    require(reason is None, reason or "")

    ctrd = Containerd()
    try:
        assert ctrd.endpoint == f"unix://{ctrd.socket}" and ctrd.socket.is_absolute()
        assert ctrd.socket.is_socket()
        assert ctrd.running and ctrd.proc is not None
        assert ctrd.proc.pid in ctrd.processes()

        images = ctr(ctrd.socket, "images", "ls").stdout
        assert ctrd.image in images, images
        assert ctrd.sandbox_image in images, images

        # A unique id: runc state (/run/containerd/runc/k8s.io) and cgroups (k8s.io/<id>)
        # are shared by every containerd on the machine.
        # containerd IDs allow single separators only; the temp dir name may hold "-_".
        container_id = "test-echo-" + "".join(c for c in ctrd.dir.name if c.isalnum())
        run = ctr(ctrd.socket, "run", "--rm", ctrd.image, container_id, "echo", "hello-moorage")
        assert "hello-moorage" in run.stdout, run
        assert container_id not in ctr(ctrd.socket, "containers", "ls", "-q").stdout
    finally:
        ctrd.stop()

    assert not ctrd.running
    assert not ctrd.socket.exists()
    for directory in (ctrd.root, ctrd.state, ctrd.dir):
        assert not directory.exists(), directory
    assert mounts_under(ctrd.dir) == []
    wait_for(lambda: not ctrd.processes(), timeout=10,
             what=f"containerd and shims of {ctrd.dir} to be gone: {ctrd.processes()}")
