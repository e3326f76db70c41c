"""Keys, certificate signing requests and certificates.

Everything here is synchronous and pure apart from the explicit file helpers:
the daemons call it from threads or at start-up, never on a hot path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CSRError, KeyFileError, PassphraseError
from certs.files import write_private, write_public

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

NODE_ORGANIZATION = "system:nodes"
NODE_CN_PREFIX = "system:node:"
ADMIN_ORGANIZATION = "system:masters"
MIN_RSA_BITS = 2048
# Allow for clocks that disagree a little, without eating short test lifetimes.
MAX_BACKDATE = dt.timedelta(minutes=5)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------- keys

def generate_key(algorithm: str = "ecdsa-p256", rsa_bits: int = 3072) -> PrivateKey:
    """A new private key: ECDSA P-256 by default, RSA of at least 2048 bits on request."""
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa":
        if rsa_bits < MIN_RSA_BITS:
            raise KeyFileError(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {rsa_bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise KeyFileError(f"unknown key algorithm {algorithm!r}: use 'ecdsa-p256' or 'rsa'")


def key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def key_from_pem(data: bytes, passphrase: bytes | None = None, source: str = "key") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        raise PassphraseError(
            f"{source}: the key is encrypted: give its passphrase (MOORAGE_KEY_PASSPHRASE)"
            if passphrase is None
            else f"{source}: the key is not encrypted, but a passphrase was given"
        ) from exc
    except ValueError as exc:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise PassphraseError(f"{source}: wrong passphrase for the encrypted key") from exc
        raise KeyFileError(f"{source}: not a PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"{source}: unsupported key type {type(key).__name__}")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise KeyFileError(f"{source}: RSA key of {key.key_size} bits is too weak")
    return key


# ---------------------------------------------------------------- certificates

def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_to_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def cert_from_bytes(data: bytes, source: str = "certificate") -> x509.Certificate:
    """Load a PEM or DER certificate, with an error that says which file was wrong."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise KeyFileError(f"{source}: not a valid X.509 certificate ({exc})") from exc


def ca_hash(ca_cert: x509.Certificate) -> str:
    """Hex SHA-256 of the CA's DER encoding: the first half of a join token."""
    return hashlib.sha256(cert_to_der(ca_cert)).hexdigest()


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def organizations(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def subject(common_name_: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name_)])


def node_subject(node_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, NODE_CN_PREFIX + node_name),
        ]
    )


def not_valid_before(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_before_utc


def not_valid_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


@dataclass(frozen=True)
class Issued:
    """A freshly issued certificate together with its private key."""

    key: PrivateKey
    cert: x509.Certificate


def _validity(lifetime: dt.timedelta, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    now = now or utcnow()
    backdate = min(MAX_BACKDATE, lifetime / 10)
    return now - backdate, now + lifetime


def create_ca(
    common_name_: str = "moorage-ca",
    lifetime: dt.timedelta = dt.timedelta(days=3650),
    key: PrivateKey | None = None,
) -> Issued:
    key = key or generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name_)])
    start, end = _validity(lifetime, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _san_entries(addresses: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for address in addresses:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            entries.append(x509.DNSName(address))
    return entries


def sign(
    ca: Issued,
    subject: x509.Name,
    public_key: object,
    *,
    lifetime: dt.timedelta,
    server: bool = False,
    client: bool = False,
    sans: list[str] | None = None,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a leaf certificate for ``public_key`` with the usages asked for."""
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if not usages:
        raise CSRError("a certificate needs a server or a client usage")
    start, end = _validity(lifetime, now)
    end = min(end, not_valid_after(ca.cert))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san_entries(sans)), False)
    return builder.sign(ca.key, hashes.SHA256())


def issue(
    ca: Issued,
    subject: x509.Name,
    *,
    lifetime: dt.timedelta,
    server: bool = False,
    client: bool = False,
    sans: list[str] | None = None,
) -> Issued:
    key = generate_key("rsa" if isinstance(ca.key, rsa.RSAPrivateKey) else "ecdsa-p256")
    cert = sign(ca, subject, key.public_key(), lifetime=lifetime, server=server, client=client,
                sans=sans)
    return Issued(key, cert)


# ---------------------------------------------------------------- CSRs

MAX_CSR_BYTES = 16 * 1024


def make_csr(key: PrivateKey, subject: x509.Name) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def csr_to_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a DER or PEM CSR, checking its size, signature and key strength."""
    if len(data) > MAX_CSR_BYTES:
        raise CSRError(f"CSR of {len(data)} bytes is larger than the {MAX_CSR_BYTES}-byte limit")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CSRError(f"the body is not a DER or PEM certificate signing request ({exc})") from exc
    if not csr.is_signature_valid:
        raise CSRError("the CSR's signature does not match its public key")
    public_key = csr.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CSRError(f"RSA key of {public_key.key_size} bits: at least {MIN_RSA_BITS} needed")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.key_size < 256:
            raise CSRError(f"EC key on {public_key.curve.name} is too weak: use P-256 or larger")
    else:
        raise CSRError(f"unsupported key type in CSR: {type(public_key).__name__}")
    return csr


# ---------------------------------------------------------------- files

@dataclass(frozen=True)
class PairPaths:
    cert: Path
    key: Path


def save_pair(issued: Issued, paths: PairPaths, passphrase: bytes | None = None) -> None:
    """Key first (0600), then the certificate, each replaced atomically."""
    write_private(paths.key, key_to_pem(issued.key, passphrase))
    write_public(paths.cert, cert_to_pem(issued.cert))


def load_pair(paths: PairPaths, passphrase: bytes | None = None) -> Issued:
    try:
        cert_data = paths.cert.read_bytes()
        key_data = paths.key.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return Issued(key_from_pem(key_data, passphrase, str(paths.key)),
                  cert_from_bytes(cert_data, str(paths.cert)))


def load_cert(path: Path) -> x509.Certificate:
    try:
        return cert_from_bytes(path.read_bytes(), str(path))
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc


def random_secret(nbytes: int = 32) -> bytes:
    return secrets.token_bytes(nbytes)


def serial_hex(serial: int | str) -> str:
    """One spelling for serial numbers: uppercase hex without leading zeros.

    ``ssl`` reports a peer's serial as hex text, ``cryptography`` as an int.
    """
    value = int(serial, 16) if isinstance(serial, str) else serial
    return format(value, "X")
