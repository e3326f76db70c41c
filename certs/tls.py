"""The one TLS context factory used by every Moorage server and client.

TLS 1.2 is the floor. TLS 1.2 suites are limited to an allowlist of ECDHE key
exchange with AEAD ciphers; TLS 1.3 suites are all AEAD already.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from certs.errors import TLSConfigError

DEFAULT_TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
_ALLOWED_CIPHER = re.compile(
    r"^ECDHE-(ECDSA|RSA)-(AES128-GCM-SHA256|AES256-GCM-SHA384|CHACHA20-POLY1305)$"
)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def check_ciphers(names: Sequence[str]) -> str:
    """Validate a configured TLS 1.2 cipher list and return it as an OpenSSL string."""
    if not names:
        raise TLSConfigError("the TLS cipher list is empty: leave it unset for the safe default")
    bad = [name for name in names if not _ALLOWED_CIPHER.match(name)]
    if bad:
        raise TLSConfigError(
            f"cipher suite(s) {', '.join(bad)} not allowed: only ECDHE with AES-GCM or "
            f"ChaCha20-Poly1305, such as {DEFAULT_TLS12_CIPHERS[0]}"
        )
    return ":".join(names)


def min_version(value: str) -> ssl.TLSVersion:
    try:
        return _VERSIONS[value]
    except KeyError:
        raise TLSConfigError(f"minimum TLS version {value!r} not allowed: use 1.2 or 1.3") from None


def _base_context(purpose_server: bool, ciphers: Sequence[str], minimum: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose_server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = min_version(minimum)
    ctx.set_ciphers(check_ciphers(ciphers))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if purpose_server:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    return ctx


def load_chain(
    ctx: ssl.SSLContext, cert_file: str | Path, key_file: str | Path, passphrase: bytes | None
) -> None:
    """(Re)load the certificate and key; new handshakes use them, open sessions are kept."""
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file), password=passphrase)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot use {cert_file} with {key_file}: {exc.reason or exc} "
            "(does the key match the certificate, and is the passphrase right?)"
        ) from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc


def _load_ca(ctx: ssl.SSLContext, ca_file: str | Path | None, ca_pem: bytes | None) -> None:
    try:
        if ca_pem is not None:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        elif ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(f"cannot load the CA certificate {ca_file or ''}: {exc}") from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot read CA file {exc.filename}: {exc.strerror}") from exc


def server_context(
    *,
    cert_file: str | Path,
    key_file: str | Path,
    ca_file: str | Path | None = None,
    client_cert: str = "required",
    passphrase: bytes | None = None,
    ciphers: Sequence[str] = DEFAULT_TLS12_CIPHERS,
    minimum: str = "1.2",
) -> ssl.SSLContext:
    """A server context; ``client_cert`` is 'required', 'optional' or 'none'."""
    ctx = _base_context(True, ciphers, minimum)
    load_chain(ctx, cert_file, key_file, passphrase)
    modes = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    if client_cert not in modes:
        raise TLSConfigError(f"client_cert must be one of {sorted(modes)}, not {client_cert!r}")
    if client_cert != "none":
        if ca_file is None:
            raise TLSConfigError("verifying client certificates needs a CA file")
        _load_ca(ctx, ca_file, None)
    ctx.verify_mode = modes[client_cert]
    return ctx


def client_context(
    *,
    ca_file: str | Path | None = None,
    ca_pem: bytes | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    passphrase: bytes | None = None,
    ciphers: Sequence[str] = DEFAULT_TLS12_CIPHERS,
    minimum: str = "1.2",
    verify: bool = True,
) -> ssl.SSLContext:
    """A client context pinned to our CA (or, with ``verify=False``, trusting nothing yet)."""
    ctx = _base_context(False, ciphers, minimum)
    if verify:
        _load_ca(ctx, ca_file, ca_pem)
    else:
        # Trust on first use: the caller checks the CA's hash against the join token.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file is not None and key_file is not None:
        load_chain(ctx, cert_file, key_file, passphrase)
    return ctx


def client_context_from_pem(
    *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, **options: object
) -> ssl.SSLContext:
    """Like :func:`client_context` for material held in memory (a kubeconfig).

    ``ssl`` loads certificates only from files, so they pass through a private
    temporary directory that is removed before returning.
    """
    with tempfile.TemporaryDirectory(prefix="moorage-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        return client_context(ca_pem=ca_pem, cert_file=cert_path, key_file=key_path,
                              **options)  # type: ignore[arg-type]


def describe_tls_error(exc: BaseException) -> str:
    """Turn an OpenSSL error into a sentence an operator can act on."""
    text = f"{getattr(exc, 'reason', None) or ''} {exc}".upper()
    hints = [
        ("UNSUPPORTED_PROTOCOL", "the peer offered a TLS version below 1.2: upgrade it"),
        ("WRONG_VERSION_NUMBER", "the peer does not speak TLS here (wrong port or plain HTTP?)"),
        ("PROTOCOL_VERSION", "the TLS versions do not overlap: Moorage needs TLS 1.2 or newer"),
        ("NO_SHARED_CIPHER", "no shared cipher: the peer offers none of the allowed "
                             "ECDHE AES-GCM/ChaCha20 suites"),
        ("HANDSHAKE_FAILURE", "the TLS handshake failed: no common cipher or TLS version"),
        ("CERTIFICATE_REQUIRED", "no client certificate: enroll the node with `moorage join`"),
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no client certificate was presented: enroll the "
                                              "node with `moorage join`"),
        ("CERTIFICATE_EXPIRED", "the certificate has expired: re-enroll with "
                                "`moorage join --force` and a fresh token"),
        ("CERTIFICATE HAS EXPIRED", "the certificate has expired: re-enroll with "
                                    "`moorage join --force` and a fresh token"),
        ("UNKNOWN_CA", "the certificate was issued by another CA: enroll against this cloud"),
        ("UNABLE TO GET LOCAL ISSUER", "the certificate was issued by another CA: enroll "
                                       "against this cloud"),
        ("SELF-SIGNED", "the certificate was issued by another CA: enroll against this cloud"),
        ("IP ADDRESS MISMATCH", "the cloud's certificate does not name this address: add it "
                                "with `moorage certs renew-server --advertise-address` on the "
                                "cloud"),
        ("HOSTNAME MISMATCH", "the cloud's certificate does not name this host: add it with "
                              "`moorage certs renew-server --advertise-address` on the cloud"),
        ("CERTIFICATE_VERIFY_FAILED", "the certificate could not be verified"),
        ("BAD_CERTIFICATE", "the peer rejected our certificate"),
    ]
    for needle, hint in hints:
        if needle in text or needle.replace("_", " ") in text:
            return f"{hint} ({exc})"
    return str(exc)
