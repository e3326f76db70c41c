"""Typed configs (moorage.config, cloudcore.yaml, edgecore.yaml): errors name the field."""

from __future__ import annotations

import copy
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from certs.tls import DEFAULT_TLS12_CIPHERS
from cloudcore import config as cloud_config
from cloudcore.config import CloudCoreConfig
from edgecore import config as edge_config
from edgecore.config import EdgeCoreConfig
from moorage import config
from moorage.errors import ConfigError

CLOUD: dict[str, Any] = {
    "apiVersion": cloud_config.API_VERSION,
    "kind": "CloudCore",
    "dataDir": "/var/lib/moorage",
    "modules": {
        "cloudHub": {
            "advertiseAddress": ["10.0.0.1"],
            "tlsCAFile": "/pki/ca.crt",
            "tlsCAKeyFile": "/pki/ca.key",
            "tlsCertFile": "/pki/server.crt",
            "tlsPrivateKeyFile": "/pki/server.key",
        },
    },
}

EDGE: dict[str, Any] = {
    "apiVersion": edge_config.API_VERSION,
    "kind": "EdgeCore",
    "dataDir": "/var/lib/edgecore",
    "modules": {
        "edgeHub": {
            "tlsCaFile": "/pki/ca.crt",
            "tlsCertFile": "/pki/edge.crt",
            "tlsPrivateKeyFile": "/pki/edge.key",
            "httpServer": "https://10.0.0.1:10002",
            "websocket": {"server": "10.0.0.1:10000"},
        },
        "edged": {"hostnameOverride": "edge-1"},
    },
}


def cloud(**hub: Any) -> dict[str, Any]:
    data = copy.deepcopy(CLOUD)
    data["modules"]["cloudHub"].update(hub)
    return data


def edge(**hub: Any) -> dict[str, Any]:
    data = copy.deepcopy(EDGE)
    data["modules"]["edgeHub"].update(hub)
    return data


def refused(cls: type, data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(cls, data)
    return str(caught.value)


# ---------------------------------------------------------------- the generic loader


@dataclass
class Inner:
    port: int = 1
    ratio: float = 0.5
    on: bool = False
    name: str = "x"
    names: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    maybe: str | None = None
    timeout: float = config.duration(5.0)
    ca_file: str = config.key("caFILE", "")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    some_value: int = 0


def test_camel_case_keys_and_explicit_keys() -> None:
    obj = config.from_mapping(Outer, {"someValue": 3, "inner": {"caFILE": "ca", "port": 7}})
    assert obj.some_value == 3
    assert obj.inner.ca_file == "ca"
    assert obj.inner.port == 7


def test_empty_and_null_give_defaults() -> None:
    assert config.from_mapping(Outer, None) == Outer()
    assert config.from_mapping(Outer, {}) == Outer()
    assert config.from_mapping(Outer, {"inner": None}) == Outer()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"port": "80"}}, "inner.port: expected an integer"),
        ({"inner": {"port": True}}, "inner.port: expected an integer"),
        ({"inner": {"port": 1.5}}, "inner.port: expected an integer"),
        ({"inner": {"ratio": "1"}}, "inner.ratio: expected a number"),
        ({"inner": {"ratio": False}}, "inner.ratio: expected a number"),
        ({"inner": {"on": "true"}}, "inner.on: expected true or false"),
        ({"inner": {"on": 1}}, "inner.on: expected true or false"),
        ({"inner": {"name": ["a"]}}, "inner.name: expected a string"),
        ({"inner": {"name": True}}, "inner.name: expected a string"),
        ({"inner": {"names": 5}}, "inner.names: expected a list"),
        ({"inner": {"names": ["a", ["b"]]}}, r"inner.names[1]: expected a string"),
        ({"inner": {"labels": ["a"]}}, "inner.labels: expected a mapping"),
        ({"inner": "x"}, "inner: expected a mapping"),
        ({"inner": {"timeout": "soon"}}, "inner.timeout: 'soon' is not a duration"),
        ("text", "top level: expected a mapping"),
        ({"someValue": "x"}, "someValue: expected an integer"),
    ],
)
def test_type_errors_name_the_dotted_path(data: Any, message: str) -> None:
    assert refused(Outer, data).startswith(message)


