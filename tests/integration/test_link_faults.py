"""A cut or frozen link, and a cloud that goes away: noticed fast, healed alone, quietly."""

from __future__ import annotations

import re

from tests.support import Env, FaultProxy, join, make_cloud, wait_for


def test_half_open_link_is_detected_by_both_sides_and_heals(env: Env) -> None:
    cloud = make_cloud(env, keepaliveInterval="1s", nodeGracePeriod="30s").start()
    proxy = FaultProxy(cloud.hub_port)
    try:
        edge = join(cloud, "flaky")
        edge.configure(heartbeat="1s", websocket={"server": f"127.0.0.1:{proxy.port}",
                                                  "handshakeTimeout": "5s"})
        edge.start()
        wait_for(lambda: cloud.node_ready("flaky") is True, what="flaky Ready")
        assert edge.daemon is not None and cloud.daemon is not None

        proxy.freeze()  # no FIN, no RST: only silence
        edge.daemon.wait_log("connection to the cloud lost", timeout=6)
        cloud.daemon.wait_log("node flaky disconnected", timeout=6)

        proxy.heal()
        edge.daemon.wait_log("connected to 127.0.0.1", count=2, timeout=15)
        wait_for(lambda: cloud.node_ready("flaky") is True, what="flaky Ready after healing")
    finally:
        proxy.close()


def test_cloud_outage_gives_one_clear_line_and_jittered_retries(env: Env) -> None:
    cloud = make_cloud(env).start()
    edge = join(cloud, "patient", configure={"reconnectBase": "0.2s",
                                             "reconnectMax": "1s"}).start()
    wait_for(lambda: cloud.node_ready("patient") is True, what="patient Ready")
    assert edge.daemon is not None
    cloud.stop()
    edge.daemon.wait_log("connecting to the cloud failed")
    delays = []

    def retried_a_few_times() -> bool:
        # With the same failure repeating, later attempts are logged at debug only.
        delays[:] = re.findall(r"retrying in ([0-9.]+)s", edge.log())
        return "connection refused" in edge.log().lower() or "cannot reach" in edge.log()

    wait_for(retried_a_few_times, what="a clear reason in the edge log:\n" + edge.log())
    warning_lines = [line for line in edge.log().splitlines()
                     if "connecting to the cloud failed" in line]
    assert len(warning_lines) == 1, warning_lines
    assert "cannot reach 127.0.0.1" in warning_lines[0]
    assert all(0.0 <= float(d) <= 1.0 for d in delays)

    cloud.start()
    edge.daemon.wait_log("connected to 127.0.0.1", count=2, timeout=15)
    wait_for(lambda: cloud.node_ready("patient") is True, what="patient Ready again")
