"""edgecore.yaml: names follow KubeEdge's edgecore.yaml where an equivalent exists.

It holds no join token: `moorage join` uses the token once and never writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from certs.tls import DEFAULT_TLS12_CIPHERS, check_ciphers
from moorage import config
from moorage.config import check_address, duration, key
from moorage.errors import ConfigError

API_VERSION = "edgecore.config.kubeedge.io/v1alpha2"
DEFAULT_PROJECT_ID = "e632aba927ea4ac2b575ec1603d56f10"  # KubeEdge's default


def _host_port(value: str, where: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")


@dataclass
class WebSocketClient:
    enable: bool = True
    server: str = ""
    handshake_timeout: float = duration(30.0)

    def validate(self, where: str) -> None:
        _host_port(self.server, f"{where}.server")


@dataclass
class EdgeHub:
    heartbeat: float = duration(15.0)
    project_id: str = key("projectID", DEFAULT_PROJECT_ID)
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_private_key_file: str = ""
    tls_cipher_suites: list[str] = field(default_factory=lambda: list(DEFAULT_TLS12_CIPHERS))
    http_server: str = ""
    rotate_certificates: bool = True
    websocket: WebSocketClient = field(default_factory=WebSocketClient)
    reconnect_base: float = duration(1.0)
    reconnect_max: float = duration(30.0)
    max_message_bytes: int = 8 * 1024 * 1024  # a 5 MB ServiceBus body, base64, fits

    def validate(self, where: str) -> None:
        for name, value in (("tlsCaFile", self.tls_ca_file), ("tlsCertFile", self.tls_cert_file),
                            ("tlsPrivateKeyFile", self.tls_private_key_file)):
            if not value:
                raise ConfigError(f"{where}.{name}: required (written by `moorage join`)")
        if not self.http_server.startswith("https://"):
            raise ConfigError(f"{where}.httpServer: expected https://HOST:PORT, "
                              f"got {self.http_server!r}")
        _host_port(self.http_server.removeprefix("https://").rstrip("/"), f"{where}.httpServer")
        try:
            check_ciphers(self.tls_cipher_suites)
        except Exception as exc:
            raise ConfigError(f"{where}.tlsCipherSuites: {exc}") from None
        if self.reconnect_max < self.reconnect_base:
            raise ConfigError(f"{where}.reconnectMax: must not be below reconnectBase")


@dataclass
class Edged:
    enable: bool = True
    hostname_override: str = ""
    node_ip: str = key("nodeIP", "")
    node_status_update_frequency: float = duration(10.0)
    labels: dict[str, str] = field(default_factory=dict)
    remote_runtime_endpoint: str = "unix:///run/containerd/containerd.sock"
    sync_period: float = duration(1.0)
    crash_loop_backoff_base: float = duration(10.0)
    crash_loop_backoff_max: float = duration(300.0)

    def validate(self, where: str) -> None:
        if not self.hostname_override:
            raise ConfigError(f"{where}.hostnameOverride: required (the node name)")




@dataclass
class MetaServer:
    enable: bool = False
    server: str = "127.0.0.1:10550"
    insecure_allow_non_loopback: bool = False

    def validate(self, where: str) -> None:
        _host_port(self.server, f"{where}.server")


@dataclass
class MetaManager:
    meta_server: MetaServer = field(default_factory=MetaServer)


@dataclass
class DeviceTwin:
    """The DMI server that device mappers register with (a unix socket, owner-only)."""

    enable: bool = True
    dmi_sock_path: str = ""  # default <dataDir>/dmi.sock
    dmi_sock_group: str = ""  # a group whose members' mappers may connect too (mode 0660)
    max_message_bytes: int = 4 * 1024 * 1024

    def validate(self, where: str) -> None:
        import grp

        if self.dmi_sock_group:
            try:
                grp.getgrnam(self.dmi_sock_group)
            except KeyError:
                raise ConfigError(f"{where}.dmiSockGroup: no group named "
                                  f"{self.dmi_sock_group!r} on this machine (create it, or "
                                  "leave it empty for an owner-only socket)") from None
        if self.dmi_sock_path and not self.dmi_sock_path.startswith("/"):
            raise ConfigError(f"{where}.dmiSockPath: an absolute path is required, got "
                              f"{self.dmi_sock_path!r}")


@dataclass
class EventBusTLS:
    enable: bool = False
    tls_mqtt_ca_file: str = key("tlsMqttCAFile", "")
    tls_mqtt_cert_file: str = ""
    tls_mqtt_private_key_file: str = ""


@dataclass
class EventBus:
    """An MQTT client of a broker on this machine (mosquitto), KubeEdge's topics."""

    enable: bool = False
    mqtt_server_external: str = "tcp://127.0.0.1:1883"
    mqtt_qos: int = key("mqttQOS", 1)
    mqtt_retain: bool = False
    tls: EventBusTLS = field(default_factory=EventBusTLS)
    reconnect_max: float = duration(30.0)
    max_message_bytes: int = 1024 * 1024

    def validate(self, where: str) -> None:
        scheme, sep, rest = self.mqtt_server_external.partition("://")
        if not sep or scheme not in ("tcp", "ssl", "tls"):
            raise ConfigError(f"{where}.mqttServerExternal: expected tcp://HOST:PORT or "
                              f"ssl://HOST:PORT, got {self.mqtt_server_external!r}")
        _host_port(rest.rstrip("/"), f"{where}.mqttServerExternal")
        if self.mqtt_qos not in (0, 1, 2):
            raise ConfigError(f"{where}.mqttQOS: expected 0, 1 or 2, got {self.mqtt_qos!r}")


