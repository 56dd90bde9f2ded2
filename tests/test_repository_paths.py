"""No file outside the model repository is opened for a model (serve/paths.py).

Every entry the server opens for a model — version directories, the model file, config.pbtxt,
label and warm-up files, MLmodel and its ONNX file, external data, baseline.json, files uploaded
with a load request — is resolved, symlinks included, and must stay in that model's directory;
otherwise that model fails to load with a reason naming the entry as written, never the path it
resolves to. An audit hook shows that loading such a repository opens nothing outside it.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from serve.input_stats.wiring import InputStatistics
from serve.protocol import grpc_service_pb2 as pb
from serve.repository.repository import READY, ModelRepository
from serve.settings import ServerSettings
from tests.fixtures.escapes import GOOD, Escapes, write_escapes
from tests.fixtures.file_audit import recording_opens
from tests.fixtures.inprocess import InProcess, in_process
from tests.fixtures.repositories import write_bare_model

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def escapes(tmp_path_factory: pytest.TempPathFactory) -> Escapes:
    return write_escapes(tmp_path_factory.mktemp("escapes"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def loaded(escapes: Escapes) -> AsyncIterator[tuple[ModelRepository, list[str]]]:
    """The escapes repository loaded once (with the statistics listener, which reads baseline.json),
    and every path opened or listed while it loaded."""
    settings = ServerSettings()
    repository = ModelRepository(escapes.root, settings, listeners=[InputStatistics(settings)])
    with recording_opens() as opened:
        await repository.load_all()
    try:
        yield repository, opened
    finally:
        await repository.close()


def _reasons(repository: ModelRepository, name: str) -> list[str]:
    return [row["reason"] for row in repository.index() if row["name"] == name and row["state"] != READY]


@pytest.mark.parametrize(
    "model",
    [
        "version_link",
        "file_link",
        "filename_traversal",
        "filename_link",
        "config_link",
        "labels_traversal",
        "labels_link",
        "warmup_traversal",
        "warmup_link",
        "mlflow_traversal",
        "mlflow_link",
        "baseline_link",
        "external_link",
        "model_dir_link",
    ],
)
async def test_an_entry_leading_outside_is_that_models_load_error_naming_it(
    loaded: tuple[ModelRepository, list[str]], escapes: Escapes, model: str
) -> None:
    repository, _ = loaded
    reasons = _reasons(repository, model)
    assert any(escapes.reasons[model] in reason for reason in reasons), reasons


async def test_no_load_error_names_a_path_outside_the_repository(
    loaded: tuple[ModelRepository, list[str]], escapes: Escapes
) -> None:
    repository, _ = loaded
    reasons = [row["reason"] for row in repository.index()]
    # Entries as written only: no absolute path of this machine, inside the repository or not.
    assert reasons and not [r for r in reasons if str(escapes.outside.parent) in r]


async def test_a_model_beside_the_escapes_still_loads(loaded: tuple[ModelRepository, list[str]]) -> None:
    repository, _ = loaded
    assert [v.state for v in repository.ready_versions(GOOD)] == [READY]
    assert repository.loaded() == repository.ready_versions(GOOD)  # and no escape loaded


def _inside(path: str, directory: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(directory)


async def test_loading_opens_no_file_outside_the_repository(
    loaded: tuple[ModelRepository, list[str]], escapes: Escapes
) -> None:
    _, opened = loaded
    assert any(_inside(path, escapes.root / GOOD) for path in opened)  # the hook saw the loading
    assert [path for path in opened if _inside(path, escapes.outside)] == []


def _linked_inside(base: Path) -> Path:
    root = base.resolve() / "repository"
    write_bare_model(root / "shared" / "files")  # shared/files/model.onnx
    (root / "shared" / "1").mkdir()
    (root / "shared" / "1" / "model.onnx").symlink_to(root / "shared" / "files" / "model.onnx")
    (root / "shared" / "2").symlink_to(root / "shared" / "1", target_is_directory=True)
    (root / "alias").symlink_to(root / "shared", target_is_directory=True)  # a model linked in the repository
    (root / "shared" / "config.pbtxt").write_text("version_policy: { all: {} }\n")
    return root


async def test_symlinks_that_stay_inside_the_model_directory_are_followed(tmp_path: Path) -> None:
    root = _linked_inside(tmp_path)
    repository = ModelRepository(root, ServerSettings())
    try:
        await repository.load_all()
        assert [(r["name"], r["version"], r["state"]) for r in repository.index()] == [
            ("alias", "1", READY),
            ("alias", "2", READY),
            ("shared", "1", READY),
            ("shared", "2", READY),
        ]
    finally:
        await repository.close()


# ---- the load API: a config or file names sent by a client -----------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def explicit(escapes: Escapes) -> AsyncIterator[InProcess]:
    async with in_process(escapes.root, model_control_mode="explicit", load_models=[GOOD]) as running:
        yield running


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ('{"default_model_filename": "../../../outside/model.onnx"}', "leaves the model directory"),
        ('{"default_model_filename": "other.onnx"}', "default_model_filename '1/other.onnx' is outside"),
        ('{"default_model_filename": "/etc/hostname"}', "leaves the model directory"),
    ],
    ids=["traversal", "symlink", "absolute"],
)
async def test_a_load_requests_config_cannot_name_a_file_outside(
    explicit: InProcess, escapes: Escapes, config: str, fragment: str
) -> None:
    response = await explicit.http.post(
        "/v2/repository/models/filename_link/load", json={"parameters": {"config": config}}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error and str(escapes.outside) not in error
    assert explicit.service.repository.ready_versions("filename_link") == []


TRAVERSALS = ["../../escaped.onnx", "1/../../escaped.onnx", "/tmp/escaped.onnx", "", ".", "a\x00b", "x" * 300]


def _escaped() -> bool:
    return (Path(tempfile.gettempdir()) / "escaped.onnx").exists() or Path("/escaped.onnx").exists()


def _upload(name: str) -> dict[str, str]:
    return {
        "config": '{"max_batch_size": 4}',
        f"file:{name}": base64.b64encode(b"not read").decode(),
    }


@pytest.mark.parametrize("name", TRAVERSALS)
async def test_an_uploaded_file_cannot_be_written_outside_its_directory_over_http(
    explicit: InProcess, name: str
) -> None:
    response = await explicit.http.post("/v2/repository/models/uploaded/load", json={"parameters": _upload(name)})
    assert response.status_code == 400
    error = response.json()["error"]
    assert f"file:{name}" in error or "not a valid file name" in error
    assert not _escaped()


@pytest.mark.parametrize("name", TRAVERSALS)
async def test_an_uploaded_file_cannot_be_written_outside_its_directory_over_grpc(
    explicit: InProcess, name: str
) -> None:
    request = pb.RepositoryModelLoadRequest(model_name="uploaded")
    request.parameters["config"].string_param = '{"max_batch_size": 4}'
    request.parameters[f"file:{name}"].bytes_param = b"not read"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await explicit.grpc.RepositoryModelLoad(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not _escaped()


async def test_uploaded_files_that_cannot_all_be_written_are_400(explicit: InProcess) -> None:
    parameters = {"config": '{"max_batch_size": 4}', "file:a": "AA==", "file:a/b": "AA=="}  # a is a file, not a dir
    response = await explicit.http.post("/v2/repository/models/uploaded/load", json={"parameters": parameters})
    assert response.status_code == 400
    assert "file parameter 'file:a/b' cannot be written" in response.json()["error"]


async def test_uploaded_files_load_from_a_private_directory_that_unload_removes(
    explicit: InProcess, tmp_path: Path
) -> None:
    model = write_bare_model(tmp_path / "upload")
    parameters = {"config": '{"max_batch_size": 4}', "file:1/model.onnx": base64.b64encode(model.read_bytes()).decode()}
    response = await explicit.http.post("/v2/repository/models/uploaded/load", json={"parameters": parameters})
    assert response.status_code == 200, response.text
    (version,) = explicit.service.repository.ready_versions("uploaded")
    directory = version.model_dir
    assert directory.is_dir() and oct(directory.stat().st_mode & 0o777) == "0o700"
    response = await explicit.http.post("/v2/repository/models/uploaded/unload")
    assert response.status_code == 200
    assert not directory.exists()


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden", "", "x" * 129, "name with space", "ü"])
async def test_a_model_name_outside_the_character_set_is_refused(explicit: InProcess, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await explicit.grpc.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name))
    assert raised.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert "not a valid model name" in (raised.value.details() or "")
