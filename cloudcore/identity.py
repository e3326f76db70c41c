"""Who is on the other end of a verified TLS connection, from its certificate alone."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from certs.pki import ADMIN_ORGANIZATION, NODE_CN_PREFIX, NODE_ORGANIZATION, serial_hex


@dataclass(frozen=True)
class PeerIdentity:
    common_name: str
    organizations: tuple[str, ...]
    serial: str
    not_after: float

    @property
    def node_name(self) -> str | None:
        if NODE_ORGANIZATION in self.organizations and self.common_name.startswith(NODE_CN_PREFIX):
            return self.common_name[len(NODE_CN_PREFIX):] or None
        return None

    @property
    def is_admin(self) -> bool:
        return ADMIN_ORGANIZATION in self.organizations


def from_peercert(peercert: dict[str, Any] | None) -> PeerIdentity | None:
    """Parse the dict ``SSLObject.getpeercert()`` returns (empty when no cert was sent)."""
    if not peercert:
        return None
    cn, orgs = "", []
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                cn = value
            elif attr == "organizationName":
                orgs.append(value)
    try:
        serial = serial_hex(peercert["serialNumber"])
        not_after = float(ssl.cert_time_to_seconds(peercert["notAfter"]))
    except (KeyError, ValueError):
        return None
    return PeerIdentity(cn, tuple(orgs), serial, not_after)


def from_transport(transport: Any) -> PeerIdentity | None:
    return from_peercert(transport.get_extra_info("peercert") if transport else None)
