"""deploy/kubernetes: every manifest validates against Kubernetes' published schemas (strict: unknown fields
refused) or, for prometheus-operator's PodMonitor, its generated types; and the pieces refer to each other
correctly (selectors, named ports, claims, the monitor's discovery name, the server's flags)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from serve import settings
from serve.cli import build_parser
from tests.fixtures.manifests import DEPLOY, documents, manifests, prometheus_operator_problems

KUBE = DEPLOY / "kubernetes"
# grpc probes are GA since 1.27; the latest is whatever kubernetes-validate knows
KUBERNETES_VERSIONS = ["1.27", kubernetes_validate.latest_version()]
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor"}
RESOURCES = list(manifests(KUBE))


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    return f"{item[0].name}:{item[1]['kind']}/{item[1]['metadata']['name']}"


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in RESOURCES if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod(deployment: str) -> dict[str, Any]:
    return dict(_one("Deployment", deployment)["spec"]["template"])


def _container_ports(pod: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}


def _selects(selector: dict[str, str], pod: dict[str, Any]) -> bool:
    return bool(selector.items() <= pod["metadata"]["labels"].items())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", [r for r in RESOURCES if r[1]["kind"] not in OPERATOR_KINDS], ids=_id)
def test_builtin_kinds_validate_strictly_against_the_kubernetes_schema(
    item: tuple[Path, dict[str, Any]], version: str
) -> None:
    kubernetes_validate.validate(item[1], version, strict=True)


@pytest.mark.parametrize("item", [r for r in RESOURCES if r[1]["kind"] in OPERATOR_KINDS], ids=_id)
def test_prometheus_operator_kinds_round_trip_through_their_published_types(item: tuple[Path, dict[str, Any]]) -> None:
    assert prometheus_operator_problems(item[1]) == []


def test_strict_validation_refuses_an_unknown_field() -> None:
    service = {**_one("Service", "serve"), "spec": {**_one("Service", "serve")["spec"], "sessionAfinity": "None"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


def test_podmonitor_check_refuses_an_unknown_field() -> None:
    monitor = _one("PodMonitor", "serve")
    endpoint = {**monitor["spec"]["podMetricsEndpoints"][0], "scrapeIntervall": "15s"}
    typo = {**monitor, "spec": {**monitor["spec"], "podMetricsEndpoints": [endpoint]}}
    assert prometheus_operator_problems(typo) == [".spec.podMetricsEndpoints[0].scrapeIntervall: unknown field"]


def test_kustomization_lists_every_manifest_in_the_directory() -> None:
    (kustomization,) = documents(KUBE / "kustomization.yaml")
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_services_podmonitors_and_policies_select_the_pods_they_name_ports_of() -> None:
    pods = [_pod("serve"), _pod("serve-monitor")]
    for _, doc in RESOURCES:
        if doc["kind"] == "Service":
            selector, ports = doc["spec"]["selector"], [p["targetPort"] for p in doc["spec"]["ports"]]
        elif doc["kind"] == "PodMonitor":
            selector, ports = (
                doc["spec"]["selector"]["matchLabels"],
                [e["port"] for e in doc["spec"]["podMetricsEndpoints"]],
            )
        elif doc["kind"] == "NetworkPolicy":
            selector, ports = (
                doc["spec"]["podSelector"]["matchLabels"],
                [p["port"] for rule in doc["spec"]["ingress"] for p in rule["ports"]],
            )
        else:
            continue
        (pod,) = [p for p in pods if _selects(selector, p)]
        assert set(ports) <= set(_container_ports(pod)), doc["metadata"]["name"]


def test_hpa_and_disruption_budget_govern_the_server_deployment() -> None:
    hpa = _one("HorizontalPodAutoscaler", "serve")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serve"}
    assert hpa["minReplicas"] >= 2
    assert _selects(_one("PodDisruptionBudget", "serve")["spec"]["selector"]["matchLabels"], _pod("serve"))


def test_every_claimed_volume_has_its_claim() -> None:
    claims = {d["metadata"]["name"] for _, d in RESOURCES if d["kind"] == "PersistentVolumeClaim"}
    for name in ("serve", "serve-monitor"):
        volumes = _pod(name)["spec"]["volumes"]
        used = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
        assert used and used <= claims


def test_server_probes_use_the_http_health_endpoints_and_the_grpc_health_service() -> None:
    (container,) = _pod("serve")["spec"]["containers"]
    ports = _container_ports(_pod("serve"))
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]


def test_server_resources_are_whole_cpus_with_requests_equal_to_limits_for_workers_auto() -> None:
    (container,) = _pod("serve")["spec"]["containers"]
    assert "--workers=auto" in container["args"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert float(resources["limits"]["cpu"]).is_integer()


def test_monitor_discovers_the_replicas_through_the_headless_service() -> None:
    headless = _one("Service", "serve-replicas")["spec"]
    assert headless["clusterIP"] == "None"
    assert _selects(headless["selector"], _pod("serve"))
    (container,) = _pod("serve-monitor")["spec"]["containers"]
    port = next(p["port"] for p in headless["ports"] if p["name"] == "http")
    assert f"--server=http://serve-replicas:{port}" in container["args"]


def _run_flags() -> set[str]:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag for action in commands.choices["run"]._actions for flag in action.option_strings}


def test_server_container_args_are_valid_serve_run_flags() -> None:
    (container,) = _pod("serve")["spec"]["containers"]
    parsed = build_parser().parse_args(container["args"])
    s = settings.from_arguments(parsed, {})
    assert (parsed.command, s.http_port, s.grpc_port, s.metrics_port, s.workers) == ("run", 8000, 8001, 8002, "auto")


def test_documents_are_plain_yaml_without_duplicate_keys() -> None:
    # PyYAML keeps the last of two equal keys; kubectl refuses the document.
    class Strict(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = [loader.construct_object(k) for k, _ in node.value]
        assert len(keys) == len(set(keys)), f"duplicate key in {node.start_mark}"
        return dict(loader.construct_mapping(node))

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    for path in [
        *KUBE.glob("*.yaml"),
        *(DEPLOY / "kubernetes-tls").glob("*.yaml"),
        *(DEPLOY / "kserve").glob("*.yaml"),
        *(DEPLOY / "prometheus").glob("*.yaml"),
    ]:
        list(yaml.load_all(path.read_text(), Loader=Strict))


def test_every_container_image_is_set_by_the_kustomizations_images_field() -> None:
    # The manifests name bare images; the tag (and a registry, with newName) come from one place.
    (kustomization,) = documents(KUBE / "kustomization.yaml")
    fields = {image["name"]: image for image in kustomization["images"]}
    for name in ("serve", "serve-monitor"):
        for container in _pod(name)["spec"]["containers"]:
            assert ":" not in container["image"], container["image"]
            assert "newTag" in fields[container["image"]], container["image"]
