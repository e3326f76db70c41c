"""cloudcore's own configuration and keys: refused clearly when wrong, protected at rest."""

from __future__ import annotations

import http.client

from certs import pki, tls
from tests.support import Env, edit_yaml, join, make_cloud, wait_for


def test_invalid_config_is_refused_naming_the_field(env: Env) -> None:
    cloud = make_cloud(env)
    edit_yaml(cloud.config, lambda d: d["modules"]["cloudHub"]["websocket"].update(port="ten"))
    result = env.run("cloudcore", "--config", str(cloud.config), check=False)
    assert result.returncode == 2
    assert "modules.cloudHub.websocket.port: expected an integer, got 'ten'" in result.stderr

    edit_yaml(cloud.config, lambda d: d["modules"]["cloudHub"]["websocket"].update(port=10000))
    edit_yaml(cloud.config, lambda d: d["modules"]["cloudHub"].update(nodeLimt=5))
    result = env.run("cloudcore", "--config", str(cloud.config), check=False)
    assert result.returncode == 2
    assert "modules.cloudHub.nodeLimt: unknown field (did you mean nodeLimit?)" in result.stderr

    edit_yaml(cloud.config, lambda d: d["modules"]["cloudHub"].pop("nodeLimt"))
    edit_yaml(cloud.config, lambda d: d["modules"]["cloudHub"].update(
        tlsCipherSuites=["AES128-SHA"]))
    result = env.run("cloudcore", "--config", str(cloud.config), check=False)
    assert result.returncode == 2
    assert "AES128-SHA not allowed" in result.stderr


def test_keys_encrypted_at_rest_need_the_passphrase(env: Env) -> None:
    env.vars["MOORAGE_KEY_PASSPHRASE"] = "correct horse battery staple"
    cloud = make_cloud(env)
    for name in ("ca.key", "server.key"):
        assert b"ENCRYPTED" in (cloud.dir / "pki" / name).read_bytes()

    del env.vars["MOORAGE_KEY_PASSPHRASE"]
    result = env.run("cloudcore", "--config", str(cloud.config), check=False)
    assert result.returncode == 2
    assert "encrypted" in result.stderr and "MOORAGE_KEY_PASSPHRASE" in result.stderr

    env.vars["MOORAGE_KEY_PASSPHRASE"] = "correct horse battery staple"
    cloud.start()
    edge = join(cloud, "sealed").start()
    assert b"ENCRYPTED" in (edge.pki / "edge.key").read_bytes()
    wait_for(lambda: cloud.node_ready("sealed") is True, what="sealed Ready")


def test_node_limit_refuses_extra_nodes(env: Env) -> None:
    cloud = make_cloud(env, nodeLimit=1).start()
    token = cloud.token()
    first = join(cloud, "first", token).start()
    wait_for(lambda: cloud.node_ready("first") is True, what="first Ready")
    second = join(cloud, "second", token).start()
    assert second.daemon is not None
    second.daemon.wait_log("the node limit of 1 connected nodes is reached")
    assert "(503)" in second.log()
    first.stop()
    wait_for(lambda: cloud.node_ready("second") is True, timeout=20, what="second admitted")


def test_connection_is_closed_when_its_certificate_expires(env: Env) -> None:
    cloud = make_cloud(env, edgeCertValidity="4s").start()
    edge = join(cloud, "mayfly", configure={"rotateCertificates": False}).start()
    wait_for(lambda: cloud.node_ready("mayfly") is True, what="mayfly Ready")
    assert cloud.daemon is not None and edge.daemon is not None
    cloud.daemon.wait_log("node mayfly: certificate", timeout=10)
    assert "expired during the session; closing it" in cloud.log()
    edge.daemon.wait_log("the node certificate expired at", timeout=10)
    assert "moorage join --force" in edge.log()


def test_admin_api_refuses_node_certificates(env: Env) -> None:
    cloud = make_cloud(env).start()
    edge = join(cloud, "nosy")
    ctx = tls.client_context(ca_file=edge.pki / "ca.crt", cert_file=edge.pki / "edge.crt",
                             key_file=edge.pki / "edge.key")
    conn = http.client.HTTPSConnection("127.0.0.1", cloud.admin_port, context=ctx, timeout=10)
    conn.request("GET", "/api/v1/nodes")
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 403
    assert "may not use the admin API" in body
    assert "refused for 'system:node:nosy'" in cloud.log()


def test_kubeedge_style_get_with_csr_body_enrolls(env: Env) -> None:
    """KubeEdge's edge sends GET /edge.crt with the DER CSR as the body."""
    from moorage.token import parse_token

    cloud = make_cloud(env).start()
    jwt = parse_token(cloud.token()).jwt
    key = pki.generate_key()
    csr = pki.csr_to_der(pki.make_csr(key, pki.node_subject("kube-style")))
    ctx = tls.client_context(ca_file=cloud.dir / "pki" / "ca.crt")
    conn = http.client.HTTPSConnection("127.0.0.1", cloud.cert_port, context=ctx, timeout=10)
    conn.request("GET", "/edge.crt", body=csr,
                 headers={"Authorization": f"Bearer {jwt}", "NodeName": "kube-style"})
    response = conn.getresponse()
    der = response.read()
    conn.close()
    assert response.status == 200
    cert = pki.cert_from_bytes(der)  # DER, as KubeEdge's edge expects
    assert not der.startswith(b"-----")
    assert pki.common_name(cert) == "system:node:kube-style"
    assert pki.organizations(cert) == ["system:nodes"]
    conn = http.client.HTTPSConnection("127.0.0.1", cloud.cert_port, context=ctx, timeout=10)
    conn.request("GET", "/ca.crt")
    ca_der = conn.getresponse().read()
    conn.close()
    ca = pki.load_cert(cloud.dir / "pki" / "ca.crt")
    assert pki.cert_from_bytes(ca_der) == ca
