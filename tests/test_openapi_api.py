"""The OpenAPI document at /openapi.json, checked against a real server by schemathesis.

schemathesis draws requests from the document (hypothesis, the same profile as the fuzz tests) for
every operation: none may be answered with a server error, and every answer must be one the
document lists, with the content type and schema it gives. The repository's load and unload are checked against a
server in explicit model-control mode; everything else against one in the default mode.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve.http.openapi import openapi_document
from tests.fixtures.fuzzing import SLOW
from tests.fixtures.local_servers import ThreadServer, serving_in_thread

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
CONTROL = SCHEMA.include(path_regex=r"/models/\{model\}/(load|unload)$")
SERVING = SCHEMA.exclude(path_regex=r"/models/\{model\}/(load|unload)$")
# Not schemathesis's checks that schema-valid data is accepted: a well-formed request for a model
# that does not exist, or with the wrong inputs for one that does, is rightly a 4xx.
EXAMPLES = 300 if SLOW else 25  # per operation; the document has 36
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with serving_in_thread(demo_repository, tmp_path_factory.mktemp("openapi")) as running:
        yield running


@pytest.fixture(scope="module")
def explicit_server(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    explicit = ("--model-control-mode", "explicit")
    with serving_in_thread(demo_repository, tmp_path_factory.mktemp("openapi-explicit"), *explicit) as s:
        yield s


def test_the_server_serves_its_openapi_document(server: ThreadServer) -> None:
    with urllib.request.urlopen(f"{server.base}/openapi.json") as response:
        assert json.loads(response.read()) == openapi_document()


@SERVING.parametrize()
@settings(max_examples=EXAMPLES)
def test_no_operation_is_answered_with_a_server_error(case: schemathesis.Case, server: ThreadServer) -> None:
    case.call_and_validate(base_url=server.base, checks=CHECKS)


@CONTROL.parametrize()
@settings(max_examples=EXAMPLES)
def test_load_and_unload_are_never_answered_with_a_server_error(
    case: schemathesis.Case, explicit_server: ThreadServer
) -> None:
    case.call_and_validate(base_url=explicit_server.base, checks=CHECKS)