def test_unknown_key_with_did_you_mean() -> None:
    assert refused(Outer, {"inner": {"prot": 1}}) == (
        "inner.prot: unknown field (did you mean port?)")
    assert refused(Outer, {"someValu": 1}) == "someValu: unknown field (did you mean someValue?)"


def test_unknown_key_without_a_close_match_lists_the_known_ones() -> None:
    message = refused(Outer, {"zzzzzz": 1})
    assert message.startswith("zzzzzz: unknown field (known: ")
    assert "inner" in message and "someValue" in message


def test_snake_case_spelling_is_unknown() -> None:
    assert "did you mean someValue" in refused(Outer, {"some_value": 1})


@pytest.mark.parametrize(
    ("value", "seconds"), [("15s", 15.0), ("24h", 86400.0), ("1h30m", 5400.0), (30, 30.0),
                           (2.5, 2.5), ("500ms", 0.5), ("365d", 365 * 86400.0)],
)
def test_durations(value: Any, seconds: float) -> None:
    assert config.from_mapping(Inner, {"timeout": value}).timeout == seconds


@pytest.mark.parametrize("value", [[15], {"s": 15}, None])
def test_duration_of_the_wrong_yaml_type_is_a_config_error(value: Any) -> None:
    # e.g. `heartbeat:` left empty, or `heartbeat: [15s]`: still a ConfigError naming the field.
    with pytest.raises(ConfigError, match=r"inner\.timeout"):
        config.from_mapping(Outer, {"inner": {"timeout": value}})


def test_comma_separated_string_list() -> None:
    assert config.from_mapping(Inner, {"names": "a, b,,c "}).names == ["a", "b", "c"]


def test_numbers_are_accepted_as_strings() -> None:
    assert config.from_mapping(Inner, {"name": 42}).name == "42"


def test_optional() -> None:
    assert config.from_mapping(Inner, {"maybe": None}).maybe is None
    assert config.from_mapping(Inner, {"maybe": "x"}).maybe == "x"


@given(port=st.integers(), ratio=st.floats(allow_nan=False), on=st.booleans(),
       names=st.lists(st.text(min_size=1).filter(lambda s: "," not in s)))
def test_to_mapping_from_mapping_round_trip(port: int, ratio: float, on: bool,
                                            names: list[str]) -> None:
    obj = Outer(Inner(port=port, ratio=ratio, on=on, names=names, timeout=3.0))
    assert config.from_mapping(Outer, config.to_mapping(obj)) == obj


# ---------------------------------------------------------------- cloudcore.yaml


def test_minimal_cloud_config() -> None:
    cfg = config.from_mapping(CloudCoreConfig, CLOUD)
    hub = cfg.modules.cloud_hub
    assert hub.advertise_address == ["10.0.0.1"]
    assert hub.tls_ca_file == "/pki/ca.crt"
    assert hub.tls_cipher_suites == list(DEFAULT_TLS12_CIPHERS)
    assert hub.websocket.port == 10000
    assert hub.https.port == 10002
    assert cfg.modules.admin.port == 6443
    assert hub.token_ttl == 24 * 3600.0
    assert cfg.database_path == Path("/var/lib/moorage/cloudcore.db")
    assert cfg.token_key_path == Path("/var/lib/moorage/pki/token.key")


def test_cloud_durations() -> None:
    cfg = config.from_mapping(CloudCoreConfig, cloud(
        tokenTTL="12h", nodeGracePeriod="1m", keepaliveInterval=5, edgeCertValidity="90d"))
    hub = cfg.modules.cloud_hub
    assert (hub.token_ttl, hub.node_grace_period, hub.keepalive_interval,
            hub.edge_cert_validity) == (43200.0, 60.0, 5.0, 90 * 86400.0)


