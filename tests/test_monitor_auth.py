"""The drift monitor polls servers that require a token: --token-file sends it, scope inference suffices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve.cli import main
from serve.demo import write_demo_repository
from tests.fixtures.local_servers import serving_in_thread

TOKEN = "monitor-token-0123456789abcdef"


def test_the_monitor_reads_a_server_with_token_auth_using_an_inference_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_demo_repository(tmp_path / "models")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"drift-monitor inference {TOKEN}\n")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with serving_in_thread(tmp_path / "models", tmp_path, "--auth-tokens-file", str(tokens)) as server:
        args = ["monitor", "--server", server.base, "--once", "--format", "json", "--db", str(tmp_path / "m.db")]
        without = main(args)
        refused = json.loads(capsys.readouterr().out)
        code = main([*args, "--token-file", str(token_file)])
        answered = json.loads(capsys.readouterr().out)
    assert without == 4 and not refused["servers"][0]["up"]  # 4: a server could not be read
    assert "401" in str(refused["servers"][0]["last_error"])
    assert code == 3 and answered["servers"][0]["up"]  # 3: the demo models have no baseline
    assert {m["model"] for m in answered["models"]} >= {"tabular"}
