"""Join tokens and the enrollment endpoint: misuse is refused, clearly, on both sides."""

from __future__ import annotations

import http.client
import os
import ssl
import time
from collections.abc import Iterator

import pytest

from certs import pki, tls
from moorage.token import parse_token, sign_jwt
from tests.support import Cloud, Env, join, make_cloud, wait_for


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    env = Env(tmp_path_factory.mktemp("enroll"))
    try:
        yield make_cloud(env, enrollRatePerClient=1000).start()
    finally:
        env.close()


def _join(cloud: Cloud, token: str, node: str, data_dir: str = "") -> tuple[int, str]:
    result = cloud.env.run("moorage", "join", "--cloudcore-ipport",
                           f"127.0.0.1:{cloud.hub_port}", "--certport", str(cloud.cert_port),
                           "--token", token, "--node-name", node, "--data-dir",
                           data_dir or str(cloud.env.root / f"edge-{node}"), check=False)
    return result.returncode, result.stderr


def test_token_with_wrong_ca_hash_is_refused_before_sending_anything(cloud: Cloud) -> None:
    good = cloud.token()
    forged = "0" * 64 + "." + good.split(".", 1)[1]
    code, err = _join(cloud, forged, "n-wrong-ca")
    assert code == 1
    assert "does not match the token" in err
    assert "signed a certificate for node n-wrong-ca" not in cloud.log()
    assert not (cloud.env.root / "edge-n-wrong-ca" / "edgecore.yaml").exists()


def _claims(token: str) -> dict[str, int]:
    import base64
    import json

    payload = parse_token(token).jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_expired_token_is_refused(cloud: Cloud) -> None:
    token = cloud.token(ttl="1s")
    exp = _claims(token)["exp"]
    wait_for(lambda: time.time() > exp + 0.5, 5, what="the token to expire")
    code, err = _join(cloud, token, "n-expired")
    assert code == 1
    assert "refused (401)" in err and "expired" in err and "moorage gettoken" in err
    wait_for(lambda: "enrollment of node 'n-expired'" in cloud.log(), 5, what="cloud log line")


def test_unknown_token_is_refused(cloud: Cloud) -> None:
    ca_hash = cloud.token().split(".", 1)[0]
    jwt, _ = sign_jwt(os.urandom(32), 3600)  # well-formed, but not signed by this cloud
    code, err = _join(cloud, f"{ca_hash}.{jwt}", "n-unknown")
    assert code == 1
    assert "refused (401)" in err and "unknown token" in err


def test_malformed_token_is_refused_locally(cloud: Cloud) -> None:
    code, err = _join(cloud, "not-a-token", "n-malformed")
    assert code == 1 and "malformed join token" in err


def _enroll_request(cloud: Cloud, body: bytes, headers: dict[str, str],
                    ctx: ssl.SSLContext | None = None) -> tuple[int, str]:
    ctx = ctx or tls.client_context(ca_file=cloud.dir / "pki" / "ca.crt")
    conn = http.client.HTTPSConnection("127.0.0.1", cloud.cert_port, context=ctx, timeout=10)
    try:
        conn.request("POST", "/edge.crt", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_oversized_csr_is_refused(cloud: Cloud) -> None:
    jwt = parse_token(cloud.token()).jwt
    status, text = _enroll_request(cloud, b"x" * (64 * 1024),
                                   {"NodeName": "n-big", "Authorization": f"Bearer {jwt}"})
    assert status == 413 and "larger than" in text


def test_garbage_csr_is_refused_with_reason(cloud: Cloud) -> None:
    jwt = parse_token(cloud.token()).jwt
    status, text = _enroll_request(cloud, b"\x30\x03garbage",
                                   {"NodeName": "n-garbage", "Authorization": f"Bearer {jwt}"})
    assert status == 400 and "not a DER or PEM certificate signing request" in text


def test_renewal_with_another_nodes_certificate_is_refused(cloud: Cloud) -> None:
    edge = join(cloud, "n-holder")
    ctx = tls.client_context(ca_file=edge.pki / "ca.crt", cert_file=edge.pki / "edge.crt",
                             key_file=edge.pki / "edge.key")
    key = pki.generate_key()
    csr = pki.csr_to_der(pki.make_csr(key, pki.node_subject("n-other")))
    status, text = _enroll_request(cloud, csr, {"NodeName": "n-other"}, ctx)
    assert status == 401 and "not to node 'n-other'" in text
    # Its own name works: that is rotation.
    csr = pki.csr_to_der(pki.make_csr(key, pki.node_subject("n-holder")))
    status, _ = _enroll_request(cloud, csr, {"NodeName": "n-holder"}, ctx)
    assert status == 200


def test_token_cannot_take_over_a_connected_node(cloud: Cloud) -> None:
    edge = join(cloud, "n-live").start()
    wait_for(lambda: cloud.node_ready("n-live") is True, what="n-live Ready")
    other_machine = str(cloud.env.root / "impostor")
    code, err = _join(cloud, cloud.token(), "n-live", other_machine)
    assert code == 1
    assert "is connected right now" in err
    edge.stop()


def test_enrollment_is_rate_limited(tmp_path: os.PathLike[str]) -> None:
    env = Env(tmp_path)  # type: ignore[arg-type]
    try:
        cloud = make_cloud(env, enrollRatePerClient=4).start()
        ctx = tls.client_context(verify=False)
        statuses = []
        for _ in range(8):
            conn = http.client.HTTPSConnection("127.0.0.1", cloud.cert_port, context=ctx,
                                               timeout=10)
            conn.request("GET", "/ca.crt")
            statuses.append(conn.getresponse().status)
            conn.close()
        assert statuses[0] == 200
        assert 429 in statuses
    finally:
        env.close()
