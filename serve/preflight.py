"""What `serve run` checks before any model loads, so that a mistake costs a second, not a model load.

Each failed check is one line saying what is wrong and what to do: a port another process holds,
a TLS or token file that cannot be used, a --model-repository that is one model's directory. A
repository with no model is not an error (models may be added and loaded later), but the server
would report ready while serving nothing, so it is a warning that names the path.

These checks run again where the server really binds and reads (a port may be taken in between):
they make the usual mistakes fail early, they are not the only guard.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from serve.errors import ServeError
from serve.payload_log.options import payload_log_options
from serve.repository.layout import repository_mistake
from serve.repository.repository import valid_model_name
from serve.security.tls import load_tls
from serve.security.tokens import read_tokens
from serve.settings import ServerSettings
from serve.tracing.options import tracing_options

log = logging.getLogger(__name__)


class PreflightError(Exception):
    """A reason `serve run` cannot start, worded for the person who started it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def preflight(settings: ServerSettings, root: Path) -> None:
    """Raise PreflightError for the first mistake found; warn about an empty repository."""
    _check_repository(settings, root)
    _check_security_files(settings)
    _check_payload_log(settings)
    _check_tracing(settings)
    _check_ports(settings)


def _check_repository(settings: ServerSettings, root: Path) -> None:
    if settings.model_name:
        return  # one model, read from root in any of three layouts (serve/repository/layout.py)
    mistake = repository_mistake(root)
    if mistake is not None:
        raise PreflightError(mistake)
    try:
        empty = not any(p.is_dir() and valid_model_name(p.name) for p in root.iterdir())
    except OSError:
        return  # unreadable: the repository says so when it scans
    if empty:
        later = " until models are added (they load on the next poll)" if settings.model_control_mode == "poll" else ""
        log.warning(
            "SERVING NO MODEL: --model-repository %s holds no model directory (<model>/1/model.onnx); the server "
            "reports ready all the same%s",
            root,
            later,
        )


def _check_security_files(settings: ServerSettings) -> None:
    try:
        load_tls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        if settings.auth_tokens_file is not None:
            read_tokens(settings.auth_tokens_file)
    except ServeError as exc:
        raise PreflightError(exc.message) from None


def _check_payload_log(settings: ServerSettings) -> None:
    try:
        payload_log_options(settings)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def _check_tracing(settings: ServerSettings) -> None:
    try:
        tracing_options(settings.trace, os.environ)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def _check_ports(settings: ServerSettings) -> None:
    listeners = [("HTTP", "--http-port", settings.http_port), ("gRPC", "--grpc-port", settings.grpc_port)]
    if settings.metrics_port is not None:
        listeners.append(("metrics", "--metrics-port", settings.metrics_port))
    seen: dict[int, str] = {}
    for what, flag, port in listeners:
        if port == 0:
            continue  # any free port: nothing to collide with
        if port in seen:
            raise PreflightError(f"{flag} {port} is also {seen[port]}: give each listener a port of its own")
        seen[port] = flag
        reason = _bind_error(settings.host, port)
        if reason is not None:
            raise PreflightError(
                f"cannot listen for {what} on {settings.host}:{port}: {reason}; stop what holds it or choose "
                f"another port with {flag}"
            )


def _bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (as the server binds it), or None; the socket is closed at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host.strip("[]"), port), family=family):
            return None
    except OSError as exc:  # socket.create_server adds "(while attempting to bind ...)" to strerror: not shown
        return os.strerror(exc.errno).lower() if exc.errno else str(exc)
