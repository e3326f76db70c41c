"""init -> cloudcore -> gettoken -> join -> edgecore, as an operator runs them."""

from __future__ import annotations

import stat

import yaml

from tests.support import Env, edit_yaml, join, make_cloud, wait_for


def test_node_goes_ready_notready_and_ready_again(env: Env) -> None:
    cloud = make_cloud(env, nodeGracePeriod="3s").start()
    edge = join(cloud, "edge-a").start()

    wait_for(lambda: cloud.node_ready("edge-a") is True, what="edge-a Ready")
    table = cloud.moorage("get", "nodes").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "STATUS", "AGE", "VERSION", "INTERNAL-IP"]
    assert row.split()[:2] == ["edge-a", "Ready"]
    assert row.split()[4] == "127.0.0.1"

    edge.stop()
    wait_for(lambda: cloud.node_ready("edge-a") is False, timeout=10, what="edge-a NotReady")
    assert "node edge-a is NotReady" in cloud.log()
    assert "NotReady" in cloud.moorage("get", "nodes", "edge-a").stdout

    edge.start()
    wait_for(lambda: cloud.node_ready("edge-a") is True, what="edge-a Ready again")
    node = yaml.safe_load(cloud.moorage("get", "nodes", "edge-a", "-o", "yaml").stdout)
    assert node["metadata"]["labels"]["node-role.kubernetes.io/edge"] == ""
    assert node["status"]["nodeInfo"]["operatingSystem"] == "linux"
    assert int(node["status"]["capacity"]["cpu"]) >= 1


def test_keys_are_owner_only_and_edge_config_holds_no_token(env: Env) -> None:
    cloud = make_cloud(env).start()
    token = cloud.token()
    edge = join(cloud, "edge-b", token)
    keys = [cloud.dir / "pki" / name for name in ("ca.key", "server.key", "token.key")]
    keys.append(edge.pki / "edge.key")
    for path in [*keys, cloud.kubeconfig, edge.config]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (cloud.dir / "pki", edge.pki):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    text = edge.config.read_text()
    assert token not in text
    assert token.split(".", 1)[1] not in text  # not even the JWT part
    assert "token" not in yaml.safe_load(text)["modules"]["edgeHub"]


def test_rejoin_says_enrolled_and_changes_nothing_without_force(env: Env) -> None:
    cloud = make_cloud(env).start()
    edge = join(cloud, "edge-c")
    before = (edge.pki / "edge.crt").read_bytes()
    again = env.run("moorage", "join", "--cloudcore-ipport", f"127.0.0.1:{cloud.hub_port}",
                    "--certport", str(cloud.cert_port), "--token", cloud.token(),
                    "--node-name", "edge-c", "--data-dir", str(edge.dir), check=False)
    assert again.returncode == 1
    assert "already enrolled" in again.stderr
    assert (edge.pki / "edge.crt").read_bytes() == before


def test_node_whose_certificate_expired_offline_rejoins_with_fresh_token(env: Env) -> None:
    cloud = make_cloud(env, edgeCertValidity="3s").start()
    edge = join(cloud, "edge-d", configure={"rotateCertificates": False})
    from certs import pki

    cert = pki.load_cert(edge.pki / "edge.crt")
    wait_for(lambda: pki.not_valid_after(cert) < pki.utcnow(), timeout=10,
             what="the node certificate to expire")

    refused = env.run("edgecore", "--config", str(edge.config), check=False)
    assert refused.returncode == 2
    assert "expired" in refused.stderr and "moorage join --force" in refused.stderr

    cloud.configure(edgeCertValidity="1h")
    cloud.stop()
    cloud.start()
    # The operator's own settings survive a re-enrollment.
    edit_yaml(edge.config, lambda d: d["modules"]["edged"].update(labels={"site": "plant-7"}))
    env.run("moorage", "join", "--cloudcore-ipport", f"127.0.0.1:{cloud.hub_port}",
            "--certport", str(cloud.cert_port), "--token", cloud.token(), "--node-name",
            "edge-d", "--data-dir", str(edge.dir), "--force")
    rejoined = yaml.safe_load(edge.config.read_text())["modules"]
    assert rejoined["edged"]["labels"] == {"site": "plant-7"}
    assert rejoined["edgeHub"]["rotateCertificates"] is False
    edge.configure(heartbeat="1s")
    edge.start()
    wait_for(lambda: cloud.node_ready("edge-d") is True, what="re-joined edge-d Ready")


def test_edgecore_refuses_to_start_with_a_key_that_does_not_match(env: Env) -> None:
    """The certificate is read without cryptography at start; the key is still checked."""
    from certs import pki

    cloud = make_cloud(env).start()
    edge = join(cloud, "mismatch")
    (edge.pki / "edge.key").write_bytes(pki.key_to_pem(pki.generate_key()))
    edge.start()
    assert edge.daemon is not None and edge.daemon.proc is not None
    assert edge.daemon.proc.wait(30) != 0
    assert f"cannot use {edge.pki / 'edge.crt'} with {edge.pki / 'edge.key'}" in edge.log()
    assert "Traceback" not in edge.log()
