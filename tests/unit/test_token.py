"""Join tokens: ``<sha256 hex of the CA>.<HS256 JWT>``, KubeEdge-compatible."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage.errors import TokenError
from moorage.token import (
    MAX_TOKEN_CHARS,
    JoinToken,
    jwt_digest,
    parse_token,
    sign_jwt,
    verify_jwt,
)

KEY = b"k" * 32
CA_HASH = hashlib.sha256(b"some CA DER").hexdigest()
NOW = 1_700_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(header: object, claims: object, key: bytes = KEY) -> str:
    """A JWT built independently of the module under test."""
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(key, f"{h}.{p}".encode(), hashlib.sha256).digest())
    return f"{h}.{p}.{sig}"


# ---------------------------------------------------------------- format


def test_round_trip_sign_str_parse_verify() -> None:
    jwt, exp = sign_jwt(KEY, 3600, now=NOW)
    token = JoinToken(CA_HASH, jwt)
    text = str(token)

    assert text == f"{CA_HASH}.{jwt}"
    parsed = parse_token(text)
    assert parsed == token
    assert parsed.ca_hash == CA_HASH
    assert parsed.jwt == jwt
    claims = verify_jwt(KEY, parsed.jwt, now=NOW)
    assert claims["exp"] == exp == NOW + 3600


def test_parse_token_ignores_surrounding_whitespace() -> None:
    jwt, _ = sign_jwt(KEY, 60, now=NOW)
    assert parse_token(f"  {CA_HASH}.{jwt}\n") == JoinToken(CA_HASH, jwt)


def test_jwt_has_three_parts_hs256_header_and_integer_exp() -> None:
    jwt, exp = sign_jwt(KEY, 90.7, now=NOW + 0.9)
    header_b64, payload_b64, sig_b64 = jwt.split(".")
    header = json.loads(unb64(header_b64))
    claims = json.loads(unb64(payload_b64))

    assert header["alg"] == "HS256"
    # KubeEdge parses exp as an integer NumericDate.
    assert type(claims["exp"]) is int
    assert claims["exp"] == exp == NOW + 90
    expected_sig = hmac.new(KEY, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
    assert unb64(sig_b64) == expected_sig


def test_tokens_are_unique() -> None:
    first, _ = sign_jwt(KEY, 60, now=NOW)
    second, _ = sign_jwt(KEY, 60, now=NOW)
    assert first != second


def test_tiny_ttl_still_expires_in_the_future() -> None:
    jwt, exp = sign_jwt(KEY, 0, now=NOW)
    assert exp > NOW
    verify_jwt(KEY, jwt, now=NOW)


def test_jwt_digest_is_sha256_hex_of_the_jwt() -> None:
    jwt, _ = sign_jwt(KEY, 60, now=NOW)
    assert jwt_digest(jwt) == hashlib.sha256(jwt.encode("ascii")).hexdigest()
    assert JoinToken(CA_HASH, jwt).digest == jwt_digest(jwt)
    assert jwt_digest(jwt) != jwt_digest(jwt + "x")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no-dot-here",
        f"{CA_HASH}",
        f"{CA_HASH}.",
        f"{CA_HASH}.a.b",  # JWT with only two parts
        f"{CA_HASH}.a.b.c.d",  # JWT with four parts
        f"{CA_HASH[:-1]}.a.b.c",  # 63 hex characters
        f"{CA_HASH}0.a.b.c",  # 65 hex characters
        f"{CA_HASH.upper()}.a.b.c",  # uppercase hex is not what gettoken prints
        f"{'g' * 64}.a.b.c",  # not hex
        f"{CA_HASH}.{'a' * MAX_TOKEN_CHARS}.b.c",  # too long
    ],
)
def test_parse_token_rejects_malformed(text: str) -> None:
    with pytest.raises(TokenError):
        parse_token(text)


@given(st.text(max_size=200))
def test_parse_token_never_raises_anything_but_token_error(text: str) -> None:
    try:
        token = parse_token(text)
    except TokenError:
        return
    assert len(token.ca_hash) == 64
    assert token.jwt.count(".") == 2


# ---------------------------------------------------------------- verification


def test_verify_rejects_wrong_key() -> None:
    jwt, _ = sign_jwt(KEY, 3600, now=NOW)
    with pytest.raises(TokenError, match="not issued by this cloud"):
        verify_jwt(b"another key", jwt, now=NOW)


def test_verify_rejects_expired_token() -> None:
    jwt, exp = sign_jwt(KEY, 60, now=NOW)
    verify_jwt(KEY, jwt, now=exp - 1)
    with pytest.raises(TokenError, match="expired"):
        verify_jwt(KEY, jwt, now=exp)
    with pytest.raises(TokenError, match="expired"):
        verify_jwt(KEY, jwt, now=exp + 3600)


def test_verify_rejects_alg_none() -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"exp": NOW + 3600}).encode())
    with pytest.raises(TokenError, match="HS256"):
        verify_jwt(KEY, f"{header}.{payload}.", now=NOW)


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS256", "hs256", None])
def test_verify_rejects_other_algorithms_even_if_correctly_hmaced(alg: str | None) -> None:
    jwt = make_jwt({"alg": alg, "typ": "JWT"}, {"exp": NOW + 3600})
    with pytest.raises(TokenError, match="HS256"):
        verify_jwt(KEY, jwt, now=NOW)


def test_verify_accepts_independently_built_hs256_token() -> None:
    jwt = make_jwt({"alg": "HS256", "typ": "JWT"}, {"exp": NOW + 10, "sub": "x"})
    assert verify_jwt(KEY, jwt, now=NOW)["sub"] == "x"


def test_verify_rejects_tampered_payload() -> None:
    jwt, _ = sign_jwt(KEY, 60, now=NOW)
    header_b64, payload_b64, sig_b64 = jwt.split(".")
    claims = json.loads(unb64(payload_b64))
    claims["exp"] += 10 * 365 * 86400
    forged = f"{header_b64}.{b64(json.dumps(claims).encode())}.{sig_b64}"
    with pytest.raises(TokenError, match="not issued by this cloud"):
        verify_jwt(KEY, forged, now=NOW)


def test_verify_rejects_tampered_signature() -> None:
    jwt, _ = sign_jwt(KEY, 60, now=NOW)
    header_b64, payload_b64, sig_b64 = jwt.split(".")
    sig = bytearray(unb64(sig_b64))
    sig[0] ^= 1
    with pytest.raises(TokenError):
        verify_jwt(KEY, f"{header_b64}.{payload_b64}.{b64(bytes(sig))}", now=NOW)


@pytest.mark.parametrize("claims", [{}, {"exp": "9999999999"}, {"exp": 1.5e12}, [1, 2]])
def test_verify_requires_integer_exp(claims: object) -> None:
    jwt = make_jwt({"alg": "HS256"}, claims)
    with pytest.raises(TokenError, match="exp"):
        verify_jwt(KEY, jwt, now=NOW)


@pytest.mark.parametrize(
    "jwt",
    ["", "a.b", "a.b.c.d", "!!!.???.***", "e30.e30", "bm90IGpzb24.e30.abc", "é.e30.abc",
     "x" * (MAX_TOKEN_CHARS + 1)],
)
def test_verify_rejects_malformed(jwt: str) -> None:
    with pytest.raises(TokenError):
        verify_jwt(KEY, jwt, now=NOW)


@given(st.text(max_size=300))
def test_verify_of_arbitrary_text_raises_only_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        verify_jwt(KEY, text, now=NOW)


@given(st.from_regex(r"\A[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,60}\Z"))
def test_verify_of_arbitrary_jwt_shaped_text_raises_only_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        verify_jwt(KEY, text, now=NOW)


def test_verify_of_deeply_nested_header_raises_token_error() -> None:
    # A peer controls every byte of the token: a deeply nested JSON header fits in
    # MAX_TOKEN_CHARS and must be refused like any other malformed token.
    header = b64(b"[" * 2500)
    jwt = f"{header}.e30.abc"
    assert len(jwt) <= MAX_TOKEN_CHARS
    with pytest.raises(TokenError):
        verify_jwt(KEY, jwt, now=NOW)
