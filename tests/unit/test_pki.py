"""Keys, CSRs and certificates: usages, SANs, node identities, refusals."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from certs import pki
from certs.errors import CSRError, KeyFileError, PassphraseError

DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca("test-ca")


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


# ---------------------------------------------------------------- CA


def test_ca_is_a_self_signed_ca(ca: pki.Issued) -> None:
    cert = ca.cert
    assert pki.common_name(cert) == "test-ca"
    assert cert.issuer == cert.subject
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is True
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    cert.verify_directly_issued_by(cert)
    assert cert.public_key() == ca.key.public_key()


def test_ca_lifetime() -> None:
    issued = pki.create_ca(lifetime=dt.timedelta(days=10))
    span = pki.not_valid_after(issued.cert) - pki.not_valid_before(issued.cert)
    # Ten days plus a small backdate for clock skew.
    assert dt.timedelta(days=10) < span <= dt.timedelta(days=10) + pki.MAX_BACKDATE


def test_ca_hash_is_sha256_of_der(ca: pki.Issued) -> None:
    import hashlib

    assert pki.ca_hash(ca.cert) == hashlib.sha256(pki.cert_to_der(ca.cert)).hexdigest()
    assert len(pki.ca_hash(ca.cert)) == 64


# ---------------------------------------------------------------- leaf certificates


def test_server_cert_usages_and_sans(ca: pki.Issued) -> None:
    server = pki.issue(ca, pki.subject("cloudcore"), lifetime=DAY, server=True,
                       sans=["10.0.0.5", "::1", "cloud.example"])
    cert = server.cert
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    names = sans(cert)
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")}
    assert names.get_values_for_type(x509.DNSName) == ["cloud.example"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == server.key.public_key()


def test_client_cert_usage(ca: pki.Issued) -> None:
    client = pki.issue(ca, pki.node_subject("edge-1"), lifetime=DAY, client=True)
    assert eku(client.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    with pytest.raises(x509.ExtensionNotFound):
        sans(client.cert)


def test_both_usages(ca: pki.Issued) -> None:
    both = pki.issue(ca, pki.subject("x"), lifetime=DAY, server=True, client=True)
    assert eku(both.cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_a_certificate_without_usage_is_refused(ca: pki.Issued) -> None:
    key = pki.generate_key()
    with pytest.raises(CSRError):
        pki.sign(ca, pki.subject("x"), key.public_key(), lifetime=DAY)


def test_node_subject(ca: pki.Issued) -> None:
    node = pki.issue(ca, pki.node_subject("edge-7"), lifetime=DAY, client=True)
    assert pki.common_name(node.cert) == "system:node:edge-7"
    assert pki.organizations(node.cert) == ["system:nodes"]
    subject = node.cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:edge-7"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"


def test_subject_with_and_without_organization() -> None:
    admin = pki.subject("admin", pki.ADMIN_ORGANIZATION)
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert pki.subject("plain").get_attributes_for_oid(NameOID.ORGANIZATION_NAME) == []


def test_leaf_never_outlives_its_ca() -> None:
    short_ca = pki.create_ca(lifetime=dt.timedelta(days=2))
    leaf = pki.issue(short_ca, pki.subject("x"), lifetime=dt.timedelta(days=365), client=True)
    assert pki.not_valid_after(leaf.cert) <= pki.not_valid_after(short_ca.cert)


def test_sign_with_explicit_now(ca: pki.Issued) -> None:
    now = pki.utcnow().replace(microsecond=0) - dt.timedelta(hours=1)
    key = pki.generate_key()
    cert = pki.sign(ca, pki.subject("x"), key.public_key(), lifetime=dt.timedelta(hours=2),
                    client=True, now=now)
    assert pki.not_valid_after(cert) == now + dt.timedelta(hours=2)
    assert now - pki.MAX_BACKDATE <= pki.not_valid_before(cert) < now


def test_serials_differ(ca: pki.Issued) -> None:
    key = pki.generate_key()
    serials = {pki.sign(ca, pki.subject("x"), key.public_key(), lifetime=DAY, client=True)
               .serial_number for _ in range(5)}
    assert len(serials) == 5


def test_rsa_ca_issues_rsa_leaf_with_key_encipherment() -> None:
    rsa_ca = pki.create_ca(key=pki.generate_key("rsa", 2048))
    leaf = pki.issue(rsa_ca, pki.subject("x"), lifetime=DAY, server=True)
    assert isinstance(leaf.key, rsa.RSAPrivateKey)
    assert leaf.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    leaf.cert.verify_directly_issued_by(rsa_ca.cert)


def test_generate_key_refuses_weak_or_unknown() -> None:
    with pytest.raises(KeyFileError):
        pki.generate_key("rsa", 1024)
    with pytest.raises(KeyFileError):
        pki.generate_key("dsa")
    assert isinstance(pki.generate_key(), ec.EllipticCurvePrivateKey)


# ---------------------------------------------------------------- CSRs


def test_csr_round_trip_der_and_pem() -> None:
    key = pki.generate_key()
    csr = pki.make_csr(key, pki.node_subject("edge-1"))
    der = pki.csr_to_der(csr)
    pem = csr.public_bytes(serialization.Encoding.PEM)
    for data in (der, pem):
        loaded = pki.load_csr(data)
        assert pki.common_name(loaded) == "system:node:edge-1"
        assert loaded.public_key() == key.public_key()


def test_load_csr_refuses_oversize() -> None:
    with pytest.raises(CSRError, match="limit"):
        pki.load_csr(b"0" * (pki.MAX_CSR_BYTES + 1))


def test_load_csr_size_limit_is_checked_before_parsing() -> None:
    # A valid CSR padded with trailing whitespace past the limit is still refused.
    pem = pki.make_csr(pki.generate_key(), pki.subject("x")).public_bytes(
        serialization.Encoding.PEM)
    with pytest.raises(CSRError, match="limit"):
        pki.load_csr(pem + b"\n" * pki.MAX_CSR_BYTES)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE "
     b"REQUEST-----\n", b"\x30\x03\x02\x01\x01"],
)
def test_load_csr_refuses_garbage(data: bytes) -> None:
    with pytest.raises(CSRError):
        pki.load_csr(data)


@given(st.binary(max_size=512))
def test_load_csr_of_random_bytes_raises_only_csr_error(data: bytes) -> None:
    with pytest.raises(CSRError):
        pki.load_csr(data)


def test_load_csr_refuses_weak_rsa() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    csr = x509.CertificateSigningRequestBuilder().subject_name(pki.subject("x")).sign(
        weak, hashes.SHA256())
    with pytest.raises(CSRError, match="1024"):
        pki.load_csr(pki.csr_to_der(csr))


def test_load_csr_accepts_rsa_2048() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = pki.make_csr(key, pki.subject("x"))
    assert pki.load_csr(pki.csr_to_der(csr)).public_key().key_size == 2048


def test_load_csr_refuses_weak_curve() -> None:
    try:
        weak = ec.generate_private_key(ec.SECP192R1())
    except Exception:  # pragma: no cover - OpenSSL built without P-192
        pytest.skip("P-192 unavailable")
    csr = pki.make_csr(weak, pki.subject("x"))
    with pytest.raises(CSRError, match="too weak"):
        pki.load_csr(pki.csr_to_der(csr))


def test_load_csr_refuses_bad_signature() -> None:
    der = pki.csr_to_der(pki.make_csr(pki.generate_key(), pki.node_subject("edge-aaaa")))
    # Change the subject after signing: the request still parses, its signature no longer fits.
    tampered = der.replace(b"edge-aaaa", b"edge-bbbb")
    assert tampered != der
    with pytest.raises(CSRError, match="signature"):
        pki.load_csr(tampered)


# ---------------------------------------------------------------- key PEM


def test_key_round_trip_unencrypted() -> None:
    key = pki.generate_key()
    pem = pki.key_to_pem(key)
    assert b"ENCRYPTED" not in pem
    assert pki.key_from_pem(pem).public_key() == key.public_key()


def test_key_round_trip_with_passphrase() -> None:
    key = pki.generate_key()
    pem = pki.key_to_pem(key, b"s3cret")
    assert b"ENCRYPTED" in pem
    assert pki.key_from_pem(pem, b"s3cret").public_key() == key.public_key()


def test_wrong_passphrase() -> None:
    pem = pki.key_to_pem(pki.generate_key(), b"s3cret")
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        pki.key_from_pem(pem, b"guess")


def test_missing_passphrase() -> None:
    pem = pki.key_to_pem(pki.generate_key(), b"s3cret")
    with pytest.raises(PassphraseError, match="MOORAGE_KEY_PASSPHRASE"):
        pki.key_from_pem(pem, None, source="edge.key")


def test_passphrase_for_unencrypted_key() -> None:
    pem = pki.key_to_pem(pki.generate_key())
    with pytest.raises(PassphraseError, match="not encrypted"):
        pki.key_from_pem(pem, b"s3cret")


def test_key_from_garbage() -> None:
    with pytest.raises(KeyFileError, match=r"my\.key"):
        pki.key_from_pem(b"not a key", source="my.key")


def test_weak_rsa_key_file_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    pem = weak.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    with pytest.raises(KeyFileError, match="too weak"):
        pki.key_from_pem(pem)


# ---------------------------------------------------------------- files and loading


def test_save_and_load_pair(ca: pki.Issued, tmp_path: Path) -> None:
    issued = pki.issue(ca, pki.node_subject("n"), lifetime=DAY, client=True)
    paths = pki.PairPaths(tmp_path / "d" / "n.crt", tmp_path / "d" / "n.key")
    pki.save_pair(issued, paths, b"pw")
    assert paths.key.stat().st_mode & 0o777 == 0o600
    loaded = pki.load_pair(paths, b"pw")
    assert loaded.cert == issued.cert
    assert loaded.key.public_key() == issued.key.public_key()
    with pytest.raises(PassphraseError):
        pki.load_pair(paths)


def test_load_pair_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        pki.load_pair(pki.PairPaths(tmp_path / "a.crt", tmp_path / "a.key"))


def test_cert_from_bytes_pem_der_and_garbage(ca: pki.Issued) -> None:
    assert pki.cert_from_bytes(pki.cert_to_pem(ca.cert)) == ca.cert
    assert pki.cert_from_bytes(pki.cert_to_der(ca.cert)) == ca.cert
    with pytest.raises(KeyFileError, match=r"ca\.crt"):
        pki.cert_from_bytes(b"junk", source="ca.crt")


# ---------------------------------------------------------------- serials


def test_serial_hex_normalises() -> None:
    assert pki.serial_hex(0xABC) == "ABC"
    assert pki.serial_hex("0ABC") == "ABC"
    assert pki.serial_hex("0abc") == "ABC"
    assert pki.serial_hex("00000ABC") == pki.serial_hex(2748)


@given(st.integers(min_value=1, max_value=2**159))
def test_serial_hex_int_and_ssl_text_agree(serial: int) -> None:
    # ``ssl`` prints serials as uppercase hex with an even number of digits.
    text = format(serial, "X")
    padded = text.rjust(len(text) + len(text) % 2, "0")
    assert pki.serial_hex(serial) == pki.serial_hex(padded) == pki.serial_hex(padded.lower())
    assert int(pki.serial_hex(serial), 16) == serial


def test_cert_serial_matches_what_ssl_reports(ca: pki.Issued, tmp_path: Path) -> None:
    import ssl

    leaf = pki.issue(ca, pki.node_subject("n"), lifetime=DAY, client=True)
    pem = tmp_path / "leaf.pem"
    pem.write_bytes(pki.cert_to_pem(leaf.cert))
    decoded = ssl._ssl._test_decode_cert(str(pem))  # type: ignore[attr-defined]
    assert pki.serial_hex(decoded["serialNumber"]) == pki.serial_hex(leaf.cert.serial_number)
