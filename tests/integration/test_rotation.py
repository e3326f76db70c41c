"""Certificates change under live traffic: edge rotation and cloud server-cert reload."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time

import yaml

from certs import pki, tls
from moorage import kubeconfig
from moorage.client import AdminClient
from tests.support import Env, join, make_cloud, wait_for


def test_edge_rotates_with_a_new_key_under_traffic_without_losing_a_message(env: Env) -> None:
    cloud = make_cloud(env, edgeCertValidity="6s", nodeGracePeriod="3s").start()
    edge = join(cloud, "rotor").start()
    wait_for(lambda: cloud.node_ready("rotor") is True, what="rotor Ready")
    first_cert = pki.load_cert(edge.pki / "edge.crt")
    first_key = (edge.pki / "edge.key").read_bytes()

    answers: list[str] = []
    failures: list[str] = []
    not_ready: list[float] = []
    done = threading.Event()

    def traffic() -> None:
        # Bounded: stops when told or after 200 requests per thread.
        admin = AdminClient(kubeconfig.load(cloud.kubeconfig))  # one connection per thread
        for _ in range(200):
            if done.is_set():
                return
            try:
                answers.append(admin.request("GET", "/api/v1/nodes/rotor/proxy/healthz"))
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        def rotated_twice() -> bool:
            if cloud.node_ready("rotor") is not True:
                not_ready.append(time.time())
            return edge.log().count("certificate renewed with a new key") >= 2

        wait_for(rotated_twice, timeout=30, interval=0.2, what="two rotations:\n" + edge.log())
    finally:
        done.set()
        for thread in threads:
            thread.join(30)

    assert failures == []
    assert len(answers) >= 20 and set(answers) == {"ok"}
    assert not_ready == []
    assert "NotReady" not in cloud.log()
    new_cert = pki.load_cert(edge.pki / "edge.crt")
    assert new_cert.serial_number != first_cert.serial_number
    assert (edge.pki / "edge.key").read_bytes() != first_key
    assert pki.common_name(new_cert) == "system:node:rotor"
    assert "connection to the cloud lost" not in edge.log()


def _served_serial(port: int, ca_file: str) -> int:
    ctx = tls.client_context(ca_file=ca_file)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only reading the certificate the server presents
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock:
        der = tls_sock.getpeercert(binary_form=True)
    assert der is not None
    return pki.cert_from_bytes(der).serial_number


def test_server_certificate_reload_keeps_twenty_nodes_connected(env: Env) -> None:
    cloud = make_cloud(env, enrollRatePerClient=1000).start()
    token = cloud.token()
    edges = [join(cloud, f"n{i:02d}", token).start() for i in range(20)]
    wait_for(lambda: sum(cloud.node_ready(e.name) is True for e in edges) == 20, timeout=60,
             what="20 nodes Ready")
    ca_file = str(cloud.dir / "pki" / "ca.crt")
    before = _served_serial(cloud.hub_port, ca_file)

    renewed = env.run("moorage", "certs", "renew-server", "--data-dir", str(cloud.dir))
    assert "SIGHUP" in renewed.stdout
    assert cloud.daemon is not None
    cloud.daemon.send(signal.SIGHUP)
    cloud.daemon.wait_log("server certificate reloaded")
    assert "20 session(s) kept" in cloud.log()

    after = _served_serial(cloud.hub_port, ca_file)
    assert after != before
    assert after == pki.load_cert(cloud.dir / "pki" / "server.crt").serial_number
    # Every node still answers over its original connection: none reconnected.
    admin = AdminClient(kubeconfig.load(cloud.kubeconfig))
    for edge in edges:
        assert admin.request("GET", f"/api/v1/nodes/{edge.name}/proxy/healthz") == "ok"
        assert edge.log().count("connected to 127.0.0.1") == 1, edge.log()
    # A new node connects with the new server certificate.
    late = join(cloud, "late", token).start()
    wait_for(lambda: cloud.node_ready("late") is True, what="late Ready")
    assert late.log().count("connected to 127.0.0.1") == 1


def test_admin_certificate_renewed_in_place(env: Env) -> None:
    from moorage import kubeconfig as kc

    cloud = make_cloud(env).start()
    before = yaml.safe_load(cloud.kubeconfig.read_text())["users"][0]["user"]
    renewed = env.run("moorage", "certs", "renew-admin", "--data-dir", str(cloud.dir))
    assert "New admin certificate" in renewed.stdout
    after_doc = yaml.safe_load(cloud.kubeconfig.read_text())
    assert after_doc["users"][0]["user"]["client-certificate-data"] != \
        before["client-certificate-data"]
    assert after_doc["clusters"][0]["cluster"]["server"] == \
        f"https://127.0.0.1:{cloud.admin_port}"
    assert oct(cloud.kubeconfig.stat().st_mode & 0o777) == "0o600"
    kc.load(cloud.kubeconfig)  # a valid kubeconfig
    # The admin API accepts it: a token is issued with the new certificate.
    assert cloud.moorage("gettoken").stdout.count(".") >= 3
