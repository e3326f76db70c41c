"""Join tokens, wire-compatible with KubeEdge: ``<sha256 hex of CA DER>.<JWT>``.

The JWT is HS256-signed by the cloud and carries an ``exp`` claim (KubeEdge's
edge sends it as-is in ``Authorization: Bearer``). The cloud stores only a
SHA-256 of the JWT, so a stolen database does not leak usable tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from moorage.errors import TokenError

MAX_TOKEN_CHARS = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
        raise TokenError(
            "the token is not valid base64url: copy it again from `moorage gettoken`") from exc


@dataclass(frozen=True)
class JoinToken:
    ca_hash: str
    jwt: str

    def __str__(self) -> str:
        return f"{self.ca_hash}.{self.jwt}"

    @property
    def digest(self) -> str:
        """What the cloud stores in place of the token."""
        return jwt_digest(self.jwt)


def jwt_digest(jwt: str) -> str:
    return hashlib.sha256(jwt.encode("ascii", "replace")).hexdigest()


def parse_token(text: str) -> JoinToken:
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError("the token is too long: copy it again from `moorage gettoken`")
    ca_part, _, jwt = text.partition(".")
    if not _HEX64.match(ca_part) or jwt.count(".") != 2:
        raise TokenError(
            "malformed join token: expected <64 hex characters>.<JWT> as printed by "
            "`moorage gettoken`"
        )
    return JoinToken(ca_part, jwt)


def sign_jwt(key: bytes, ttl_seconds: float, now: float | None = None) -> tuple[str, int]:
    """A new HS256 JWT expiring after ``ttl_seconds``; returns it and its ``exp``."""
    issued = int(now if now is not None else time.time())
    exp = issued + max(1, int(ttl_seconds))
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"exp": exp, "iat": issued, "jti": secrets.token_hex(8)}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = _b64(hmac.new(key, signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}", exp


def verify_jwt(key: bytes, jwt: str, now: float | None = None) -> dict[str, object]:
    """Check algorithm, signature and expiry; return the claims."""
    if len(jwt) > MAX_TOKEN_CHARS or jwt.count(".") != 2:
        raise TokenError("malformed token: expected a JWT (three dot-separated parts)")
    header_b64, payload_b64, signature_b64 = jwt.split(".")
    try:
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(payload_b64))
    except (ValueError, RecursionError):
        raise TokenError("malformed token: its JWT parts are not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("token refused: only HS256 tokens issued by this cloud are accepted")
    expected = hmac.new(key, f"{header_b64}.{payload_b64}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64(signature_b64)):
        raise TokenError("unknown token: it was not issued by this cloud; get one with "
                         "`moorage gettoken`")
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int):
        raise TokenError("malformed token: no numeric exp claim")
    if exp <= (now if now is not None else time.time()):
        raise TokenError("the token has expired: get a new one with `moorage gettoken`")
    return claims
