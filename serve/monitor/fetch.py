"""The monitor's HTTP requests to replicas: plain blocking GET / POST with a timeout and a bearer token, and TLS
to a replica's address checked against the name it was found through (discovery.py)."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson


def http_response(
    url: str, timeout_s: float, body: bytes | None = None, token: str | None = None, tls_name: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """GET (or POST ``body``) ``url``; with ``tls_name``, over TLS to the URL's address but checking the
    certificate against that name (a replica found through an https Service name: discovery.py)."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NamedTlsHandler(tls_name)) if tls_name else urllib.request.build_opener()
    if tls_name:
        port = urllib.parse.urlsplit(url).port
        request.add_header("Host", tls_name if port is None else f"{tls_name}:{port}")
    with opener.open(request, timeout=timeout_s) as response:
        return bytes(response.read()), {k.lower(): v for k, v in response.headers.items()}


class _NamedTlsConnection(http.client.HTTPSConnection):
    """Connects to the URL's address, and speaks TLS as if to ``server_name``."""

    def __init__(self, host: str, *, server_name: str, context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(host, context=context, **kwargs)
        self._server_name, self._tls_context = server_name, context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(sock, server_hostname=self._server_name)


class _NamedTlsHandler(urllib.request.HTTPSHandler):
    def __init__(self, server_name: str) -> None:
        super().__init__()
        self._server_name = server_name

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = ssl.create_default_context()  # the system's trust, or SSL_CERT_FILE's

        def connection(host: str, **kwargs: Any) -> _NamedTlsConnection:
            kwargs.pop("context", None)
            return _NamedTlsConnection(host, server_name=self._server_name, context=context, **kwargs)

        return self.do_open(connection, req)


def http_get_or_post(
    url: str, timeout_s: float, body: bytes | None = None, token: str | None = None, tls_name: str | None = None
) -> bytes:
    return http_response(url, timeout_s, body, token, tls_name)[0]


def error_message(exc: urllib.error.HTTPError) -> str:
    """The ``{"error": …}`` of a server's error answer, else its status line."""
    try:
        message = orjson.loads(exc.read()).get("error")
    except (OSError, ValueError, AttributeError):
        message = None
    return str(message) if message else f"HTTP {exc.code} {exc.reason}"
