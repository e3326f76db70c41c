"""cloudcore.yaml: names follow KubeEdge's cloudcore.yaml where an equivalent exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from certs.tls import DEFAULT_TLS12_CIPHERS, check_ciphers, min_version
from moorage import config
from moorage.config import check_address, duration, key
from moorage.errors import ConfigError

API_VERSION = "cloudcore.config.kubeedge.io/v1alpha2"


def _port(value: int, where: str) -> None:
    if not 0 < value < 65536:
        raise ConfigError(f"{where}: port {value} is outside 1-65535")


@dataclass
class Listener:
    enable: bool = True
    address: str = "0.0.0.0"  # noqa: S104 - edges connect from anywhere; mTLS guards it
    port: int = 0

    def validate(self, where: str) -> None:
        _port(self.port, f"{where}.port")


@dataclass
class CloudHub:
    advertise_address: list[str] = field(default_factory=list)
    node_limit: int = 1000
    tls_ca_file: str = key("tlsCAFile", "")
    tls_ca_key_file: str = key("tlsCAKeyFile", "")
    tls_cert_file: str = ""
    tls_private_key_file: str = ""
    tls_cipher_suites: list[str] = field(default_factory=lambda: list(DEFAULT_TLS12_CIPHERS))
    tls_min_version: str = "1.2"
    websocket: Listener = field(default_factory=lambda: Listener(port=10000))
    https: Listener = field(default_factory=lambda: Listener(port=10002))
    # Edge certificates: lifetime, and the join tokens that let nodes get their first one.
    edge_cert_validity: float = duration(365 * 86400.0)
    token_ttl: float = duration(24 * 3600.0, key="tokenTTL")
    # Liveness: a node is NotReady when nothing was heard from it for this long.
    node_grace_period: float = duration(40.0)
    keepalive_interval: float = duration(15.0)
    max_message_bytes: int = 8 * 1024 * 1024  # a 5 MB ServiceBus body, base64, fits
    handshake_timeout: float = duration(30.0)
    # Enrollment endpoint: requests per minute per client address, and in total.
    enroll_rate_per_client: int = 60
    enroll_rate_total: int = 600

    def validate(self, where: str) -> None:
        try:
            check_ciphers(self.tls_cipher_suites)
            min_version(self.tls_min_version)
        except Exception as exc:
            raise ConfigError(f"{where}.tlsCipherSuites/tlsMinVersion: {exc}") from None
        if self.node_limit < 1:
            raise ConfigError(f"{where}.nodeLimit: must be at least 1")
        if not self.advertise_address:
            raise ConfigError(f"{where}.advertiseAddress: at least one address is required")
        for name in ("tls_ca_file", "tls_ca_key_file", "tls_cert_file", "tls_private_key_file"):
            if not getattr(self, name):
                raise ConfigError(f"{where}.{config.yaml_key(_field(name))}: required")
        if self.max_message_bytes < 64 * 1024:
            raise ConfigError(f"{where}.maxMessageBytes: at least 65536")


def _field(name: str):  # type: ignore[no-untyped-def]
    import dataclasses

    return next(f for f in dataclasses.fields(CloudHub) if f.name == name)


@dataclass
class AdminAPI:
    enable: bool = True
    address: str = "0.0.0.0"  # noqa: S104 - remote operators; requires the admin client cert
    port: int = 6443

    def validate(self, where: str) -> None:
        _port(self.port, f"{where}.port")


@dataclass
class Metrics:
    """Prometheus metrics and health endpoints (/metrics, /healthz, /readyz)."""

    enable: bool = True
    address: str = "127.0.0.1"
    port: int = 9091  # KubeEdge's cloudcore metrics port
    insecure_allow_non_loopback: bool = False

    def validate(self, where: str) -> None:
        _port(self.port, f"{where}.port")
        check_address(f"{self.address}:{self.port}", self.insecure_allow_non_loopback,
                      f"{where}.address")


@dataclass
class ServiceBus:
    """Node proxy (cloud -> edge apps) and edge apps' requests to cloud URLs."""

    # Edge apps may ask the cloud to call only URLs that start with one of these.
    target_url_allowlist: list[str] = key("targetURLAllowlist", default_factory=list)  # noqa: RUF009
    timeout: float = duration(60.0)
    max_body_bytes: int = 5 * 1024 * 1024

    def validate(self, where: str) -> None:
        for url in self.target_url_allowlist:
            if not url.startswith(("http://", "https://")) or url.count("/") < 3:
                raise ConfigError(f"{where}.targetURLAllowlist: {url!r} must be a URL prefix "
                                  "with scheme, host and a path, e.g. https://api.example.com/v1/")
        if not 1024 <= self.max_body_bytes <= 64 * 1024 * 1024:
            raise ConfigError(f"{where}.maxBodyBytes: expected 1 KiB to 64 MiB")


@dataclass
class Router:
    """Where the messages edge apps publish on ``$hw/events/upload/#`` go: each is POSTed as
    JSON {node, topic, payload (base64), received} to ``uploadURL``, retried until it
    answers 2xx. Without an uploadURL they are acknowledged and dropped."""

    upload_url: str = key("uploadURL", "")
    timeout: float = duration(10.0)
    max_pending: int = 100_000  # queued in the cloud store; beyond it the oldest go

    def validate(self, where: str) -> None:
        if self.upload_url and not self.upload_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.uploadURL: expected an http:// or https:// URL, got "
                              f"{self.upload_url!r}")
        if self.max_pending < 1:
            raise ConfigError(f"{where}.maxPending: at least 1")


@dataclass
class Modules:
    cloud_hub: CloudHub = field(default_factory=CloudHub)
    admin: AdminAPI = field(default_factory=AdminAPI)
    metrics: Metrics = field(default_factory=Metrics)
    service_bus: ServiceBus = field(default_factory=ServiceBus)
    router: Router = field(default_factory=Router)


@dataclass
class Database:
    # A SQLAlchemy async URL; empty: SQLite at <dataDir>/cloudcore.db.
    data_source: str = ""


@dataclass
class CloudCoreConfig:
    api_version: str = API_VERSION
    kind: str = "CloudCore"
    data_dir: str = ""
    database: Database = field(default_factory=Database)
    modules: Modules = field(default_factory=Modules)
    # A file holding the passphrase of encrypted keys (MOORAGE_KEY_PASSPHRASE also works).
    key_passphrase_file: str = ""

    def validate(self, where: str) -> None:
        if self.kind != "CloudCore":
            raise ConfigError(f"kind: expected CloudCore, got {self.kind!r}")
        if not self.data_dir:
            raise ConfigError("dataDir: required (the directory `moorage init` wrote)")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        """The SQLite file, when no other database URL is configured."""
        return self.data_path / "cloudcore.db"

    @property
    def token_key_path(self) -> Path:
        return self.data_path / "pki" / "token.key"


def load(path: str | Path) -> CloudCoreConfig:
    return config.load(CloudCoreConfig, path)
