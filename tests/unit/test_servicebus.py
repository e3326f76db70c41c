"""The ServiceBus wire format, the allowlist and the node proxy path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudcore.servicebus import parse_proxy_path
from moorage.errors import ProtocolError
from moorage.servicebus import HTTPRequest, HTTPResponse, allowed, clean_headers

ALLOW = ["https://api.example.com/v1/", "http://10.0.0.5:8080/ingest"]


@pytest.mark.parametrize("url", [
    "https://api.example.com/v1/", "https://api.example.com/v1/items?x=1",
    "HTTPS://API.EXAMPLE.COM/v1/items", "http://10.0.0.5:8080/ingest",
    "http://10.0.0.5:8080/ingest/batch"])
def test_allowlisted_urls_pass(url: str) -> None:
    assert allowed(url, ALLOW)


@pytest.mark.parametrize("url", [
    "https://api.example.com/v2/", "https://api.example.com.evil.net/v1/",
    "https://api.example.com/v1/../admin", "https://api.example.com/v1/%2E%2E/admin",
    "https://user@api.example.com/v1/", "http://api.example.com/v1/",
    "http://10.0.0.5:8080/ingestion", "ftp://api.example.com/v1/", "https:///v1/",
    "https://api.example.com\\@evil/v1/", "javascript:alert(1)"])
def test_everything_else_is_refused(url: str) -> None:
    assert not allowed(url, ALLOW)


@given(st.text(max_size=200))
def test_allowlist_never_raises(url: str) -> None:
    assert allowed(url, ALLOW) in (True, False)


def test_requests_and_responses_round_trip_and_are_checked() -> None:
    request = HTTPRequest("POST", "/echo?x=1", [("X-A", "1")], b"\x00\xffbody", 8080)
    assert HTTPRequest.from_content(request.to_content(), 100) == request
    response = HTTPResponse(201, [("Content-Type", "text/plain")], b"ok")
    assert HTTPResponse.from_content(response.to_content(), 100) == response
    with pytest.raises(ProtocolError, match="larger than 4 bytes"):
        HTTPRequest.from_content(request.to_content(), 4)
    bad = request.to_content()
    for field, value, message in (("method", "BREW", "is not one of"),
                                  ("headers", [["Bad Name", "x"]], "not a valid HTTP header"),
                                  ("headers", [["X", "a\r\nInjected: 1"]], "not a valid"),
                                  ("body", "***", "not base64"), ("port", 70000, "1-65535")):
        with pytest.raises(ProtocolError, match=message):
            HTTPRequest.from_content({**bad, field: value}, 100)
    with pytest.raises(ProtocolError, match="status"):
        HTTPResponse.from_content({"status": 99}, 100)


def test_per_hop_headers_and_caller_credentials_are_not_passed_on() -> None:
    headers = [("Host", "x"), ("Connection", "close"), ("Authorization", "Bearer t"),
               ("Cookie", "a=b"), ("X-Keep", "1"), ("Transfer-Encoding", "chunked")]
    assert clean_headers(headers, credentials=False) == [("X-Keep", "1")]
    assert clean_headers(headers) == [("Authorization", "Bearer t"), ("Cookie", "a=b"),
                                      ("X-Keep", "1")]


def test_node_proxy_paths() -> None:
    assert parse_proxy_path("edge-1", "8080/api/items") == ("edge-1", 8080, "api/items")
    assert parse_proxy_path("edge-1:9000", "status") == ("edge-1", 9000, "status")
    assert parse_proxy_path("edge-1", "healthz") == ("edge-1", None, "healthz")
    assert parse_proxy_path("edge-1:http", "x") == ("edge-1", -1, "x")