@dataclass
class ServiceBus:
    """A localhost HTTP bridge: cloud -> apps on this node, and apps -> allowlisted cloud URLs."""

    enable: bool = False
    server: str = "127.0.0.1"
    port: int = 9060
    timeout: float = duration(60.0)
    max_body_bytes: int = 5 * 1024 * 1024
    insecure_allow_non_loopback: bool = False

    def validate(self, where: str) -> None:
        check_address(f"{self.server}:{self.port}", self.insecure_allow_non_loopback,
                      f"{where}.server")
        if not 1024 <= self.max_body_bytes <= 64 * 1024 * 1024:
            raise ConfigError(f"{where}.maxBodyBytes: expected 1 KiB to 64 MiB")


@dataclass
class Metrics:
    """Prometheus metrics and /healthz, /readyz on a loopback port; off by default."""

    enable: bool = False
    server: str = "127.0.0.1:9092"
    insecure_allow_non_loopback: bool = False

    def validate(self, where: str) -> None:
        _host_port(self.server, f"{where}.server")
        check_address(self.server, self.insecure_allow_non_loopback, f"{where}.server")


@dataclass
class Modules:
    edge_hub: EdgeHub = field(default_factory=EdgeHub)
    edged: Edged = field(default_factory=Edged)
    meta_manager: MetaManager = field(default_factory=MetaManager)
    device_twin: DeviceTwin = field(default_factory=DeviceTwin)
    event_bus: EventBus = field(default_factory=EventBus)
    service_bus: ServiceBus = field(default_factory=ServiceBus)
    metrics: Metrics = field(default_factory=Metrics)


@dataclass
class Database:
    data_source: str = ""  # the edge store; default <dataDir>/edgecore.db


@dataclass
class EdgeCoreConfig:
    api_version: str = API_VERSION
    kind: str = "EdgeCore"
    data_dir: str = ""
    key_passphrase_file: str = ""
    database: Database = field(default_factory=Database)
    modules: Modules = field(default_factory=Modules)

    def validate(self, where: str) -> None:
        if self.kind != "EdgeCore":
            raise ConfigError(f"kind: expected EdgeCore, got {self.kind!r}")
        if not self.data_dir:
            raise ConfigError("dataDir: required")

    @property
    def node_name(self) -> str:
        return self.modules.edged.hostname_override

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def dmi_sock_path(self) -> Path:
        return Path(self.modules.device_twin.dmi_sock_path or self.data_path / "dmi.sock")

    @property
    def database_path(self) -> Path:
        return Path(self.database.data_source or self.data_path / "edgecore.db")


def load(path: str | Path) -> EdgeCoreConfig:
    return config.load(EdgeCoreConfig, path)
