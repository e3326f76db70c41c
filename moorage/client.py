"""A small blocking client of the admin API, for the CLI."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

from certs.tls import describe_tls_error
from moorage.errors import APIError
from moorage.kubeconfig import AdminAccess

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class AdminClient:
    def __init__(self, access: AdminAccess, timeout: float = 30.0) -> None:
        self.access, self.timeout = access, timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPSConnection(self.access.host, self.access.port,
                                           context=self.access.ssl_context, timeout=self.timeout)
        where = f"{self.access.host}:{self.access.port}"
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_RESPONSE_BYTES + 1)
        except ssl.SSLError as exc:
            raise APIError(0, f"TLS with the admin API at {where} failed: "
                              f"{describe_tls_error(exc)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise APIError(0, f"cannot reach the admin API at {where}: {exc}. Is cloudcore "
                              "running, and is this the right kubeconfig?") from None
        finally:
            conn.close()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if response.status >= 400:
            message = (decoded.get("message") if isinstance(decoded, dict) else None) or \
                data.decode("utf-8", "replace")[:300]
            raise APIError(response.status, str(message))
        return decoded if decoded is not None else data.decode("utf-8", "replace")
