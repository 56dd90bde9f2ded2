"""Optional dependency groups: serving installs without the drift tools' libraries, and the drift commands say
which extra to install when theirs is missing (simulated by hiding the module, as an install without it would)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from serve.cli import main
from serve.extras import EXTRAS
from tests.fixtures.monitoring import MODEL, write_model
from tests.fixtures.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict[str, object]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def _names(requirements: list[str]) -> set[str]:
    # distribution names as their modules are named (pygrpc-native installs pygrpc_native)
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("-", "_") for r in requirements}


def _modules(modules: tuple[str, ...]) -> set[str]:
    # opentelemetry-sdk installs opentelemetry.sdk: compared as opentelemetry_sdk on both sides
    return {module.replace(".", "_") for module in modules}


def test_serving_dependencies_leave_out_every_optional_group() -> None:
    core = _names(list(_project()["dependencies"]))  # type: ignore[call-overload]
    for modules in EXTRAS.values():
        assert core.isdisjoint(_modules(modules))


def test_extras_module_lists_what_pyproject_extras_install() -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    for extra, modules in EXTRAS.items():
        assert _names(extras[extra]) == _modules(modules)


def test_test_extra_installs_every_optional_group() -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    assert f"serve[{','.join(EXTRAS)}]" in extras["test"]


def test_serve_baseline_names_the_baseline_extra_when_pyarrow_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(tmp_path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code = main(["baseline", "--model-repository", str(tmp_path), "--model", MODEL, "--data", "train.csv"])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'serve[baseline]'" in err
    assert "pyarrow not installed" in err


def test_serve_baseline_check_runs_without_the_baseline_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(tmp_path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    code = main(["baseline", "--model-repository", str(tmp_path), "--model", MODEL, "--check"])
    assert code == 1  # "no baseline", not the missing extra
    assert "serve[baseline]" not in capsys.readouterr().err


def test_serve_monitor_names_the_monitor_extra_when_matplotlib_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["monitor", "--server", url, "--db", str(tmp_path / "m.db"), "--port", str(free_port())])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'serve[monitor]'" in err
    assert "matplotlib not installed" in err


def test_serve_monitor_once_runs_without_the_monitor_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is reported stale
    code = main(["monitor", "--server", url, "--db", str(tmp_path / "m.db"), "--once", "--timeout", "2s"])
    assert code == 4  # the server could not be read
    assert "STALE" in capsys.readouterr().out
