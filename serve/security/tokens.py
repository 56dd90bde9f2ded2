"""Bearer tokens from a file: who a token is, and what it may do.

The file (``--auth-tokens-file``) holds one token a line, three fields separated by whitespace::

    # identity    scope      token, as is or as sha256:<hex of its SHA-256>
    ci-deployer   admin      sha256:1079b5509d3b93cb79af5a7aa7f998f07d6af179ce12ac26220906212fb609ec
    frontend      inference  kJ8q2vR7mZ4xW1tY9bN3cF6hL0pS5dGa

Blank lines and lines starting with ``#`` are skipped. The scope ``admin`` allows model control
and the repository API and implies ``inference`` (inference, metadata, statistics, /metrics).
Tokens are the characters of RFC 6750's b64token, at least 16 of them; a hashed token keeps the
secret out of the file. One identity may hold several tokens (rotation); one token may not
appear twice.

Every token is kept only as its SHA-256 and a presented token is hashed and compared with every
configured one in constant time (``hmac.compare_digest``, no early exit), so neither the
comparison nor its position in the file shows in the response time. Errors name the file and the
line, never a field's value: a token pasted into the wrong column must not reach a log.

The file is re-read when it changes (checked at most once a second, by its size, mtime and
inode, on the next request). A file that no longer parses is logged and the tokens read before
it stay in force; a file that is gone refuses every token until it is back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serve.errors import ServeError

log = logging.getLogger(__name__)

Scope = Literal["admin", "inference"]
ADMIN: Scope = "admin"
INFERENCE: Scope = "inference"
SCOPES: tuple[Scope, ...] = (ADMIN, INFERENCE)

MIN_TOKEN_CHARS = 16
_IDENTITY = re.compile(r"^[A-Za-z0-9_.@\-]{1,64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


class TokenFileError(ServeError):
    """The tokens file cannot be used; the message names the file and the line, not a token."""


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    scope: Scope

    def allows(self, needed: Scope) -> bool:
        return self.scope == ADMIN or needed == INFERENCE


@dataclass(frozen=True, slots=True)
class _Token:
    identity: Identity
    digest: bytes  # SHA-256 of the token


def _parse_line(fields: list[str], where: str) -> _Token:
    if len(fields) != 3:
        raise TokenFileError(f"{where}: expected 3 fields '<identity> <scope> <token>', found {len(fields)}")
    name, scope, token = fields
    if not _IDENTITY.match(name):
        raise TokenFileError(f"{where}: the identity must be 1 to 64 letters, digits or . _ @ -")
    if scope not in SCOPES:
        raise TokenFileError(f"{where}: the scope must be {' or '.join(SCOPES)}")
    hashed = _HASHED.match(token)
    if hashed:
        digest = bytes.fromhex(hashed.group(1))
    elif token.startswith("sha256:"):
        raise TokenFileError(f"{where}: a hashed token is sha256: and 64 hexadecimal digits")
    elif not _TOKEN.match(token) or len(token) < MIN_TOKEN_CHARS:
        raise TokenFileError(
            f"{where}: a token must be at least {MIN_TOKEN_CHARS} of the characters A-Z a-z 0-9 - . _ ~ + / "
            "(then '=' padding), or sha256:<hex>"
        )
    else:
        digest = hashlib.sha256(token.encode("ascii")).digest()
    return _Token(Identity(name, ADMIN if scope == ADMIN else INFERENCE), digest)


def parse_tokens(text: str, source: str) -> list[_Token]:
    tokens: list[_Token] = []
    lines: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source} line {number}"
        token = _parse_line(fields, where)
        if token.digest in lines:
            raise TokenFileError(f"{where}: the same token as line {lines[token.digest]}")
        lines[token.digest] = number
        tokens.append(token)
    return tokens


def read_tokens(path: Path) -> list[_Token]:
    source = f"auth tokens file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = os.strerror(exc.errno).lower() if isinstance(exc, OSError) and exc.errno else "not UTF-8 text"
        raise TokenFileError(f"cannot read the {source}: {reason}") from None
    return parse_tokens(text, source)


def bearer_token(value: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value; None for any other scheme."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a Kubernetes Secret update swaps one
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class TokenStore:
    def __init__(
        self, path: Path, *, check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._interval = check_interval_s
        self._clock = clock
        self._signature = _signature(path)
        self._tokens = read_tokens(path)  # at start, a bad file is an error that stops the server
        self._checked = clock()
        if not self._tokens:
            log.warning("auth tokens file %s holds no token: every call that needs one is refused", path)

    def __len__(self) -> int:
        return len(self._tokens)

    def identify(self, token: str | None) -> Identity | None:
        """The identity holding ``token``, or None; the same work whatever the token and the file."""
        self._refresh()
        if token is None:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for candidate in self._tokens:
            if hmac.compare_digest(candidate.digest, digest):
                found = candidate.identity
        return found

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        signature = _signature(self.path)
        if signature == self._signature:
            return
        self._signature = signature
        if signature is None:
            self._tokens = []
            log.error("auth tokens file %s is gone: every token is refused until it is back", self.path)
            return
        try:
            tokens = read_tokens(self.path)
        except TokenFileError as exc:
            log.error("%s; the %d token(s) read before stay in force", exc.message, len(self._tokens))
            return
        self._tokens = tokens
        log.info("auth tokens file %s re-read: %d token(s)", self.path, len(tokens))
