"""How `--model-repository DIR` is read with `--model-name NAME` (serve/repository/layout.py): a bare model
directory, one model's Triton directory, or a Triton repository of which only NAME is served."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from serve.errors import ModelNotFound
from serve.repository.layout import repository_mistake
from serve.repository.repository import READY, ModelRepository
from serve.settings import ServerSettings
from tests.fixtures.inprocess import in_process
from tests.fixtures.monitoring import MODEL
from tests.fixtures.replicas import write_model_with_baseline
from tests.fixtures.repositories import write_bare_model, write_triton_model

Opened = Callable[[Path, str | None], ModelRepository]


@pytest.fixture
async def opened() -> AsyncIterator[Opened]:
    repositories: list[ModelRepository] = []

    def open_repository(root: Path, name: str | None) -> ModelRepository:
        repositories.append(ModelRepository(root, ServerSettings(model_name=name)))
        return repositories[-1]

    yield open_repository
    for repository in repositories:
        await repository.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path.resolve()  # the repository resolves its root; compare like with like


def _states(repository: ModelRepository) -> list[tuple[str, str, str]]:
    return [(r["name"], r["version"], r["state"]) for r in repository.index()]


async def test_a_bare_model_directory_is_version_1_of_the_named_model(root: Path, opened: Opened) -> None:
    path = write_bare_model(root)
    repository = opened(root, "fraud")
    await repository.load_all()
    assert _states(repository) == [("fraud", "1", READY)]
    assert repository.get("fraud").model_path == path
    assert repository.model_dir("fraud") == root


async def test_a_bare_directory_reads_its_config_and_the_file_it_names(root: Path, opened: Opened) -> None:
    write_bare_model(root)
    (root / "model.onnx").rename(root / "doubler.onnx")
    (root / "config.pbtxt").write_text('max_batch_size: 4\ndefault_model_filename: "doubler.onnx"\n')
    repository = opened(root, "fraud")
    await repository.load_all()
    model = repository.get("fraud", "1")
    assert model.max_batch_size == 4
    assert model.model_path == root / "doubler.onnx"


async def test_the_only_onnx_file_of_a_bare_directory_is_the_model(root: Path, opened: Opened) -> None:
    write_bare_model(root).rename(root / "exported.onnx")
    repository = opened(root, "fraud")
    await repository.load_all()
    assert repository.get("fraud", "1").model_path == root / "exported.onnx"


async def test_one_triton_model_directory_is_served_with_its_versions(root: Path, opened: Opened) -> None:
    write_triton_model(root, "mlp", "{ all: {} }")
    repository = opened(root / "mlp", "scorer")
    await repository.load_all()
    assert _states(repository) == [("scorer", "1", READY), ("scorer", "2", READY)]


async def test_a_triton_repository_with_a_model_name_serves_just_that_model(root: Path, opened: Opened) -> None:
    write_triton_model(root, "mlp")
    write_triton_model(root, "other")
    repository = opened(root, "mlp")
    await repository.load_all()
    assert [name for name, _, _ in _states(repository)] == ["mlp"]
    with pytest.raises(ModelNotFound, match="serves only 'mlp'"):
        await repository.load_model("other")


async def test_a_model_name_missing_from_a_triton_repository_fails_the_load(root: Path, opened: Opened) -> None:
    write_triton_model(root, "mlp")
    repository = opened(root, "fraud")
    with pytest.raises(ModelNotFound, match="'fraud' is not in the model repository: .* it holds mlp$"):
        await repository.load_all()


async def test_a_model_file_name_that_leaves_the_directory_is_refused(root: Path, opened: Opened) -> None:
    inner = root / "models"
    write_bare_model(root)  # ../model.onnx seen from models/
    write_bare_model(inner / "1")
    (inner / "config.pbtxt").write_text('default_model_filename: "../../model.onnx"\n')
    repository = opened(inner, "fraud")
    await repository.load_all()
    (row,) = repository.index()
    assert row["state"] != READY
    assert "leaves the model directory" in row["reason"]


async def test_without_a_model_name_the_root_is_a_triton_repository(root: Path, opened: Opened) -> None:
    write_bare_model(root)  # a stray model.onnx at the top is not a model
    write_triton_model(root, "mlp")
    repository = opened(root, None)
    await repository.load_all()
    assert [name for name, _, _ in _states(repository)] == ["mlp"]


async def test_a_bare_directorys_baseline_is_the_models_baseline(root: Path) -> None:
    triton = root / "triton"
    model_dir = write_model_with_baseline(triton)  # churn, version 1, baseline.json beside config
    bare = root / "mnt-models"
    bare.mkdir()
    shutil.copy(model_dir / "1" / "model.onnx", bare / "model.onnx")
    shutil.copy(model_dir / "baseline.json", bare / "baseline.json")
    async with in_process(bare, model_name=MODEL) as server:
        served = server.stats.baseline(server.service.repository.get(MODEL))
    assert served.data == (bare / "baseline.json").read_bytes()


# -- layout mistakes, and what to do about them ------------------------------------------------


async def test_a_model_file_outside_a_version_directory_fails_saying_where_to_put_it(
    root: Path, opened: Opened
) -> None:
    write_bare_model(root / "m")
    repository = opened(root, None)
    await repository.load_all()
    (row,) = repository.index()
    assert row["state"] != READY
    assert row["reason"] == "m/model.onnx is not in a version directory: put it at m/1/model.onnx"


async def test_a_model_directory_with_nothing_in_it_fails_naming_the_layout(root: Path, opened: Opened) -> None:
    (root / "m").mkdir()
    (root / "m" / "config.pbtxt").write_text("max_batch_size: 4\n")
    repository = opened(root, None)
    await repository.load_all()
    (row,) = repository.index()
    assert "no version directory: put the model file at m/1/model.onnx" in row["reason"]


def test_a_model_directory_given_as_the_repository_is_told_to_point_at_its_parent(root: Path) -> None:
    write_triton_model(root, "mlp")
    mistake = repository_mistake(root / "mlp")
    assert mistake is not None
    assert f"point --model-repository at its parent, {root}," in mistake
    assert "it holds 1/model.onnx" in mistake


def test_a_directory_holding_only_a_config_is_a_model_directory_too(root: Path) -> None:
    (root / "config.pbtxt").write_text("max_batch_size: 4\n")
    mistake = repository_mistake(root)
    assert mistake is not None and "point --model-repository at its parent" in mistake


def test_a_model_file_given_as_the_repository_is_told_where_to_put_it(root: Path) -> None:
    write_bare_model(root)
    mistake = repository_mistake(root)
    assert mistake is not None
    assert "put it at <model>/1/model.onnx" in mistake and "--model-name" in mistake


def test_a_repository_with_a_stray_file_beside_its_models_is_no_mistake(root: Path) -> None:
    write_bare_model(root)
    (root / "config.pbtxt").write_text("")
    write_triton_model(root, "mlp")
    assert repository_mistake(root) is None
