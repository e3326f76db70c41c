"""Client side of the enrollment service: fetch the CA, get a CSR signed.

Plain ``http.client`` (blocking): used by ``moorage join`` and, from a thread,
by edgecore's certificate rotation.
"""

from __future__ import annotations

import hmac
import http.client
import ssl
from dataclasses import dataclass

from certs import tls
from moorage.errors import MoorageError
from moorage.token import JoinToken

MAX_RESPONSE_BYTES = 64 * 1024
TIMEOUT = 15.0


class EnrollError(MoorageError):
    pass


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _request(endpoint: Endpoint, ctx: ssl.SSLContext, method: str, path: str,
             body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    conn = http.client.HTTPSConnection(endpoint.host, endpoint.port, context=ctx, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except ssl.SSLCertVerificationError as exc:
        raise EnrollError(f"cannot trust the enrollment service at {endpoint}: "
                          f"{tls.describe_tls_error(exc)}") from None
    except ssl.SSLError as exc:
        raise EnrollError(f"TLS with the enrollment service at {endpoint} failed: "
                          f"{tls.describe_tls_error(exc)}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise EnrollError(
            f"cannot reach the enrollment service at {endpoint}: {exc}. Is cloudcore running, "
            "is the port (modules.cloudHub.https.port, default 10002) open in the firewall, "
            "and is --certport right?") from None
    finally:
        conn.close()
    if len(data) > MAX_RESPONSE_BYTES:
        raise EnrollError(f"the enrollment service at {endpoint} sent an oversized answer")
    if response.status != 200:
        text = data.decode("utf-8", "replace").strip()[:500]
        raise EnrollError(f"the enrollment service refused ({response.status}): {text}")
    return data


def fetch_ca(endpoint: Endpoint, token: JoinToken) -> bytes:
    """Trust on first use: download the CA and accept it only if it matches the token."""
    from certs import pki  # cryptography, imported only by the commands that enroll

    ctx = tls.client_context(verify=False)
    der = _request(endpoint, ctx, "GET", "/ca.crt")
    ca = pki.cert_from_bytes(der, "the CA served by the cloud")
    if not hmac.compare_digest(pki.ca_hash(ca), token.ca_hash):
        raise EnrollError(
            f"the CA served at {endpoint} does not match the token (hash {pki.ca_hash(ca)[:16]}… "
            f"instead of {token.ca_hash[:16]}…): this is not the cloud that issued the token, or "
            "someone is in between. Check the address and get a fresh token.")
    return pki.cert_to_pem(ca)


def request_certificate(
    endpoint: Endpoint, ca_pem: bytes, node_name: str, csr_der: bytes, *,
    token: JoinToken | None = None, client_cert: str | None = None,
    client_key: str | None = None, passphrase: bytes | None = None,
) -> bytes:
    """POST a CSR; authenticated by the token or by the current client certificate."""
    from certs import pki  # cryptography: edgecore imports it only when it renews

    ctx = tls.client_context(ca_pem=ca_pem, cert_file=client_cert, key_file=client_key,
                             passphrase=passphrase)
    headers = {"NodeName": node_name, "Content-Type": "application/octet-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token.jwt}"
    der = _request(endpoint, ctx, "POST", "/edge.crt", csr_der, headers)
    cert = pki.cert_from_bytes(der, "the certificate signed by the cloud")
    return pki.cert_to_pem(cert)
