"""kubeconfig files: the admin API address, the CA and the admin client certificate.

The same file works with kubectl (``kubectl --kubeconfig FILE get nodes``).
"""

from __future__ import annotations

import base64
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from certs import tls
from certs.files import write_private
from moorage import yamlio
from moorage.errors import ConfigError, ManifestError

POINTER = Path("~/.moorage/kubeconfig-path")
CONTEXT = "moorage-admin"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write(path: Path, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "moorage", "cluster": {
            "server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [{"name": "moorage-admin", "user": {
            "client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": "moorage", "user": "moorage-admin"}}],
        "current-context": CONTEXT,
    }
    write_private(path, yamlio.dump(doc).encode())


def remember_default(path: Path) -> None:
    """Make ``path`` the kubeconfig later commands use when none is named."""
    write_private(POINTER.expanduser(), str(path.resolve()).encode() + b"\n")


def default_path() -> Path:
    env = os.environ.get("MOORAGE_KUBECONFIG")
    if env:
        return Path(env)
    pointer = POINTER.expanduser()
    if pointer.exists():
        return Path(pointer.read_text().strip())
    raise ConfigError("no kubeconfig: pass --kubeconfig, set MOORAGE_KUBECONFIG, or run "
                      "`moorage init` on this machine first")


@dataclass(frozen=True)
class AdminAccess:
    host: str
    port: int
    ssl_context: ssl.SSLContext


def _pick(items: Any, name: str, what: str, source: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item.get(what) or {}
    raise ConfigError(f"{source}: no {what} named {name!r}")


def _data(section: dict[str, Any], key: str, source: str) -> bytes:
    if f"{key}-data" in section:
        try:
            return base64.b64decode(section[f"{key}-data"], validate=True)
        except ValueError:
            raise ConfigError(f"{source}: {key}-data is not valid base64") from None
    if key in section:
        return Path(section[key]).expanduser().read_bytes()
    raise ConfigError(f"{source}: {key}(-data) is missing")


def _current(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster and user sections of the current context."""
    source = str(path)
    try:
        doc = yamlio.load_file(path)
    except ManifestError as exc:
        raise ConfigError(f"kubeconfig {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: not a kubeconfig")
    context_name = doc.get("current-context") or CONTEXT
    context = _pick(doc.get("contexts"), context_name, "context", source)
    cluster = _pick(doc.get("clusters"), context.get("cluster", ""), "cluster", source)
    user = _pick(doc.get("users"), context.get("user", ""), "user", source)
    return cluster, user


def client_certificate(path: Path) -> bytes:
    """The PEM client certificate of the current context's user."""
    return _data(_current(path)[1], "client-certificate", str(path))


def load(path: Path | None = None) -> AdminAccess:
    path = path or default_path()
    source = str(path)
    cluster, user = _current(path)
    url = urlsplit(str(cluster.get("server", "")))
    if url.scheme != "https" or not url.hostname:
        raise ConfigError(f"{source}: cluster server must be an https:// URL")
    ctx = tls.client_context_from_pem(
        ca_pem=_data(cluster, "certificate-authority", source),
        cert_pem=_data(user, "client-certificate", source),
        key_pem=_data(user, "client-key", source),
    )
    return AdminAccess(url.hostname, url.port or 443, ctx)
