"""TLS for both listeners, from PEM files: a certificate chain and its key, and optionally the CA
that client certificates must chain to (mutual TLS: a client without such a certificate is refused).

The files are read and checked once at start with the ``ssl`` module, so that a wrong or
encrypted key, a certificate that does not match its key or an unreadable CA file is an error
naming the flag and the file, not a handshake failure later. uvicorn reads them again by path,
grpc.aio takes the bytes read here.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypedDict

from serve.errors import ServeError


class TlsError(ServeError):
    """A TLS file cannot be used; names the flag and the file."""


class UvicornTlsOptions(TypedDict, total=False):
    """uvicorn.Config's TLS keywords; none at all (``{}``) is a server without TLS."""

    ssl_certfile: str
    ssl_keyfile: str
    ssl_ca_certs: str | None
    ssl_cert_reqs: int
    ssl_ciphers: str


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    cert: bytes
    key: bytes
    client_ca: bytes | None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def uvicorn_options(self) -> UvicornTlsOptions:
        """uvicorn.Config's TLS keywords."""
        return {
            "ssl_certfile": str(self.cert_file),
            "ssl_keyfile": str(self.key_file),
            "ssl_ca_certs": str(self.client_ca_file) if self.client_ca_file is not None else None,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if self.mutual else ssl.CERT_NONE,
            # uvicorn would set OpenSSL's "TLSv1" cipher list (CBC and SHA-1 suites included); an empty
            # value keeps Python's default (forward-secret AEAD suites only, security level 2).
            "ssl_ciphers": "",
        }


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise TlsError(f"{flag} {path}: cannot read it: {reason}") from None


def _encrypted_key() -> NoReturn:
    raise TlsError("the key is encrypted: give an unencrypted key file (the server asks for no passphrase)")


def load_tls(cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None) -> TlsFiles | None:
    """The checked TLS files, or None when no certificate is configured (plain HTTP and gRPC)."""
    if cert_file is None or key_file is None:
        return None
    cert = _read("--tls-cert-file", cert_file)
    key = _read("--tls-key-file", key_file)
    client_ca = _read("--tls-client-ca-file", client_ca_file) if client_ca_file is not None else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that refuses: OpenSSL would otherwise prompt on the terminal.
        context.load_cert_chain(cert_file, key_file, password=_encrypted_key)
    except TlsError as exc:
        raise TlsError(f"--tls-key-file {key_file}: {exc.message}") from None
    except ssl.SSLError as exc:
        raise TlsError(
            f"--tls-cert-file {cert_file} with --tls-key-file {key_file}: not a PEM certificate chain and its "
            f"matching key ({exc.reason or exc})"
        ) from None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except ssl.SSLError as exc:
            raise TlsError(
                f"--tls-client-ca-file {client_ca_file}: no PEM CA certificate ({exc.reason or exc})"
            ) from None
    return TlsFiles(cert_file, key_file, client_ca_file, cert, key, client_ca)
