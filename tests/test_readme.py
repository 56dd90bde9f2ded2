"""README.md's code blocks, read from README.md and run as a reader would run them, so the two cannot drift apart.

Every ```python and ```bash block runs, against a real `serve run` of the demo repository on free loopback ports
(the README's `localhost:8000` and `localhost:8001` are replaced by them), in a directory of its own. Blocks in
other languages (json, plain text) are illustrations. An HTML comment on the line before a block (invisible on
GitHub) changes that:

- `<!-- no-test: REASON -->`: the block is not run (installs, containers, clusters); the reason is required.
- `<!-- test-needs: TOOL -->`: run only where TOOL is on PATH, otherwise skipped, naming TOOL.
- `<!-- test-server: ARGS -->`: run against `serve run ARGS` instead; ARGS may name files of the block directory.
- `<!-- test-file: NAME -->`: not run; the block's text is written to NAME in the block directory.

The block directory also holds throwaway TLS files: `ca.pem` (the server's CA), `server.pem`/`server.key` (for
localhost and 127.0.0.1), `client-ca.pem`, `client.pem`/`client.key`. curl runs with `--fail` from a `.curlrc`,
so an HTTP error fails the block.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serve.cli import build_parser
from tests.fixtures.local_servers import ThreadServer, start_in_thread
from tests.fixtures.tls import write_certificates

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = {"python", "bash"}
MARKERS = {"no-test", "test-needs", "test-server", "test-file"}
MARKER = re.compile(r"<!--\s*([a-z-]+):\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")
HEADING = re.compile(r"^#+\s+(.*)$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    section: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and "no-test" not in self.markers and "test-file" not in self.markers


def read_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, each with the markers in the comment lines right above it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section = "top"
    markers: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if heading := HEADING.match(line):
            section = heading.group(1)
        if marker := MARKER.fullmatch(line.strip()):
            markers[marker.group(1)] = marker.group(2)
        elif fence := FENCE.match(line):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1 : end]) + "\n", section, markers))
            markers = {}
            i = end
        elif line.strip():
            markers = {}  # a marker belongs to the block right below it, not to one further down
        i += 1
    return blocks


BLOCKS = read_blocks(README.read_text())


def block_id(block: Block) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", block.section.lower()).strip("-")
    same = [b for b in BLOCKS if b.section == block.section and b.language == block.language]
    return f"{slug}-{block.language}-{same.index(block) + 1}"


def test_readme_markers_are_known_and_every_skip_says_why() -> None:
    for block in BLOCKS:
        unknown = set(block.markers) - MARKERS
        assert not unknown, f"README.md line {block.line}: unknown marker(s) {sorted(unknown)}; known: {MARKERS}"
        if "no-test" in block.markers:
            assert block.markers["no-test"], f"README.md line {block.line}: no-test needs a reason"
    assert sum(b.runs for b in BLOCKS) >= 6, "the README's examples are no longer found: is the fence syntax new?"


def localise(code: str, server: ThreadServer) -> str:
    code = re.sub(r"\blocalhost:8000\b", f"localhost:{server.http_port}", code)
    return re.sub(r"\blocalhost:8001\b", f"localhost:{server.grpc_port}", code)


@pytest.fixture(scope="module")
def block_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("readme")
    certificates = write_certificates(directory)
    shutil.copy(certificates.server_ca, directory / "ca.pem")
    for block in BLOCKS:
        if name := block.markers.get("test-file"):
            (directory / name).write_text(block.text)
    home = directory / "home"
    home.mkdir()
    (home / ".curlrc").write_text("fail\n")
    return directory


@pytest.fixture(scope="module")
def server_for(
    demo_repository: Path, block_directory: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], ThreadServer]]:
    """One demo server per distinct `test-server` argument list, started on first need."""
    servers: dict[str, ThreadServer] = {}

    def get(arguments: str) -> ThreadServer:
        if arguments not in servers:
            args = [str(block_directory / a) if (block_directory / a).is_file() else a for a in shlex.split(arguments)]
            tls = None
            if "--tls-cert-file" in args:
                tls = ssl.create_default_context(cafile=str(block_directory / "ca.pem"))
                tls.load_cert_chain(block_directory / "client.pem", block_directory / "client.key")
            logs = tmp_path_factory.mktemp("readme-server")
            servers[arguments] = start_in_thread(demo_repository, logs, *args, tls=tls)
        return servers[arguments]

    try:
        yield get
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.runs], ids=block_id)
def test_readme_block_runs_as_written(
    block: Block, block_directory: Path, server_for: Callable[[str], ThreadServer]
) -> None:
    if (tool := block.markers.get("test-needs")) and shutil.which(tool) is None:
        pytest.skip(f"README.md line {block.line} needs {tool}, which is not installed")
    server = server_for(block.markers.get("test-server", ""))
    script = block_directory / f"{block_id(block)}.{'py' if block.language == 'python' else 'sh'}"
    script.write_text(localise(block.text, server))
    command = (
        [sys.executable, str(script)] if block.language == "python" else ["bash", "-e", "-o", "pipefail", str(script)]
    )
    # The environment `pip install` made: its `serve` command on PATH, as in an activated virtual environment.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "HOME": str(block_directory / "home"), "PATH": path}
    done = subprocess.run(command, cwd=block_directory, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.section}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    assert "Traceback" not in done.stderr, done.stderr[-4000:]


def test_readme_command_line_synopsis_names_every_serve_run_flag() -> None:
    # `--latency-buckets-s` was documented as missing while the flag existed (issue 17): the synopsis is checked.
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    text = README.read_text()
    start = text.index("serve run        [")
    synopsis = text[start : text.index("serve validate", start)]
    for action in commands.choices["run"]._actions:
        names = [f for f in action.option_strings if f.startswith("--") and f != "--help"]
        if not names:
            continue
        spelled = {*names, *(f"--[no-]{n[2:]}" for n in names if not n.startswith("--no-"))}
        found = [n for n in spelled if re.search(re.escape(n) + r"(?![\w-])", synopsis)]
        assert found, f"README's `serve run` synopsis lacks {names[0]}"
