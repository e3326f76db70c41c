"""The ServiceBus wire format: an HTTP request or response carried in a channel message.

Both directions use it: the cloud's node proxy (``/api/v1/nodes/{node}/proxy/{port}/...``
-> an app on the node) and an edge app's request to an allowlisted cloud URL. Bodies
travel base64-encoded; everything is checked on arrival (method, header count and size,
body size) and problems raise :class:`ProtocolError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from moorage.errors import ProtocolError

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
# Per-hop headers (RFC 9110 section 7.6.1) and those the sender's HTTP stack sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length",
                        "proxy-authorization", "proxy-authenticate"})
CREDENTIALS = frozenset({"authorization", "cookie"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def clean_headers(headers: Any, credentials: bool = True) -> list[tuple[str, str]]:
    """Headers worth passing on: no per-hop ones; without ``credentials``, none of the
    caller's either (a node proxy call is authorized by the admin's certificate, and the
    admin's tokens or cookies are not for the app)."""
    drop = HOP_BY_HOP if credentials else HOP_BY_HOP | CREDENTIALS
    return [(str(name), str(value)) for name, value in headers if name.lower() not in drop]


def _headers(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or len(value) > MAX_HEADERS:
        raise ProtocolError(f"{where}: expected a list of at most {MAX_HEADERS} [name, value]")
    total = 0
    out = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str)
                                                                  for x in item)):
            raise ProtocolError(f"{where}: expected [name, value] pairs of strings")
        name, text = item
        if not _TOKEN.match(name) or "\n" in text or "\r" in text:
            raise ProtocolError(f"{where}: header {name[:40]!r} is not a valid HTTP header")
        total += len(name) + len(text)
        out.append((name, text))
    if total > MAX_HEADER_BYTES:
        raise ProtocolError(f"{where}: headers exceed {MAX_HEADER_BYTES} bytes")
    return out


def _body(value: Any, where: str, max_bytes: int) -> bytes:
    if not isinstance(value, str) or len(value) > (max_bytes + 2) // 3 * 4 + 4:
        raise ProtocolError(f"{where}: the body is larger than {max_bytes} bytes")
    try:
        body = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{where}: not base64") from None
    if len(body) > max_bytes:
        raise ProtocolError(f"{where}: the body is larger than {max_bytes} bytes")
    return body


@dataclass(frozen=True)
class HTTPRequest:
    method: str
    target: str  # proxy: "<path>?<query>" on the node; upstream: the full URL
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    port: int = 0  # proxy only: the app's port on 127.0.0.1

    def to_content(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.target, "port": self.port,
                "headers": [list(h) for h in self.headers],
                "body": base64.b64encode(self.body).decode()}

    @classmethod
    def from_content(cls, content: Any, max_body: int) -> HTTPRequest:
        if not isinstance(content, dict):
            raise ProtocolError("content: expected an HTTP request object")
        method = content.get("method")
        if method not in METHODS:
            raise ProtocolError(f"content.method: {str(method)[:20]!r} is not one of "
                                f"{', '.join(METHODS)}")
        target = content.get("target")
        if not isinstance(target, str) or not target or len(target) > 8192:
            raise ProtocolError("content.target: expected a path or URL of at most 8192 chars")
        port = content.get("port", 0)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ProtocolError("content.port: expected 1-65535")
        return cls(method, target, _headers(content.get("headers", []), "content.headers"),
                   _body(content.get("body", ""), "content.body", max_body), port)


@dataclass(frozen=True)
class HTTPResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def to_content(self) -> dict[str, Any]:
        return {"status": self.status, "headers": [list(h) for h in self.headers],
                "body": base64.b64encode(self.body).decode()}

    @classmethod
    def error(cls, status: int, message: str) -> HTTPResponse:
        return cls(status, [("Content-Type", "text/plain; charset=utf-8")],
                   (message + "\n").encode())

    @classmethod
    def from_content(cls, content: Any, max_body: int) -> HTTPResponse:
        if not isinstance(content, dict):
            raise ProtocolError("content: expected an HTTP response object")
        status = content.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status < 600:
            raise ProtocolError("content.status: expected an HTTP status code")
        return cls(status, _headers(content.get("headers", []), "content.headers"),
                   _body(content.get("body", ""), "content.body", max_body))


async def perform(session: Any, call: HTTPRequest, url: str, timeout: float, cap: int,
                  what: str, settings: str = "", unreachable_hint: str = "") -> HTTPResponse:
    """Make ``call`` to ``url`` with an aiohttp ``session``; every failure is an answer (502
    unreachable or too big, 504 too slow) whose body says which limit, ``settings`` naming
    the config section that sets them."""
    from aiohttp import ClientError, ClientTimeout

    def setting(name: str) -> str:
        return f" ({settings}.{name})" if settings else ""

    try:
        async with session.request(call.method, url, headers=call.headers,
                                   data=call.body or None, allow_redirects=False,
                                   timeout=ClientTimeout(total=timeout)) as response:
            body = await response.content.read(cap + 1)
            if len(body) > cap:
                return HTTPResponse.error(502, f"{what} answered more than {cap} bytes"
                                               f"{setting('maxBodyBytes')}")
            return HTTPResponse(response.status, clean_headers(response.headers.items()), body)
    except TimeoutError:
        return HTTPResponse.error(504, f"{what} did not answer within {timeout:g}s"
                                       f"{setting('timeout')}")
    except (ClientError, ValueError) as exc:
        return HTTPResponse.error(502, f"{what} cannot be reached: {exc}{unreachable_hint}")


def web_response(response: HTTPResponse) -> Any:
    """The answer as an aiohttp ``web.Response``, headers and all."""
    from aiohttp import web

    out = web.Response(status=response.status, body=response.body)
    for name, value in response.headers:
        out.headers.add(name, value)
    return out


def allowed(url: str, allowlist: list[str]) -> bool:
    """True if ``url`` starts with one of the allowlisted prefixes, compared after
    normalizing: no user info, no dot segments (also percent-encoded), scheme and host in
    lower case, so ``https://api.example.com.evil/`` or ``.../v1/../admin`` never pass."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or \
            "@" in parts.netloc or "\\" in url:
        return False
    segments = unquote(parts.path).split("/")
    if any(s in (".", "..") for s in segments):
        return False
    normalized = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path or '/'}"
    for prefix in allowlist:
        head = urlsplit(prefix)
        want = f"{head.scheme.lower()}://{head.netloc.lower()}{head.path or '/'}"
        if normalized == want or normalized.startswith(want if want.endswith("/")
                                                       else want + "/"):
            return True
    return False
