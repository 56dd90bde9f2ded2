"""The supervisor's run directory: its control sockets and the shared metric files.

Made before anything imports prometheus_client: its multiprocess mode is chosen, once, from
``PROMETHEUS_MULTIPROC_DIR`` at import, so the supervisor must set it first (and its workers
inherit it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

METRICS_DIR_ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(run_dir: Path) -> Path:
    return run_dir / "metrics"


def prepare_run_dir() -> Path:
    """A fresh run directory, with this process's metrics written to files in it."""
    run_dir = Path(tempfile.mkdtemp(prefix="serve-run-"))
    metrics_dir(run_dir).mkdir()
    os.environ[METRICS_DIR_ENVIRONMENT] = str(metrics_dir(run_dir))
    return run_dir
