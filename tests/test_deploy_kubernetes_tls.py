"""deploy/kubernetes-tls: the base with TLS on the HTTP and gRPC ports. The overlay's JSON patches are applied here
as kustomize applies them (kustomize need not be installed) and the result is checked like the base: strict schema
validation, valid `serve run` flags, and probes a kubelet can run against a TLS server (HTTPS, never gRPC)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from serve import settings
from serve.cli import build_parser
from tests.fixtures.manifests import DEPLOY, documents, manifests

BASE = DEPLOY / "kubernetes"
OVERLAY = DEPLOY / "kubernetes-tls"
KUBERNETES_VERSIONS = ["1.27", kubernetes_validate.latest_version()]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / replace / remove / test, as kustomize's patches apply them."""
    doc = copy.deepcopy(document)
    for op in operations:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "test":
            assert (node[int(last)] if isinstance(node, list) else node[last]) == op["value"], op
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert (int(last) < len(node)) if isinstance(node, list) else last in node, op
            node[int(last) if isinstance(node, list) else last] = op["value"]
        else:
            raise AssertionError(f"unsupported patch operation {op}")
    return doc


def render_overlay() -> list[dict[str, Any]]:
    (kustomization,) = documents(OVERLAY / "kustomization.yaml")
    assert kustomization["resources"] == ["../kubernetes"]
    resources = [doc for _, doc in manifests(BASE)]
    for patch in kustomization["patches"]:
        target = patch["target"]
        operations = yaml.safe_load((OVERLAY / patch["path"]).read_text())
        matches = [
            i for i, d in enumerate(resources) if (d["kind"], d["metadata"]["name"]) == (target["kind"], target["name"])
        ]
        assert len(matches) == 1, f"{patch['path']} targets {target}, found {len(matches)}"
        resources[matches[0]] = apply_json_patch(resources[matches[0]], operations)
    return resources


RESOURCES = render_overlay()


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in RESOURCES if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(deployment: str) -> dict[str, Any]:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _mounted_secret_paths(deployment: str) -> dict[str, str]:
    """mount path → Secret name, for the container's volumes that come from a Secret."""
    pod = _one("Deployment", deployment)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in _container(deployment)["volumeMounts"] if m["name"] in secrets}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "name", [("Deployment", "serve"), ("Service", "serve"), ("Deployment", "serve-monitor")], ids=lambda n: "/".join(n)
)
def test_patched_manifests_validate_strictly_against_the_kubernetes_schema(name: tuple[str, str], version: str) -> None:
    kubernetes_validate.validate(_one(*name), version, strict=True)


def test_server_serves_tls_with_the_certificate_from_the_mounted_secret(tmp_path: Path) -> None:
    container = _container("serve")
    mounts = _mounted_secret_paths("serve")
    (mount,) = [m for m, secret in mounts.items() if secret == "serve-tls"]
    for key in ("tls.crt", "tls.key"):  # the Secret's keys, as the kubelet writes them into the mount
        (tmp_path / key).write_text("PEM")
    args = [a.replace(mount, str(tmp_path)) for a in container["args"]]
    s = settings.from_arguments(build_parser().parse_args(args), {})
    assert (s.tls_cert_file, s.tls_key_file) == (tmp_path / "tls.crt", tmp_path / "tls.key")
    assert (s.http_port, s.grpc_port, s.workers) == (8000, 8001, "auto")


def test_every_server_probe_asks_the_http_health_endpoints_over_https_and_none_uses_grpc() -> None:
    container = _container("serve")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for probe in PROBES:
        spec = container[probe]
        assert "grpc" not in spec, f"{probe}: the kubelet's gRPC probe cannot speak TLS"
        assert spec["httpGet"]["scheme"] == "HTTPS", probe
        assert ports[spec["httpGet"]["port"]] == 8000, probe
        paths[probe] = spec["httpGet"]["path"]
    # startup waits for every model, as the gRPC health service did in the base
    assert paths == {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                     "livenessProbe": "/v2/health/live"}  # fmt: skip


def test_grpc_port_no_longer_claims_cleartext_h2c() -> None:
    ports = {p["name"]: p for p in _one("Service", "serve")["spec"]["ports"]}
    assert "appProtocol" not in ports["grpc"]
    assert ports["grpc"]["port"] == 8001


def test_monitor_polls_the_replicas_over_https_trusting_the_secrets_ca() -> None:
    container = _container("serve-monitor")
    assert "--server=https://serve-replicas:8000" in container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert _mounted_secret_paths("serve-monitor").get(str(Path(env["SSL_CERT_FILE"]).parent)) == "serve-tls"


def test_the_rest_of_the_base_is_unchanged() -> None:
    base = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests(BASE)}
    patched = {("Deployment", "serve"), ("Service", "serve"), ("Deployment", "serve-monitor")}
    for doc in RESOURCES:
        key = (doc["kind"], doc["metadata"]["name"])
        assert (doc == base[key]) != (key in patched), key


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_renders_what_these_tests_check() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}
    images = {"serve": "serve:0.1.0", "serve-monitor": "serve-monitor:0.1.0"}  # the base's `images:` tags
    for doc in RESOURCES:
        expected = copy.deepcopy(doc)
        for container in expected.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            container["image"] = images[container["image"]]
        assert rendered[(doc["kind"], doc["metadata"]["name"])] == expected, doc["metadata"]["name"]
