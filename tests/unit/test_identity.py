"""Peer identity from ``ssl.getpeercert()`` output."""

from __future__ import annotations

import calendar
from typing import Any

from cloudcore.identity import PeerIdentity, from_peercert, from_transport


def peercert(cn: str | None = "system:node:edge-1", orgs: tuple[str, ...] = ("system:nodes",),
             serial: str = "0A1B2C", not_after: str = "Nov 25 17:46:59 2027 GMT"
             ) -> dict[str, Any]:
    subject: list[tuple[tuple[str, str], ...]] = [(("organizationName", o),) for o in orgs]
    if cn is not None:
        subject.append((("commonName", cn),))
    return {
        "subject": tuple(subject),
        "issuer": ((("commonName", "moorage-ca"),),),
        "version": 3,
        "serialNumber": serial,
        "notBefore": "Nov 25 17:46:59 2025 GMT",
        "notAfter": not_after,
    }


def test_node_certificate() -> None:
    identity = from_peercert(peercert())
    assert identity is not None
    assert identity.node_name == "edge-1"
    assert identity.common_name == "system:node:edge-1"
    assert identity.organizations == ("system:nodes",)
    assert not identity.is_admin
    assert identity.serial == "A1B2C"
    assert identity.not_after == calendar.timegm((2027, 11, 25, 17, 46, 59, 0, 0, 0))


def test_wrong_organization_is_not_a_node() -> None:
    identity = from_peercert(peercert(orgs=("acme",)))
    assert identity is not None
    assert identity.node_name is None


def test_no_organization_is_not_a_node() -> None:
    identity = from_peercert(peercert(orgs=()))
    assert identity is not None
    assert identity.node_name is None


def test_wrong_cn_prefix_is_not_a_node() -> None:
    for cn in ("edge-1", "system:nodes:edge-1", "node:edge-1", "System:Node:edge-1", ""):
        identity = from_peercert(peercert(cn=cn))
        assert identity is not None
        assert identity.node_name is None, cn


def test_empty_node_name_is_not_a_node() -> None:
    identity = from_peercert(peercert(cn="system:node:"))
    assert identity is not None
    assert identity.node_name is None


def test_missing_cn() -> None:
    identity = from_peercert(peercert(cn=None))
    assert identity is not None
    assert identity.common_name == ""
    assert identity.node_name is None


def test_admin() -> None:
    identity = from_peercert(peercert(cn="admin", orgs=("system:masters",)))
    assert identity is not None
    assert identity.is_admin
    assert identity.node_name is None


def test_multi_valued_subject() -> None:
    # One RDN can hold several attributes.
    cert = peercert()
    cert["subject"] = ((("organizationName", "system:nodes"), ("commonName", "system:node:n2")),)
    identity = from_peercert(cert)
    assert identity is not None
    assert identity.node_name == "n2"


def test_no_certificate() -> None:
    assert from_peercert({}) is None
    assert from_peercert(None) is None


def test_unparseable_fields() -> None:
    assert from_peercert(peercert(serial="not-hex")) is None
    assert from_peercert(peercert(not_after="tomorrow")) is None
    cert = peercert()
    del cert["serialNumber"]
    assert from_peercert(cert) is None


def test_serial_spelling_matches_an_int_serial() -> None:
    identity = from_peercert(peercert(serial="00FF"))
    assert identity == PeerIdentity("system:node:edge-1", ("system:nodes",), "FF",
                                    identity.not_after if identity else 0.0)


class FakeTransport:
    def __init__(self, cert: dict[str, Any] | None) -> None:
        self.cert = cert

    def get_extra_info(self, name: str) -> Any:
        return self.cert if name == "peercert" else None


def test_from_transport() -> None:
    identity = from_transport(FakeTransport(peercert()))
    assert identity is not None
    assert identity.node_name == "edge-1"
    assert from_transport(FakeTransport(None)) is None
    assert from_transport(None) is None
