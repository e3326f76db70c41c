"""certs.peek reads a certificate's serial, common name and validity without cryptography;
checked against cryptography's own reading, and against garbage."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certs import CertError, pki
from certs.peek import summary


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca(lifetime=dt.timedelta(days=3650))


@pytest.mark.parametrize("lifetime_days", [1, 365, 40 * 365])  # 40 years: GeneralizedTime
def test_what_edgecore_reads_matches_cryptography(ca: pki.Issued, lifetime_days: int) -> None:
    issued = pki.issue(ca, pki.node_subject("edge-1"), lifetime=dt.timedelta(days=lifetime_days),
                       client=True)
    pem = pki.cert_to_pem(issued.cert)
    for data in (pem, issued.cert.public_bytes(serialization.Encoding.DER)):
        got = summary(data, "edge.crt")
        assert got.serial == issued.cert.serial_number
        assert got.common_name == "system:node:edge-1"
        assert got.not_before == pki.not_valid_before(issued.cert)
        assert got.not_after == pki.not_valid_after(issued.cert)


def test_rsa_a_non_ascii_cn_and_a_certificate_without_cn(ca: pki.Issued) -> None:
    rsa_ca = pki.create_ca(key=pki.generate_key("rsa", 2048))
    issued = pki.issue(rsa_ca, pki.node_subject("büro-7"), lifetime=dt.timedelta(days=30),
                       client=True)
    assert summary(pki.cert_to_pem(issued.cert), "x").common_name == "system:node:büro-7"
    # A certificate with no CN at all (only an O), valid from before 2000 (UTCTime 19xx).
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "only-o")])
    start = dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    got = summary(cert.public_bytes(serialization.Encoding.PEM), "x")
    assert (got.serial, got.common_name, got.not_before) == (1, "", start)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_is_refused_with_the_file_named_never_anything_else(data: bytes) -> None:
    with pytest.raises(CertError, match=r"edge\.crt is not a readable X\.509 certificate"):
        summary(data, "edge.crt")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_certificates_never_raise_anything_but_cert_error(ca: pki.Issued,
                                                                   data: st.DataObject) -> None:
    der = bytearray(ca.cert.public_bytes(serialization.Encoding.DER))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CertError):
        summary(bytes(der[:data.draw(st.integers(1, len(der)))]), "edge.crt")
