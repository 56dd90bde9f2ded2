"""The tokens file (serve/security/tokens.py): its format, its errors, reloading, and the comparison."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from serve.security.tokens import ADMIN, INFERENCE, Identity, TokenFileError, TokenStore, bearer_token, parse_tokens

ADMIN_TOKEN = "admin-token-0123456789abcdef"
INFERENCE_TOKEN = "inference-token-0123456789"
SECRET_LOOKING = "do-not-leak-this-secret-value"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def replace(path: Path, text: str) -> None:
    """Rewrite the file as an operator should: a new file renamed over the old (a new inode)."""
    staging = path.with_suffix(".new")
    staging.write_text(text)
    os.replace(staging, path)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return write(
        tmp_path / "tokens",
        f"# identity scope token\n\nci admin {ADMIN_TOKEN}\nfrontend   inference\t{INFERENCE_TOKEN}\n",
    )


def test_each_token_is_known_as_its_identity_and_scope(tokens_file: Path) -> None:
    store = TokenStore(tokens_file)

    assert store.identify(ADMIN_TOKEN) == Identity("ci", ADMIN)
    assert store.identify(INFERENCE_TOKEN) == Identity("frontend", INFERENCE)
    assert store.identify("not-a-configured-token-at-all") is None
    assert store.identify(None) is None


def test_a_hashed_token_is_accepted_so_that_the_file_holds_no_secret(tmp_path: Path) -> None:
    digest = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()
    store = TokenStore(write(tmp_path / "tokens", f"ci admin sha256:{digest}\n"))

    assert store.identify(ADMIN_TOKEN) == Identity("ci", ADMIN)
    assert store.identify(f"sha256:{digest}") is None  # the hash itself is not a token


def test_admin_implies_inference_but_not_the_reverse() -> None:
    assert Identity("a", ADMIN).allows(INFERENCE) and Identity("a", ADMIN).allows(ADMIN)
    assert Identity("i", INFERENCE).allows(INFERENCE) and not Identity("i", INFERENCE).allows(ADMIN)


def test_one_identity_may_hold_several_tokens_for_rotation(tmp_path: Path) -> None:
    store = TokenStore(write(tmp_path / "tokens", f"ci admin {ADMIN_TOKEN}\nci admin {ADMIN_TOKEN}-next\n"))

    assert store.identify(ADMIN_TOKEN) == store.identify(f"{ADMIN_TOKEN}-next") == Identity("ci", ADMIN)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (f"ci {SECRET_LOOKING}", "expected 3 fields"),
        (f"ci admin {SECRET_LOOKING} extra", "expected 3 fields"),
        (f"ci {SECRET_LOOKING} admin", "the scope must be admin or inference"),
        (f"c!i admin {SECRET_LOOKING}", "the identity must be"),
        ("ci admin short-secret", "at least 16"),
        (f"ci admin {SECRET_LOOKING}#x", "at least 16"),
        (f"ci admin sha256:{SECRET_LOOKING}", "sha256: and 64 hexadecimal digits"),
    ],
)
def test_a_bad_line_is_an_error_naming_the_file_and_line_but_never_a_value(
    tmp_path: Path, line: str, fragment: str
) -> None:
    path = write(tmp_path / "tokens", f"# comment\nok inference {INFERENCE_TOKEN}\n{line}\n")

    with pytest.raises(TokenFileError) as raised:
        TokenStore(path)

    message = raised.value.message
    assert f"auth tokens file {path} line 3" in message and fragment in message, message
    assert SECRET_LOOKING not in message and "short-secret" not in message


def test_a_token_given_twice_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens", f"a admin {ADMIN_TOKEN}\nb inference {ADMIN_TOKEN}\n")

    with pytest.raises(TokenFileError, match="line 2: the same token as line 1"):
        TokenStore(path)


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=f"cannot read the auth tokens file {tmp_path / 'missing'}"):
        TokenStore(tmp_path / "missing")


def test_a_changed_file_is_read_again_at_most_once_a_second(tokens_file: Path) -> None:
    clock = Clock()
    store = TokenStore(tokens_file, clock=clock)
    replace(tokens_file, f"ops admin {INFERENCE_TOKEN}\n")

    clock.now += 0.5
    assert store.identify(ADMIN_TOKEN) == Identity("ci", ADMIN)  # not looked at yet
    clock.now += 0.6
    assert store.identify(ADMIN_TOKEN) is None
    assert store.identify(INFERENCE_TOKEN) == Identity("ops", ADMIN)


def test_a_file_that_no_longer_parses_keeps_the_tokens_read_before(tokens_file: Path) -> None:
    clock = Clock()
    store = TokenStore(tokens_file, clock=clock)
    replace(tokens_file, f"ci admin {ADMIN_TOKEN}\nhalf-written\n")

    clock.now += 2
    assert store.identify(INFERENCE_TOKEN) == Identity("frontend", INFERENCE)
    replace(tokens_file, f"ci admin {ADMIN_TOKEN}\n")  # fixed: read again
    clock.now += 2
    assert store.identify(INFERENCE_TOKEN) is None


def test_a_file_that_is_gone_refuses_every_token(tokens_file: Path) -> None:
    clock = Clock()
    store = TokenStore(tokens_file, clock=clock)
    tokens_file.unlink()

    clock.now += 2
    assert store.identify(ADMIN_TOKEN) is None


def test_every_configured_token_is_compared_in_constant_time_whichever_matches(
    tokens_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TokenStore(tokens_file)
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for token in (ADMIN_TOKEN, INFERENCE_TOKEN, "an-unknown-token-of-any-length-at-all"):
        compared.clear()
        store.identify(token)
        assert compared == [(32, 32), (32, 32)]  # both tokens, digests of one length, no early exit


@pytest.mark.parametrize(
    ("value", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None)],
)
def test_the_bearer_scheme_is_read_from_the_authorization_value(value: str, token: str | None) -> None:
    assert bearer_token(value) == token


def test_the_readme_example_file_parses() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("**Tokens.**", 1)[1].split("```\n", 2)[1]

    tokens = parse_tokens(block, "README")

    assert [(t.identity.name, t.identity.scope) for t in tokens] == [("ci-deployer", ADMIN), ("frontend", INFERENCE)]
