"""Which replicas the ``--server`` URLs stand for, resolved again on every poll.

A URL whose host is an IP address is one replica. A URL whose host is a name (a Kubernetes
headless Service, say) stands for every address the name resolves to, each polled as its own
replica at the URL's port and path: ``http://serve-replicas:8000`` resolving to 10.0.0.5 and
10.0.0.6 means ``http://10.0.0.5:8000`` and ``http://10.0.0.6:8000``. Of a name's addresses only
one family is used — IPv4 if it has any, else IPv6 — so a dual-stack pod (or ``localhost``) is
not polled twice. An ``https`` URL expands the same way, and each address is polled over TLS with
the URL's host as the server name (SNI, certificate check and Host header): the certificate names
the Service, not the pods' addresses. A name that does not exist (NXDOMAIN: a headless Service with no ready pod)
stands for no replica; any other failure (DNS unreachable, say) keeps the addresses the name
had, and is reported.

The resolver is a plain callable, host → addresses, so tests (and ``--hosts-file``) can point
one name at several loopback addresses.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

Resolver = Callable[[str], Sequence[str]]

# getaddrinfo's "this name has no addresses" answers (EAI_NODATA is not defined everywhere).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def _one_family(addresses: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(addresses))
    v4 = [a for a in unique if ipaddress.ip_address(a).version == 4]
    return v4 or unique


def system_resolver(host: str) -> list[str]:
    """The host's addresses from the system resolver (DNS, /etc/hosts), one family (module docstring)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return _one_family([str(info[4][0]).split("%", 1)[0] for info in infos])


class HostsFile:
    """Names from a file in /etc/hosts format (``ADDRESS NAME [NAME…]``, ``#`` comments), read again on
    every call so that editing it adds and removes replicas; names it lacks go to ``fallback``."""

    def __init__(self, path: Path, fallback: Resolver = system_resolver) -> None:
        self.path = path
        self.fallback = fallback

    def __call__(self, host: str) -> Sequence[str]:
        wanted = host.lower()
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and wanted in (name.lower() for name in fields[1:]):
                found.append(str(ipaddress.ip_address(fields[0])))
        return _one_family(found) if found else self.fallback(host)


@dataclass(frozen=True, slots=True)
class Target:
    """One ``--server`` URL."""

    url: str  # as given, without a trailing slash
    scheme: str
    host: str
    port: int | None
    path: str

    @property
    def expands(self) -> bool:
        """Whether the host is a name to resolve into replicas (module docstring)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False

    def replica_url(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{host}{port}{self.path}"


def tls_server_name(replica_url: str, target_url: str) -> str | None:
    """The name to check a replica's certificate against when it was found through an ``https`` name (module
    docstring); None when the replica's URL names its host itself."""
    target = parse_target(target_url)
    host = urllib.parse.urlsplit(replica_url).hostname
    return target.host if target.scheme == "https" and host != target.host else None


def parse_target(url: str) -> Target:
    url = url.rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--server takes an http(s) URL such as http://127.0.0.1:8000, not {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--server {url!r}: the port is not a number") from None
    return Target(url, parts.scheme, parts.hostname, port, parts.path)


class TargetJson(TypedDict):
    server: str
    replicas: list[str]
    error: str | None


@dataclass(slots=True)
class TargetState:
    target: Target
    replicas: list[str] = field(default_factory=list)  # replica URLs from the last successful resolution
    error: str | None = None  # why the last resolution failed (replicas are then the ones before)
    resolved: bool = False  # resolved successfully at least once

    def to_json(self) -> TargetJson:
        return {"server": self.target.url, "replicas": list(self.replicas), "error": self.error}


class Discovery:
    def __init__(self, urls: Sequence[str], resolver: Resolver = system_resolver) -> None:
        self.resolver = resolver
        self.targets = [TargetState(parse_target(url)) for url in dict.fromkeys(u.rstrip("/") for u in urls)]
        for state in self.targets:
            if not state.target.expands:
                state.replicas, state.resolved = [state.target.url], True

    def known(self) -> dict[str, str]:
        """Replica URL → the --server URL it came from, as last resolved (addresses only, before the first)."""
        replicas: dict[str, str] = {}
        for state in self.targets:
            for url in state.replicas:
                replicas.setdefault(url, state.target.url)
        return replicas

    def resolve(self) -> dict[str, str]:
        """Resolve every name again (blocking: run it in a worker thread); replica URL → the --server URL
        it came from, first target first."""
        for state in self.targets:
            if state.target.expands:
                self._resolve(state)
        return self.known()

    def _resolve(self, state: TargetState) -> None:
        try:
            addresses = self.resolver(state.target.host)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                state.replicas, state.error, state.resolved = [], None, True
            else:
                state.error = f"cannot resolve {state.target.host}: {exc.strerror or exc}"
            return
        except (OSError, ValueError) as exc:  # a hosts file that cannot be read or holds a bad address
            state.error = f"cannot resolve {state.target.host}: {exc}"
            return
        state.replicas = [state.target.replica_url(a) for a in addresses]
        state.error, state.resolved = None, True
