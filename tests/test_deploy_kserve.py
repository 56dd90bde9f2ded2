"""deploy/kserve: the runtimes and the example InferenceService build strictly into the KServe SDK's generated
models (unknown fields refused; in a child process, see tests/fixtures/kserve_models.py), and say what KServe
needs to pick serve for ONNX models and reach it."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from serve import settings
from serve.cli import build_parser
from tests.fixtures.kserve_models import check
from tests.fixtures.manifests import DEPLOY, documents

KSERVE = DEPLOY / "kserve"
RUNTIMES = {name: documents(KSERVE / name)[0] for name in ("servingruntime.yaml", "clusterservingruntime.yaml")}
(ISVC,) = documents(KSERVE / "inferenceservice.yaml")


def _container(runtime: dict[str, Any]) -> dict[str, Any]:
    (container,) = runtime["spec"]["containers"]
    return dict(container)


def _with_container(runtime: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**runtime, "spec": {**runtime["spec"], "containers": [{**_container(runtime), **fields}]}}


_RUNTIME = RUNTIMES["servingruntime.yaml"]
CASES: dict[str, tuple[dict[str, Any], str]] = {
    **{name: (doc, f"V1alpha1{doc['kind']}") for name, doc in RUNTIMES.items()},
    "inferenceservice.yaml": (ISVC, "V1beta1InferenceService"),
    "runtime with a misspelt field": (
        {**_RUNTIME, "spec": {**_RUNTIME["spec"], "protocolVersion": ["v2"]}},
        "V1alpha1ServingRuntime",
    ),
    "container with a misspelt field": (_with_container(_RUNTIME, port=8080), "V1alpha1ServingRuntime"),
    "container port as a string": (
        _with_container(_RUNTIME, ports=[{"name": "http1", "containerPort": "8080"}]),
        "V1alpha1ServingRuntime",
    ),
}


@pytest.fixture(scope="module")
def verdicts() -> dict[str, str | None]:
    return dict(zip(CASES, check(list(CASES.values())), strict=True))


@pytest.mark.parametrize("name", [*sorted(RUNTIMES), "inferenceservice.yaml"])
def test_manifest_builds_into_the_kserve_sdk_model_of_its_kind(name: str, verdicts: dict[str, str | None]) -> None:
    assert verdicts[name] is None


def test_strict_building_refuses_an_unknown_field(verdicts: dict[str, str | None]) -> None:
    verdict = str(verdicts["runtime with a misspelt field"])
    assert "V1alpha1ServingRuntimeSpec has no field(s) protocolVersion" in verdict


def test_strict_building_refuses_a_field_unknown_to_the_kubernetes_container_type(
    verdicts: dict[str, str | None],
) -> None:
    assert "V1Container has no field(s) port" in str(verdicts["container with a misspelt field"])


def test_strict_building_refuses_a_scalar_of_the_wrong_type(verdicts: dict[str, str | None]) -> None:
    assert "containerPort: expected int, got '8080'" in str(verdicts["container port as a string"])


def test_cluster_runtime_is_the_namespaced_runtime_cluster_wide() -> None:
    namespaced, cluster = RUNTIMES["servingruntime.yaml"], RUNTIMES["clusterservingruntime.yaml"]
    assert (namespaced["kind"], cluster["kind"]) == ("ServingRuntime", "ClusterServingRuntime")
    assert namespaced["spec"] == cluster["spec"]


def test_runtime_offers_onnx_for_automatic_selection_over_triton() -> None:
    spec = RUNTIMES["servingruntime.yaml"]["spec"]
    (onnx,) = spec["supportedModelFormats"]
    assert (onnx["name"], onnx["autoSelect"]) == ("onnx", True)
    assert onnx["priority"] > 1  # kserve-tritonserver lists onnx at priority 1
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]


def test_runtime_listens_on_kserve_ports_with_grpc_named_h2c() -> None:
    container = _container(RUNTIMES["servingruntime.yaml"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": 8080, "h2c": 9000}
    assert {"--http-port=8080", "--grpc-port=9000", "--host=0.0.0.0"} <= set(container["args"])


def test_runtime_serves_the_storage_initializers_directory_under_the_inference_service_name() -> None:
    args = _container(RUNTIMES["servingruntime.yaml"])["args"]
    assert args[0] == "run"
    assert "--model-repository=/mnt/models" in args
    assert "--model-name={{.Name}}" in args


def test_runtime_pods_carry_prometheus_scrape_annotations_for_the_http_port() -> None:
    annotations = RUNTIMES["servingruntime.yaml"]["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.kserve.io/path"] == annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/scrape"] == "true"


def test_inference_service_asks_for_an_onnx_model_over_v2_from_the_runtime() -> None:
    model = ISVC["spec"]["predictor"]["model"]
    runtime = RUNTIMES["servingruntime.yaml"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] == {"name": "onnx", "version": runtime["spec"]["supportedModelFormats"][0]["version"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["resources"]["requests"] == model["resources"]["limits"]  # whole CPUs for --workers=auto


def _run_flags() -> set[str]:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag for action in commands.choices["run"]._actions for flag in action.option_strings}


def test_runtime_args_are_valid_serve_run_flags() -> None:
    args = [a.replace("{{.Name}}", "tabular") for a in _container(RUNTIMES["servingruntime.yaml"])["args"]]
    s = settings.from_arguments(build_parser().parse_args(args), {})
    assert (s.http_port, s.grpc_port, str(s.model_repository), s.model_name) == (8080, 9000, "/mnt/models", "tabular")


def test_kustomization_applies_the_namespaced_runtime_and_the_example_with_the_runtimes_image_as_a_field() -> None:
    (kustomization,) = documents(KSERVE / "kustomization.yaml")
    assert kustomization["resources"] == ["servingruntime.yaml", "inferenceservice.yaml"]
    image_names = {image["name"] for image in kustomization["images"]}
    assert _container(RUNTIMES["servingruntime.yaml"])["image"].split(":")[0] in image_names


def test_standard_deployment_mode_says_which_kserve_it_needs() -> None:
    # KServe < 0.16 refuses "Standard" (it calls the mode RawDeployment): the example must say so beside it.
    assert ISVC["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    text = (KSERVE / "inferenceservice.yaml").read_text()
    assert "KServe >= 0.16" in text and "RawDeployment" in text


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_sets_the_runtime_image_from_the_images_field() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(KSERVE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (runtime,) = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "ServingRuntime"]
    (kustomization,) = documents(KSERVE / "kustomization.yaml")
    (image,) = kustomization["images"]
    assert _container(runtime)["image"] == f"{image['name']}:{image['newTag']}"
