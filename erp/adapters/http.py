"""The HTTP the adapters speak: JSON and multipart requests over http.client with a timeout, no
redirects and no cookies; a transport error or a 408/425/429/5xx answer is retryable.

Every attempt checks the URL against the address policy of notification webhooks again (https,
a host that resolves to public addresses only), since a name may change its answer after the
connection was saved; `allow_private` (WEBHOOK_ALLOW_PRIVATE) turns that off."""

from __future__ import annotations

import http.client
import socket
import ssl
import uuid
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from coldchain.errors import ValidationError
from coldchain.webhook_url import public_address, webhook_host
from erp.adapters import DeliveryFailed

MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise DeliveryFailed(
                f"the ERP answered HTTP {self.status} with a body that is not JSON",
                retryable=self.status >= 500,
            ) from None


def retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def check_address(url: str, *, allow_private: bool) -> None:
    """DeliveryFailed (final) when the URL breaks the address policy."""
    try:
        host, port = webhook_host(url, allow_private=allow_private)
    except (ValidationError, ValueError) as exc:
        raise DeliveryFailed(f"the ERP URL is refused: {exc}", retryable=False) from None
    if allow_private:
        return
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise DeliveryFailed(f"{host} does not resolve", retryable=True) from None
    for *_, sockaddr in answers:
        if not public_address(str(sockaddr[0])):
            raise DeliveryFailed(
                f"{host} resolves to {sockaddr[0]}, which is not a public address", retryable=False
            )


def request(
    url: str,
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    allow_private: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    check_address(url, allow_private=allow_private)
    parts = urlsplit(url)
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout_s, context=ssl_context or ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers={"User-Agent": "coldchain-erp/1", **(headers or {})})
        response = conn.getresponse()
        data = response.read(MAX_RESPONSE_BYTES)
        return Response(response.status, data, {k.lower(): v for k, v in response.getheaders()})
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"{host} could not be reached: {type(exc).__name__}", retryable=True) from exc
    finally:
        conn.close()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type; files map a field to (name, type, bytes)."""
    boundary = "coldchain-" + uuid.uuid4().hex
    out: list[bytes] = []
    for name, value in fields.items():
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, mimetype, content) in files.items():
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {mimetype}\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"
