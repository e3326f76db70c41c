"""A small blocking client of the admin API, for the CLI (one kept-alive connection)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from typing import Any

from certs.tls import describe_tls_error
from moorage.errors import APIError
from moorage.kubeconfig import AdminAccess

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_WATCH_LINE = 4 * 1024 * 1024
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


class AdminClient:
    """Not thread-safe: it keeps one connection alive; give each thread its own."""

    def __init__(self, access: AdminAccess, timeout: float = 30.0) -> None:
        self.access, self.timeout = access, timeout
        self.conn: http.client.HTTPSConnection | None = None

    @property
    def where(self) -> str:
        return f"{self.access.host}:{self.access.port}"

    def _connection(self) -> http.client.HTTPSConnection:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(self.access.host, self.access.port,
                                                    context=self.access.ssl_context,
                                                    timeout=self.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _send(self, method: str, path: str, body: Any, accept: str,
              content_type: str) -> http.client.HTTPResponse:
        payload = body if isinstance(body, bytes) else \
            json.dumps(body).encode() if body is not None else None
        headers = {"Accept": accept}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                return conn.getresponse()
            except ssl.SSLError as exc:
                self.close()
                raise APIError(0, f"TLS with the admin API at {self.where} failed: "
                                  f"{describe_tls_error(exc)}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()  # a kept-alive connection the server closed: retry once
                if attempt == 2:
                    raise APIError(0, f"cannot reach the admin API at {self.where}: {exc}. Is "
                                      "cloudcore running, and is this the right kubeconfig?"
                                   ) from None
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, body: Any = None, *,
                accept: str = "application/json",
                content_type: str = "application/json") -> Any:
        response = self._send(method, path, body, accept, content_type)
        data = response.read(MAX_RESPONSE_BYTES + 1)
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if response.status >= 400:
            message = (decoded.get("message") if isinstance(decoded, dict) else None) or \
                data.decode("utf-8", "replace")[:300]
            raise APIError(response.status, str(message))
        return decoded if decoded is not None else data.decode("utf-8", "replace")

    def raw(self, method: str, path: str, body: bytes | None = None,
            content_type: str = "application/octet-stream"
            ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Any method on any path; the answer as it is (status, headers, body)."""
        response = self._send(method, path, body, "*/*", content_type)
        data = response.read(MAX_RESPONSE_BYTES + 1)
        if len(data) > MAX_RESPONSE_BYTES:
            raise APIError(502, f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
        return response.status, response.getheaders(), data

    def watch(self, path: str, accept: str = TABLE) -> Iterator[dict[str, Any]]:
        """Newline-delimited watch events, until the server ends the stream."""
        conn = http.client.HTTPSConnection(self.access.host, self.access.port,
                                           context=self.access.ssl_context, timeout=None)
        try:
            conn.request("GET", path, headers={"Accept": accept})
            response = conn.getresponse()
            if response.status >= 400:
                raise APIError(response.status, response.read(4096).decode("utf-8", "replace"))
            while True:
                line = response.readline(MAX_WATCH_LINE)
                if not line:
                    return
                yield json.loads(line)
        except OSError as exc:
            raise APIError(0, f"watch on {self.where} ended: {exc}") from None
        finally:
            conn.close()