def test_cloud_port_not_an_integer() -> None:
    message = refused(CloudCoreConfig, cloud(websocket={"port": "10000"}))
    assert message.startswith("modules.cloudHub.websocket.port: expected an integer")


@pytest.mark.parametrize("port", [70000, 65536, 0, -1])
def test_cloud_port_out_of_range(port: int) -> None:
    message = refused(CloudCoreConfig, cloud(https={"port": port}))
    assert message.startswith("modules.cloudHub.https.port:")
    assert str(port) in message


def test_admin_port_out_of_range() -> None:
    data = copy.deepcopy(CLOUD)
    data["modules"]["admin"] = {"port": 70000}
    assert refused(CloudCoreConfig, data).startswith("modules.admin.port:")


def test_cloud_unknown_key_hint() -> None:
    data = copy.deepcopy(CLOUD)
    data["modules"]["cloudHub"]["tlsCaFile"] = data["modules"]["cloudHub"].pop("tlsCAFile")
    assert refused(CloudCoreConfig, data) == (
        "modules.cloudHub.tlsCaFile: unknown field (did you mean tlsCAFile?)")
    data = copy.deepcopy(CLOUD)
    data["modules"]["cloudhub"] = data["modules"].pop("cloudHub")
    assert refused(CloudCoreConfig, data) == (
        "modules.cloudhub: unknown field (did you mean cloudHub?)")


@pytest.mark.parametrize("suites", [["AES128-SHA"], ["ECDHE-RSA-AES128-SHA"], [],
                                    "ECDHE-RSA-AES128-GCM-SHA256,DES-CBC3-SHA"])
def test_cloud_invalid_ciphers(suites: Any) -> None:
    message = refused(CloudCoreConfig, cloud(tlsCipherSuites=suites))
    assert message.startswith("modules.cloudHub.tlsCipherSuites")


