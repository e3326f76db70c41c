"""The TLS context factory: TLS 1.2 floor, allowlisted TLS 1.2 suites, mTLS modes,
and operator-readable TLS errors.

Handshakes run over in-memory BIOs: real OpenSSL, no sockets.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from certs import pki
from certs.errors import TLSConfigError
from certs.tls import (
    DEFAULT_TLS12_CIPHERS,
    check_ciphers,
    client_context,
    client_context_from_pem,
    describe_tls_error,
    min_version,
    server_context,
)

ALLOWED = re.compile(r"^ECDHE-(ECDSA|RSA)-(AES128-GCM-SHA256|AES256-GCM-SHA384|CHACHA20-POLY1305)$")
DAY = dt.timedelta(days=1)


@dataclass
class Material:
    ca: pki.Issued
    ca_file: Path
    server: pki.PairPaths
    client: pki.PairPaths
    ca_pem: bytes
    client_issued: pki.Issued


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    root = tmp_path_factory.mktemp("tls")
    ca = pki.create_ca()
    ca_file = root / "ca.crt"
    ca_file.write_bytes(pki.cert_to_pem(ca.cert))
    server = pki.issue(ca, pki.subject("cloudcore"), lifetime=DAY, server=True,
                       sans=["127.0.0.1", "cloud.example"])
    server_paths = pki.PairPaths(root / "server.crt", root / "server.key")
    pki.save_pair(server, server_paths)
    client = pki.issue(ca, pki.node_subject("edge-1"), lifetime=DAY, client=True)
    client_paths = pki.PairPaths(root / "client.crt", root / "client.key")
    pki.save_pair(client, client_paths)
    return Material(ca, ca_file, server_paths, client_paths, pki.cert_to_pem(ca.cert), client)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext,
              hostname: str | None = "127.0.0.1") -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Drive a TLS handshake between two contexts in memory; raises the first SSLError."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(50):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client certificate after its own
            # handshake returns; surface a refusal by exchanging application data.
            c.write(b"ping")
            s_in.write(c_out.read())
            assert s.read(4) == b"ping"
            return c, s
    raise AssertionError("handshake did not finish")


# ---------------------------------------------------------------- settings


def test_defaults_are_accepted() -> None:
    assert check_ciphers(DEFAULT_TLS12_CIPHERS) == ":".join(DEFAULT_TLS12_CIPHERS)
    assert all(ALLOWED.match(name) for name in DEFAULT_TLS12_CIPHERS)


def test_a_subset_is_accepted() -> None:
    assert check_ciphers(["ECDHE-RSA-AES256-GCM-SHA384"]) == "ECDHE-RSA-AES256-GCM-SHA384"


@pytest.mark.parametrize(
    "names",
    [
        ["AES128-SHA"],
        ["ECDHE-RSA-AES128-SHA"],
        ["AES128-GCM-SHA256"],  # no forward secrecy
        ["DHE-RSA-AES128-GCM-SHA256"],
        ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-DES-CBC3-SHA"],  # one bad among good
        ["ALL"],
        ["HIGH:!aNULL"],
        ["ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA"],  # an OpenSSL string smuggling a suite
        ["ecdhe-rsa-aes128-gcm-sha256"],
        [""],
        [],
    ],
)
def test_check_ciphers_refuses(names: list[str]) -> None:
    with pytest.raises(TLSConfigError):
        check_ciphers(names)


def test_check_ciphers_names_the_bad_suite() -> None:
    with pytest.raises(TLSConfigError, match="ECDHE-RSA-AES128-SHA"):
        check_ciphers(["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"])


def test_min_version() -> None:
    assert min_version("1.2") == ssl.TLSVersion.TLSv1_2
    assert min_version("1.3") == ssl.TLSVersion.TLSv1_3
    for bad in ("1.1", "1.0", "", "TLSv1.2", "1.4"):
        with pytest.raises(TLSConfigError):
            min_version(bad)


# ---------------------------------------------------------------- contexts


def assert_hardened(ctx: ssl.SSLContext) -> None:
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 suite left"
    for cipher in tls12:
        assert ALLOWED.match(cipher["name"]), cipher["name"]
    for cipher in ctx.get_ciphers():
        assert cipher["protocol"] in ("TLSv1.2", "TLSv1.3"), cipher
    assert ctx.options & ssl.OP_NO_COMPRESSION


def test_server_context_is_hardened_and_requires_client_certs(material: Material) -> None:
    ctx = server_context(cert_file=material.server.cert, key_file=material.server.key,
                         ca_file=material.ca_file)
    assert_hardened(ctx)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("mode", "expected"), [("optional", ssl.CERT_OPTIONAL), ("none", ssl.CERT_NONE)]
)
def test_server_context_client_cert_modes(material: Material, mode: str,
                                          expected: ssl.VerifyMode) -> None:
    ctx = server_context(cert_file=material.server.cert, key_file=material.server.key,
                         ca_file=material.ca_file, client_cert=mode)
    assert ctx.verify_mode == expected


def test_server_context_refuses_unknown_mode_and_missing_ca(material: Material) -> None:
    with pytest.raises(TLSConfigError, match="client_cert"):
        server_context(cert_file=material.server.cert, key_file=material.server.key,
                       ca_file=material.ca_file, client_cert="maybe")
    with pytest.raises(TLSConfigError, match="CA"):
        server_context(cert_file=material.server.cert, key_file=material.server.key)


def test_server_context_refuses_bad_ciphers_and_version(material: Material) -> None:
    with pytest.raises(TLSConfigError):
        server_context(cert_file=material.server.cert, key_file=material.server.key,
                       ca_file=material.ca_file, ciphers=["AES128-SHA"])
    with pytest.raises(TLSConfigError):
        server_context(cert_file=material.server.cert, key_file=material.server.key,
                       ca_file=material.ca_file, minimum="1.1")


def test_server_context_minimum_13(material: Material) -> None:
    ctx = server_context(cert_file=material.server.cert, key_file=material.server.key,
                         ca_file=material.ca_file, minimum="1.3")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3


def test_server_context_refuses_mismatched_key(material: Material) -> None:
    with pytest.raises(TLSConfigError, match="does the key match"):
        server_context(cert_file=material.server.cert, key_file=material.client.key,
                       ca_file=material.ca_file)


def test_server_context_reports_missing_files(material: Material, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="cannot read"):
        server_context(cert_file=tmp_path / "absent.crt", key_file=material.server.key,
                       ca_file=material.ca_file)


def test_client_context_is_hardened_and_verifies(material: Material) -> None:
    ctx = client_context(ca_file=material.ca_file)
    assert_hardened(ctx)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname


def test_client_context_without_verification_is_still_hardened() -> None:
    ctx = client_context(verify=False)
    assert_hardened(ctx)
    assert ctx.verify_mode == ssl.CERT_NONE
    assert not ctx.check_hostname


def test_client_context_refuses_garbage_ca(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(TLSConfigError):
        client_context(ca_file=bad)
    with pytest.raises(TLSConfigError):
        client_context(ca_pem=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# ---------------------------------------------------------------- in-memory handshakes


def test_mutual_tls_handshake_succeeds_with_allowed_suite(material: Material) -> None:
    server = server_context(cert_file=material.server.cert, key_file=material.server.key,
                            ca_file=material.ca_file)
    client = client_context(ca_file=material.ca_file, cert_file=material.client.cert,
                            key_file=material.client.key)
    c, s = handshake(server, client)
    assert c.version() in ("TLSv1.2", "TLSv1.3")
    peer = s.getpeercert()
    assert ("commonName", "system:node:edge-1") in [attr for rdn in peer["subject"] for attr in rdn]


def test_tls12_handshake_uses_an_allowlisted_suite(material: Material) -> None:
    server = server_context(cert_file=material.server.cert, key_file=material.server.key,
                            ca_file=material.ca_file)
    client = client_context(ca_file=material.ca_file, cert_file=material.client.cert,
                            key_file=material.client.key)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    c, _ = handshake(server, client)
    assert c.version() == "TLSv1.2"
    cipher = c.cipher()
    assert cipher is not None
    assert ALLOWED.match(cipher[0])


def test_client_from_pem_handshakes(material: Material) -> None:
    server = server_context(cert_file=material.server.cert, key_file=material.server.key,
                            ca_file=material.ca_file)
    client = client_context_from_pem(
        ca_pem=material.ca_pem,
        cert_pem=pki.cert_to_pem(material.client_issued.cert),
        key_pem=pki.key_to_pem(material.client_issued.key),
    )
    handshake(server, client, hostname="cloud.example")


def test_server_refuses_a_client_without_certificate(material: Material) -> None:
    server = server_context(cert_file=material.server.cert, key_file=material.server.key,
                            ca_file=material.ca_file)
    client = client_context(ca_file=material.ca_file)
    with pytest.raises(ssl.SSLError) as caught:
        handshake(server, client)
    assert "enroll the node" in describe_tls_error(caught.value)


def test_client_refuses_a_server_from_another_ca(material: Material, tmp_path: Path) -> None:
    other = pki.create_ca("other-ca")
    other_file = tmp_path / "other.crt"
    other_file.write_bytes(pki.cert_to_pem(other.cert))
    server = server_context(cert_file=material.server.cert, key_file=material.server.key,
                            client_cert="none")
    client = client_context(ca_file=other_file)
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        handshake(server, client)
    assert "another CA" in describe_tls_error(caught.value)


def test_real_ip_mismatch_gets_the_advertise_address_hint(material: Material) -> None:
    server = server_context(cert_file=material.server.cert, key_file=material.server.key,
                            client_cert="none")
    client = client_context(ca_file=material.ca_file)
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        handshake(server, client, hostname="127.0.0.2")
    # The cert names 127.0.0.1 only: the operator must be told to add the address.
    assert "--advertise-address" in describe_tls_error(caught.value)


def test_real_hostname_mismatch_gets_the_advertise_address_hint(material: Material) -> None:
    server = server_context(cert_file=material.server.cert, key_file=material.server.key,
                            client_cert="none")
    client = client_context(ca_file=material.ca_file)
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        handshake(server, client, hostname="wrong.example")
    assert "--advertise-address" in describe_tls_error(caught.value)


# ---------------------------------------------------------------- error hints


def ssl_error(reason: str | None, text: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, text)
    exc.reason = reason  # type: ignore[misc]
    return exc


@pytest.mark.parametrize(
    ("exc", "hint"),
    [
        (ssl_error("NO_SHARED_CIPHER", "[SSL: NO_SHARED_CIPHER] no shared cipher (_ssl.c:1006)"),
         "no shared cipher"),
        (ssl_error("UNSUPPORTED_PROTOCOL",
                   "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol (_ssl.c:1006)"),
         "below 1.2"),
        (ssl_error("WRONG_VERSION_NUMBER",
                   "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
         "does not speak TLS"),
        (ssl_error("TLSV1_ALERT_PROTOCOL_VERSION",
                   "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version"),
         "TLS 1.2 or newer"),
        (ssl_error("CERTIFICATE_VERIFY_FAILED",
                   "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                   "certificate has expired (_ssl.c:1006)"),
         "has expired"),
        (ssl_error("SSLV3_ALERT_CERTIFICATE_EXPIRED",
                   "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired"),
         "has expired"),
        (ssl_error("CERTIFICATE_VERIFY_FAILED",
                   "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                   "unable to get local issuer certificate (_ssl.c:1006)"),
         "another CA"),
        (ssl_error("TLSV1_ALERT_UNKNOWN_CA",
                   "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"),
         "another CA"),
        (ssl_error("CERTIFICATE_VERIFY_FAILED",
                   "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                   "self-signed certificate (_ssl.c:1006)"),
         "another CA"),
        (ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED",
                   "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"),
         "moorage join"),
        (ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE",
                   "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate"),
         "moorage join"),
        (ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE",
                   "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure"),
         "handshake failed"),
        (ssl_error("SSLV3_ALERT_BAD_CERTIFICATE",
                   "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate"),
         "rejected our certificate"),
        (ssl_error(None, "certificate has expired"), "has expired"),
        (ssl_error(None, "unable to get local issuer certificate"), "another CA"),
        (ssl_error(None, "Hostname mismatch, certificate is not valid for 'x'."),
         "does not name this host"),
        (ssl_error(None, "IP address mismatch, certificate is not valid for '10.0.0.9'."),
         "does not name this address"),
    ],
)
def test_describe_tls_error_hints(exc: ssl.SSLError, hint: str) -> None:
    text = describe_tls_error(exc)
    assert hint in text
    # The original error is kept for whoever needs the detail.
    assert str(exc) in text


def test_describe_unknown_error_is_the_error_itself() -> None:
    exc = ConnectionResetError("connection reset by peer")
    assert describe_tls_error(exc) == "connection reset by peer"
