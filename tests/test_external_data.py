"""External-data locations are checked before onnxruntime opens anything."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from serve.errors import ModelLoadError
from serve.runtime.external_data import check_external_data
from tests.fixtures.model_formats import external_data_model


def load(version_dir: Path) -> onnx.ModelProto:
    return onnx.load(str(version_dir / "model.onnx"), load_external_data=False)


def test_model_with_external_data_inside_its_directory_passes(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    external_data_model(version_dir, "data/weights.bin")

    assert check_external_data(load(version_dir), version_dir, version_dir) is True


def test_model_without_external_data_says_so(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    external_data_model(version_dir)
    model = onnx.load(str(version_dir / "model.onnx"))  # external data read in: now embedded
    for initializer in model.graph.initializer:
        initializer.data_location = onnx.TensorProto.DEFAULT
        del initializer.external_data[:]

    assert check_external_data(model, version_dir, version_dir) is False


@pytest.mark.parametrize("location", ["../outside.bin", "../../m/outside.bin"])
def test_location_escaping_the_version_directory_is_refused_as_written(tmp_path: Path, location: str) -> None:
    version_dir = tmp_path / "m" / "1"
    external_data_model(version_dir, location)

    with pytest.raises(ModelLoadError) as raised:
        check_external_data(load(version_dir), version_dir, version_dir)

    assert f"tensor 'W': external data location '{location}' is outside the model version directory" in str(
        raised.value
    )
    assert str(tmp_path) not in str(raised.value)


def test_absolute_location_is_refused(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    external_data_model(version_dir, str(tmp_path / "elsewhere.bin"))

    with pytest.raises(ModelLoadError, match="outside the model version directory"):
        check_external_data(load(version_dir), version_dir, version_dir)


def test_symlink_leading_out_of_the_version_directory_is_refused(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    external_data_model(version_dir, "../real.bin")
    (version_dir / "link.bin").symlink_to(tmp_path / "m" / "real.bin")
    model = load(version_dir)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "link.bin"

    with pytest.raises(ModelLoadError) as raised:
        check_external_data(model, version_dir, version_dir)

    assert "'link.bin' is outside the model version directory" in str(raised.value)
    assert "real.bin" not in str(raised.value)


def test_missing_external_data_file_is_named(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    external_data_model(version_dir)
    (version_dir / "weights.bin").unlink()

    with pytest.raises(ModelLoadError, match="tensor 'W': external data file 'weights.bin' not found"):
        check_external_data(load(version_dir), version_dir, version_dir)
