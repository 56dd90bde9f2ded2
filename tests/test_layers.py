"""The package's shape: the import-layer contracts hold, and the monitor stays a light process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_layer_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_monitor_loads_neither_onnxruntime_nor_the_serving_path() -> None:
    probe = (
        "import sys, pkgutil, importlib, serve.monitor\n"
        "for m in pkgutil.walk_packages(serve.monitor.__path__, 'serve.monitor.'):\n"
        "    importlib.import_module(m.name)\n"
        "loaded = [m for m in ('onnxruntime', 'serve.batching', 'serve.core', 'serve.runtime', 'serve.http',\n"
        "                      'serve.grpc', 'serve.server') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_nothing_in_the_server_unpickles_or_loads_a_model_from_a_url() -> None:
    # Models are ONNX (protobuf) and configs text, YAML (safe_load) or JSON: nothing runs code on load.
    package = ROOT / "serve"
    forbidden = ("import pickle", "import cloudpickle", "import joblib", "allow_pickle=True", "yaml.load(", "urlopen(")
    found = [
        f"{path.relative_to(package)}: {word}"
        for path in package.rglob("*.py")
        if "monitor" not in path.parts  # the monitor polls replicas over HTTP; it loads no model
        and path.name != "rollout_cli.py"  # `serve rollout` is a client of a running server's admin API
        for word in forbidden
        if word in path.read_text()
    ]
    assert found == []