def test_cloud_cipher_subset_as_comma_string() -> None:
    cfg = config.from_mapping(CloudCoreConfig, cloud(
        tlsCipherSuites="ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES256-GCM-SHA384"))
    assert cfg.modules.cloud_hub.tls_cipher_suites == [
        "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]


def test_cloud_tls_min_version() -> None:
    assert "tlsMinVersion" in refused(CloudCoreConfig, cloud(tlsMinVersion="1.1"))
    cfg = config.from_mapping(CloudCoreConfig, cloud(tlsMinVersion="1.3"))
    assert cfg.modules.cloud_hub.tls_min_version == "1.3"


@pytest.mark.parametrize(
    ("hub", "field_path"),
    [
        ({"advertiseAddress": []}, "modules.cloudHub.advertiseAddress"),
        ({"tlsCAFile": ""}, "modules.cloudHub.tlsCAFile"),
        ({"tlsCAKeyFile": ""}, "modules.cloudHub.tlsCAKeyFile"),
        ({"tlsCertFile": ""}, "modules.cloudHub.tlsCertFile"),
        ({"tlsPrivateKeyFile": ""}, "modules.cloudHub.tlsPrivateKeyFile"),
        ({"nodeLimit": 0}, "modules.cloudHub.nodeLimit"),
        ({"maxMessageBytes": 1024}, "modules.cloudHub.maxMessageBytes"),
        ({"tokenTTL": "-1h"}, "modules.cloudHub.tokenTTL"),
        ({"nodeGracePeriod": 0}, "modules.cloudHub.nodeGracePeriod"),
    ],
)
def test_cloud_refusals_name_the_field(hub: dict[str, Any], field_path: str) -> None:
    assert refused(CloudCoreConfig, cloud(**hub)).startswith(field_path + ":")


def test_cloud_kind_and_data_dir() -> None:
    data = copy.deepcopy(CLOUD)
    data["kind"] = "EdgeCore"
    assert refused(CloudCoreConfig, data).startswith("kind:")
    data = copy.deepcopy(CLOUD)
    del data["dataDir"]
    assert refused(CloudCoreConfig, data).startswith("dataDir:")


def test_cloud_required_fields_are_required_even_when_the_section_is_omitted() -> None:
    # With `modules.cloudHub: null` the missing TLS files are reported; leaving the
    # whole section out must not silently yield a hub without certificates.
    data = copy.deepcopy(CLOUD)
    data["modules"]["cloudHub"] = None
    assert refused(CloudCoreConfig, data).startswith("modules.cloudHub.")
    data = copy.deepcopy(CLOUD)
    del data["modules"]
    assert refused(CloudCoreConfig, data).startswith("modules.cloudHub.")


def test_cloud_round_trip() -> None:
    cfg = config.from_mapping(CloudCoreConfig, cloud(tokenTTL="2h"))
    assert config.from_mapping(CloudCoreConfig, config.to_mapping(cfg)) == cfg
    assert config.to_mapping(cfg)["modules"]["cloudHub"]["tokenTTL"] == 7200.0


# ---------------------------------------------------------------- edgecore.yaml


def test_minimal_edge_config() -> None:
    cfg = config.from_mapping(EdgeCoreConfig, EDGE)
    hub = cfg.modules.edge_hub
    assert cfg.node_name == "edge-1"
    assert hub.heartbeat == 15.0
    assert hub.project_id == edge_config.DEFAULT_PROJECT_ID
    assert hub.websocket.server == "10.0.0.1:10000"
    assert hub.tls_cipher_suites == list(DEFAULT_TLS12_CIPHERS)
    assert cfg.data_path == Path("/var/lib/edgecore")


def test_edge_keys() -> None:
    data = edge(heartbeat="30s", projectID="p1", reconnectBase="2s", reconnectMax="1m")
    data["modules"]["edged"].update(nodeIP="10.0.0.9", nodeStatusUpdateFrequency="20s",
                                    labels={"zone": "a"})
    cfg = config.from_mapping(EdgeCoreConfig, data)
    hub, edged = cfg.modules.edge_hub, cfg.modules.edged
    assert (hub.heartbeat, hub.project_id, hub.reconnect_base, hub.reconnect_max) == (
        30.0, "p1", 2.0, 60.0)
    assert (edged.node_ip, edged.node_status_update_frequency, edged.labels) == (
        "10.0.0.9", 20.0, {"zone": "a"})


@pytest.mark.parametrize(
    ("hub", "field_path"),
    [
        ({"websocket": {"server": "10.0.0.1"}}, "modules.edgeHub.websocket.server"),
        ({"websocket": {"server": "10.0.0.1:70000"}}, "modules.edgeHub.websocket.server"),
        ({"websocket": {"server": ":10000"}}, "modules.edgeHub.websocket.server"),
        ({"websocket": {"server": "h:port"}}, "modules.edgeHub.websocket.server"),
        ({"websocket": {"handshakeTimeout": "x"}}, "modules.edgeHub.websocket.handshakeTimeout"),
        ({"httpServer": "http://10.0.0.1:10002"}, "modules.edgeHub.httpServer"),
        ({"httpServer": "https://10.0.0.1"}, "modules.edgeHub.httpServer"),
        ({"httpServer": "https://10.0.0.1:0"}, "modules.edgeHub.httpServer"),
        ({"tlsCaFile": ""}, "modules.edgeHub.tlsCaFile"),
        ({"tlsCertFile": ""}, "modules.edgeHub.tlsCertFile"),
        ({"tlsPrivateKeyFile": ""}, "modules.edgeHub.tlsPrivateKeyFile"),
        ({"tlsCipherSuites": ["AES128-SHA"]}, "modules.edgeHub.tlsCipherSuites"),
        ({"reconnectBase": "1m", "reconnectMax": "30s"}, "modules.edgeHub.reconnectMax"),
        ({"heartbeat": "often"}, "modules.edgeHub.heartbeat"),
        ({"maxMessageBytes": "4M"}, "modules.edgeHub.maxMessageBytes"),
        ({"rotateCertificates": "yes"}, "modules.edgeHub.rotateCertificates"),
        ({"tlsCAFile": "x"}, "modules.edgeHub.tlsCAFile"),
    ],
)
def test_edge_refusals_name_the_field(hub: dict[str, Any], field_path: str) -> None:
    assert refused(EdgeCoreConfig, edge(**hub)).startswith(field_path + ":")


def test_edge_unknown_key_hint() -> None:
    assert refused(EdgeCoreConfig, edge(tlsCAFile="x")) == (
        "modules.edgeHub.tlsCAFile: unknown field (did you mean tlsCaFile?)")


def test_edge_https_server_with_trailing_slash() -> None:
    cfg = config.from_mapping(EdgeCoreConfig, edge(httpServer="https://cloud.example:10002/"))
    assert cfg.modules.edge_hub.http_server == "https://cloud.example:10002/"


def test_edge_needs_a_node_name() -> None:
    data = copy.deepcopy(EDGE)
    data["modules"]["edged"]["hostnameOverride"] = ""
    assert refused(EdgeCoreConfig, data).startswith("modules.edged.hostnameOverride:")


def test_edge_required_fields_are_required_even_when_the_section_is_omitted() -> None:
    data = copy.deepcopy(EDGE)
    data["modules"]["edged"] = None
    assert refused(EdgeCoreConfig, data).startswith("modules.edged.hostnameOverride:")
    data = copy.deepcopy(EDGE)
    del data["modules"]["edged"]
    assert refused(EdgeCoreConfig, data).startswith("modules.edged.hostnameOverride:")


def test_edge_kind() -> None:
    data = copy.deepcopy(EDGE)
    data["kind"] = "CloudCore"
    assert refused(EdgeCoreConfig, data).startswith("kind:")


# ---------------------------------------------------------------- files


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_files(tmp_path: Path) -> None:
    cloud_cfg = cloud_config.load(write(tmp_path / "cloudcore.yaml", CLOUD))
    assert cloud_cfg == config.from_mapping(CloudCoreConfig, CLOUD)
    edge_cfg = edge_config.load(write(tmp_path / "edgecore.yaml", EDGE))
    assert edge_cfg.node_name == "edge-1"


def test_load_reads_durations_from_yaml_text(tmp_path: Path) -> None:
    text = yaml.safe_dump(CLOUD).replace("cloudHub:\n", "cloudHub:\n    tokenTTL: 24h\n"
                                         "    nodeGracePeriod: 15s\n")
    path = tmp_path / "cloudcore.yaml"
    path.write_text(text)
    hub = cloud_config.load(path).modules.cloud_hub
    assert (hub.token_ttl, hub.node_grace_period) == (86400.0, 15.0)


def test_load_refuses_yaml_aliases(tmp_path: Path) -> None:
    path = tmp_path / "cloudcore.yaml"
    text = yaml.safe_dump(CLOUD).replace("dataDir: /var/lib/moorage\n",
                                         "dataDir: &d /var/lib/moorage\n")
    assert "&d" in text
    path.write_text(text + "keyPassphraseFile: *d\n")
    with pytest.raises(ConfigError, match="aliases"):
        cloud_config.load(path)


def test_load_error_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "edgecore.yaml", edge(heartbeat="often"))
    with pytest.raises(ConfigError) as caught:
        edge_config.load(path)
    assert str(caught.value).startswith(f"{path}: modules.edgeHub.heartbeat:")


def test_load_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        edge_config.load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: EdgeCore\nmodules: [\n")
    with pytest.raises(ConfigError, match="line 3"):
        edge_config.load(bad)


def test_save_then_load(tmp_path: Path) -> None:
    cfg = config.from_mapping(EdgeCoreConfig, EDGE)
    path = tmp_path / "etc" / "edgecore.yaml"
    config.save(cfg, path, header="# written by moorage join")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("# written by moorage join\n")
    assert edge_config.load(path) == cfg
