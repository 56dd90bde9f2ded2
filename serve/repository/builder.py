"""Building one model version from its files: the ONNX file it names, its sessions, its completed
config, its labels and notes, warmed up. Runs in a thread; the repository decides what to build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from serve.cpus import resolve_workers
from serve.errors import ModelLoadError
from serve.protocol import model_config_pb2 as mc
from serve.repository import model_config as cfg
from serve.repository.digests import file_sha256
from serve.repository.labels import read_labels
from serve.repository.layout import ModelLayout
from serve.repository.mlflow import MlflowModel, check_signature, read_mlmodel, signature_outputs
from serve.repository.model_version import ModelVersion
from serve.repository.warmup import warm_up
from serve.runtime.model_file import PreparedModel, prepare_model
from serve.runtime.onnx_runner import OnnxRunner
from serve.runtime.probe import check_in_child
from serve.runtime.providers import CUDA
from serve.settings import ServerSettings


@dataclass(slots=True)
class BuiltVersion:
    runner: OnnxRunner
    config: mc.ModelConfig
    path: Path  # the ONNX file it was loaded from
    labels: dict[str, list[str]] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def build_version(
    entry: ModelVersion,
    layout: ModelLayout,
    raw: mc.ModelConfig,
    from_file: bool,
    settings: ServerSettings,
    *,
    load_in_child: bool,
) -> BuiltVersion:
    """Sessions and completed config of ``entry``'s version; ``load_in_child``: load the file once in a
    child process first (settings' model_load_check). Sets ``entry.onnx_sha256`` on the way."""
    version_dir = layout.version_dir(entry.version)
    mlmodel = read_mlmodel(version_dir)  # an MLflow model directory names its ONNX file
    path = (
        version_dir / mlmodel.model_file  # read_mlmodel checked it stays in the version directory
        if mlmodel
        else layout.model_file(entry.version, raw.default_model_filename)
    )
    if not path.is_file():
        raise ModelLoadError(f"{path.relative_to(layout.directory).as_posix()} not found")
    entry.onnx_sha256 = file_sha256(path)  # before the session: a file that fails to load is traced too
    options = cfg.runtime_options(
        raw,
        allow_spinning=settings.ort_allow_spinning,
        intra_op_threads=settings.ort_intra_op_threads,
        workers=resolve_workers(settings.workers),
    )
    prepared = prepare_model(path, version_dir, rewrite_zipmap=cfg.rewrites_zipmap(raw))
    if load_in_child:
        check_in_child(path.name, prepared.graph, prepared.external_data_dir)
    runner = OnnxRunner(
        path,
        options,
        graph=prepared.graph,
        external_data_dir=prepared.external_data_dir,
        unknown_rank=prepared.unknown_rank,
    )
    try:
        return _complete(entry, runner, path, raw, from_file, settings, mlmodel, prepared)
    except BaseException:
        runner.close()
        raise


def _complete(
    entry: ModelVersion,
    runner: OnnxRunner,
    path: Path,
    raw: mc.ModelConfig,
    from_file: bool,
    settings: ServerSettings,
    mlmodel: MlflowModel | None,
    prepared: PreparedModel,
) -> BuiltVersion:
    """The version around its open sessions: config completed from the graph, labels, notes, warm-up."""
    if mlmodel is not None:
        check_signature(mlmodel, runner.inputs, runner.outputs)
    config = cfg.complete_config(
        raw,
        name=entry.name,
        from_file=from_file,
        inputs=runner.inputs,
        outputs=runner.outputs,
        default_max_batch_size=settings.default_max_batch_size,
        cuda_available=CUDA in ort.get_available_providers(),
    )
    batching = config.max_batch_size > 0
    runner.reshape_scalars(
        cfg.scalars_as_one(config.input, runner.inputs, batching),
        cfg.scalars_as_one(config.output, runner.outputs, batching),
    )
    built = BuiltVersion(runner, config, path)
    if mlmodel is not None:
        _apply_mlflow(mlmodel, raw, config, built)
    for zipmap in prepared.zipmaps:
        built.labels[zipmap.output] = list(zipmap.labels)
        built.notes.append(
            f"ZipMap output '{zipmap.output}' is served as FP32 [-1, {zipmap.classes}] "
            f"(its input '{zipmap.source}'), with the ZipMap's class labels"
        )
    if prepared.zipmaps:
        built.parameters["zipmap_outputs"] = ",".join(z.output for z in prepared.zipmaps)
    built.labels.update(read_labels(config, entry.model_dir))
    warm_up(runner, config, entry.model_dir)
    return built


def _apply_mlflow(mlmodel: MlflowModel, raw: mc.ModelConfig, config: mc.ModelConfig, built: BuiltVersion) -> None:
    config.default_model_filename = mlmodel.model_file
    served = signature_outputs(mlmodel)
    if served is not None and not raw.output:  # config.pbtxt outputs, where given, win
        by_name = {o.name: o for o in config.output}
        kept = [mc.ModelOutput() for _ in served]
        for copy, name in zip(kept, served, strict=True):
            copy.CopyFrom(by_name[name])
        del config.output[:]
        config.output.extend(kept)
    built.parameters.update(mlmodel.lineage)
    run = mlmodel.lineage.get("mlflow_run_id", "unknown")
    built.notes.append(f"MLflow model from run {run}, {mlmodel.model_file}")
