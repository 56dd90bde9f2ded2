"""deploy/kserve: the runtimes and the example InferenceService build strictly into the KServe SDK's generated
models (unknown fields refused), and say what KServe needs to pick serve for ONNX models and reach it."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from serve.cli import build_parser
from tests.fixtures.manifests import DEPLOY, StrictModelError, build_strict, documents

KSERVE = DEPLOY / "kserve"
RUNTIMES = {name: documents(KSERVE / name)[0] for name in ("servingruntime.yaml", "clusterservingruntime.yaml")}
(ISVC,) = documents(KSERVE / "inferenceservice.yaml")


def _container(runtime: dict[str, Any]) -> dict[str, Any]:
    (container,) = runtime["spec"]["containers"]
    return dict(container)


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_runtime_builds_into_the_kserve_sdk_model_of_its_kind(name: str) -> None:
    runtime = RUNTIMES[name]
    model = build_strict(runtime, f"V1alpha1{runtime['kind']}")
    assert model.spec.containers[0].name == "kserve-container"


def test_inference_service_builds_into_the_kserve_sdk_model() -> None:
    model = build_strict(ISVC, "V1beta1InferenceService")
    assert model.spec.predictor.model.model_format.name == "onnx"


def test_strict_building_refuses_an_unknown_field() -> None:
    runtime = RUNTIMES["servingruntime.yaml"]
    typo = {**runtime, "spec": {**runtime["spec"], "protocolVersion": ["v2"]}}
    with pytest.raises(StrictModelError, match="protocolVersion"):
        build_strict(typo, "V1alpha1ServingRuntime")


def test_strict_building_refuses_a_field_unknown_to_the_kubernetes_container_type() -> None:
    runtime = RUNTIMES["servingruntime.yaml"]
    container = {**_container(runtime), "port": 8080}
    typo = {**runtime, "spec": {**runtime["spec"], "containers": [container]}}
    with pytest.raises(StrictModelError, match="V1Container has no field"):
        build_strict(typo, "V1alpha1ServingRuntime")


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


@pytest.mark.skipif("--model-name" not in _run_flags(), reason="serve run has no --model-name yet (issue 13)")
def test_runtime_args_are_valid_serve_run_flags() -> None:
    args = [a.replace("{{.Name}}", "tabular") for a in _container(RUNTIMES["servingruntime.yaml"])["args"]]
    parsed = build_parser().parse_args(args)
    assert (parsed.http_port, parsed.grpc_port, str(parsed.model_repository)) == (8080, 9000, "/mnt/models")
