"""Listening sockets bound by serve itself, so that a taken port is an error that names it."""

from __future__ import annotations

import os
import socket


def bind_error_reason(exc: OSError) -> str:
    """'address already in use' rather than '[Errno 98] Address already in use'."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def bind_http_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind the HTTP listening socket ourselves, so that a taken port is an OSError naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=4096, reuse_port=reuse_port)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen for HTTP on {host}:{port}: {bind_error_reason(exc)}") from None
