"""The README's first command runs to its end."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import SCALE, Env, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_brings_a_node_to_ready_and_a_device_value_to_the_cloud(env: Env) -> None:
    demo_env = {**env.vars, "DEMO_DIR": str(env.root / "demo"),
                "DEMO_HUB_PORT": str(free_port()), "DEMO_CERT_PORT": str(free_port()),
                "DEMO_ADMIN_PORT": str(free_port()), "DEMO_MODBUS_PORT": str(free_port()),
                "DEMO_METRICS_PORT": str(free_port())}
    result = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "--exit"], env=demo_env,
                            capture_output=True, text=True, timeout=180 * SCALE, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo-edge is Ready" in result.stdout
    table = result.stdout.split("==> moorage get nodes", 1)[1]
    assert "demo-edge" in table and " Ready " in table
    values = result.stdout.split("==> The device's live values at the cloud", 1)[1]
    assert "A device value reached the cloud." in values
    # describe's property table: the setpoint desired, written, read back; humidity read.
    rows = {line.split()[0]: line.split() for line in values.splitlines()
            if line.startswith("  ") and len(line.split()) >= 4}
    assert rows["temperature"][1:4] == ["21.5", "21.5", "21.5"], values
    assert float(rows["humidity"][3]) > 30, values
    assert "==> A pod on demo-edge" in result.stdout
