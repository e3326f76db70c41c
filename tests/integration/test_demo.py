"""The README's first command runs to its end."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import SCALE, Env, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_brings_a_node_to_ready(env: Env) -> None:
    demo_env = {**env.vars, "DEMO_DIR": str(env.root / "demo"),
                "DEMO_HUB_PORT": str(free_port()), "DEMO_CERT_PORT": str(free_port()),
                "DEMO_ADMIN_PORT": str(free_port())}
    result = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "--exit"], env=demo_env,
                            capture_output=True, text=True, timeout=180 * SCALE, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo-edge is Ready" in result.stdout
    table = result.stdout.split("==> moorage get nodes", 1)[1]
    assert "demo-edge" in table and " Ready " in table
