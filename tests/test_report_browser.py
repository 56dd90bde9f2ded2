"""The HTML report in a real headless browser (Debian's chromium): it renders, with the plots.

The screenshot is kept under the test's tmp dir and copied to results/monitor-report.png as an artifact.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from serve.monitor.app import create_monitor_app
from tests.fixtures.monitoring import AppServer, monitor_with_history

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_with_plots_in_headless_chromium(tmp_path: Path) -> None:
    monitor, replica = asyncio.run(monitor_with_history(tmp_path / "repo"))
    replica.close()
    server = AppServer(create_monitor_app(monitor))
    try:
        with urllib.request.urlopen(server.url + "/", timeout=60) as response:
            page = response.read().decode()
        shot = tmp_path / "monitor-report.png"
        assert CHROMIUM is not None
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={shot}", "--window-size=1400,1800",
             "--hide-scrollbars", server.url + "/"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.close()
        monitor.close()
    assert shot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    RESULTS.mkdir(exist_ok=True)
    shutil.copy(shot, RESULTS / "monitor-report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000  # a blank 1400×1800 page compresses to a few KB
    assert page.count('<img src="data:image/png;base64,') >= 8
