"""The image's inputs: deploy/constraints.txt pins every dependency pyproject.toml declares for the images, within
pyproject's ranges, and the Dockerfile installs through it. (The image itself is built and run by
shared/tools/build-image.sh, which needs podman; see README "Deploy".)"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.fixtures.manifests import DEPLOY, ROOT

CONSTRAINTS = DEPLOY / "constraints.txt"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def _image_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    images = [*project["dependencies"], *extras["baseline"], *extras["monitor"], *extras["tracing"]]
    return [Requirement(r) for r in images]


def test_constraints_pin_every_image_dependency_within_pyprojects_range() -> None:
    pins = _pins()
    for requirement in _image_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"


def test_constraints_do_not_pin_serve_itself() -> None:
    assert "serve" not in _pins()


def test_every_pip_install_in_the_dockerfile_goes_through_the_constraints() -> None:
    installs = re.findall(r"pip install [^\n\\]*", DOCKERFILE)
    assert installs
    assert all("--constraint deploy/constraints.txt" in i for i in installs), installs


def test_healthcheck_reads_the_configured_http_port() -> None:
    (server_healthcheck,) = re.findall(r"HEALTHCHECK .*\n.*/v2/health/ready.*", DOCKERFILE)
    assert "SERVE_HTTP_PORT" in server_healthcheck
    assert ":8000/" not in server_healthcheck


def test_dockerignore_admits_what_the_dockerfile_copies_from_the_context() -> None:
    admitted = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    for source in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*) \S+$", DOCKERFILE, re.MULTILINE):
        for path in source.split():
            assert any(path == a or path.startswith(a + "/") for a in admitted), path
