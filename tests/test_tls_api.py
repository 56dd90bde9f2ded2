"""TLS, mutual TLS and token auth against real servers and real clients (tritonclient, ssl, grpcio),
with certificates made in the test (trustme); and the startup errors of bad security files.

Two servers: one over TLS with token auth, one with mutual TLS (client certificates required).
"""

from __future__ import annotations

import http.client
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gevent.ssl
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve.demo import write_demo_repository
from serve.protocol import grpc_service_pb2 as pb
from serve.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.fixtures.local_servers import ThreadServer, start_in_thread
from tests.fixtures.servers import HOST, free_port
from tests.fixtures.tls import Certificates, KeyPair, write_certificates

ADMIN_TOKEN = "admin-token-0123456789abcdef"
INFERENCE_TOKEN = "inference-token-0123456789"
MODEL = "tabular"
ROW = np.array([[0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 3.0, 1.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return write_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_demo_repository(root)
    return root


def client_context(certificates: Certificates, client: KeyPair | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.server_ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


@pytest.fixture(scope="module")
def tls_server(
    certificates: Certificates, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadServer]:
    tmp = tmp_path_factory.mktemp("tls")
    tokens = tmp / "tokens"
    tokens.write_text(f"deployer admin {ADMIN_TOKEN}\nfrontend inference {INFERENCE_TOKEN}\n")
    server = start_in_thread(
        repository,
        tmp,
        "--tls-cert-file", str(certificates.server.cert),
        "--tls-key-file", str(certificates.server.key),
        "--auth-tokens-file", str(tokens),
        "--model-control-mode", "explicit",
        "--load-model", "*",
        tls=client_context(certificates),
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mtls_server(
    certificates: Certificates, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadServer]:
    server = start_in_thread(
        repository,
        tmp_path_factory.mktemp("mtls"),
        "--tls-cert-file", str(certificates.server.cert),
        "--tls-key-file", str(certificates.server.key),
        "--tls-client-ca-file", str(certificates.client_ca),
        tls=client_context(certificates, certificates.client),
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def https_client(
    server: ThreadServer, certificates: Certificates, client: KeyPair | None = None
) -> httpclient.InferenceServerClient:
    options = {"ca_certs": str(certificates.server_ca)}
    if client is not None:
        options |= {"certfile": str(client.cert), "keyfile": str(client.key)}
    return httpclient.InferenceServerClient(
        server.http_url, ssl=True, ssl_options=options, ssl_context_factory=gevent.ssl.create_default_context
    )


def grpcs_client(
    server: ThreadServer, certificates: Certificates, client: KeyPair | None = None
) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        server.grpc_url,
        ssl=True,
        root_certificates=str(certificates.server_ca),
        private_key=str(client.key) if client else None,
        certificate_chain=str(client.cert) if client else None,
    )


def http_infer(client: httpclient.InferenceServerClient, **kwargs: object) -> np.ndarray:
    tensor = httpclient.InferInput("features", list(ROW.shape), "FP32")
    tensor.set_data_from_numpy(ROW)
    result = client.infer(MODEL, [tensor], **kwargs)
    return result.as_numpy("probabilities")


def grpc_infer(client: grpcclient.InferenceServerClient, **kwargs: object) -> np.ndarray:
    tensor = grpcclient.InferInput("features", list(ROW.shape), "FP32")
    tensor.set_data_from_numpy(ROW)
    result = client.infer(MODEL, [tensor], **kwargs)
    return result.as_numpy("probabilities")


def channel(server: ThreadServer, certificates: Certificates, client: KeyPair | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.server_ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(server.grpc_url, credentials)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def grpc_bearer(token: str) -> dict[str, str]:
    # gRPC metadata keys are lowercase: grpcio refuses "Authorization" before sending anything.
    return {"authorization": f"Bearer {token}"}


# ---- TLS with token auth -------------------------------------------------------------------------


def test_tritonclient_over_https_with_a_token_is_answered(tls_server: ThreadServer, certificates: Certificates) -> None:
    client = https_client(tls_server, certificates)

    assert client.is_server_live()  # health needs no token
    assert http_infer(client, headers=bearer(INFERENCE_TOKEN)).shape == (1, 3)
    assert any(m["name"] == MODEL for m in client.get_model_repository_index(headers=bearer(ADMIN_TOKEN)))


def test_tritonclient_over_https_without_a_token_is_refused(
    tls_server: ThreadServer, certificates: Certificates
) -> None:
    with pytest.raises(InferenceServerException, match="no bearer token was sent"):
        http_infer(https_client(tls_server, certificates))


def test_tritonclient_over_https_with_an_inference_token_cannot_control_models(
    tls_server: ThreadServer, certificates: Certificates
) -> None:
    client = https_client(tls_server, certificates)

    with pytest.raises(InferenceServerException, match="needs scope admin"):
        client.unload_model(MODEL, headers=bearer(INFERENCE_TOKEN))
    assert client.is_model_ready(MODEL, headers=bearer(INFERENCE_TOKEN))


def test_tritonclient_over_grpc_with_ssl_and_a_token_is_answered(
    tls_server: ThreadServer, certificates: Certificates
) -> None:
    client = grpcs_client(tls_server, certificates)

    assert client.is_server_live()
    assert grpc_infer(client, headers=grpc_bearer(INFERENCE_TOKEN)).shape == (1, 3)
    assert any(m.name == MODEL for m in client.get_model_repository_index(headers=grpc_bearer(ADMIN_TOKEN)).models)


def test_tritonclient_over_grpc_with_ssl_without_a_token_is_refused(
    tls_server: ThreadServer, certificates: Certificates
) -> None:
    client = grpcs_client(tls_server, certificates)

    with pytest.raises(InferenceServerException, match="no bearer token was sent") as raised:
        grpc_infer(client)
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException, match="needs scope admin"):
        client.load_model(MODEL, headers=grpc_bearer(INFERENCE_TOKEN))


def test_a_plaintext_http_client_is_refused_by_the_tls_port(tls_server: ThreadServer) -> None:
    connection = http.client.HTTPConnection(HOST, tls_server.http_port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            connection.request("GET", "/v2/health/live")
            connection.getresponse()
    finally:
        connection.close()


def test_a_plaintext_grpc_client_is_refused_by_the_tls_port(tls_server: ThreadServer) -> None:
    with grpc.insecure_channel(tls_server.grpc_url) as plain:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.GRPCInferenceServiceStub(plain).ServerLive(pb.ServerLiveRequest(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_server_certificate_is_refused(tls_server: ThreadServer) -> None:
    context = ssl.create_default_context()  # the system's CAs, which never signed a trustme certificate
    connection = http.client.HTTPSConnection(HOST, tls_server.http_port, timeout=10, context=context)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            connection.request("GET", "/v2/health/live")
    finally:
        connection.close()


def test_a_client_offering_only_cbc_sha1_suites_is_refused(
    tls_server: ThreadServer, certificates: Certificates
) -> None:
    context = client_context(certificates)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 suites are not chosen with set_ciphers
    context.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA")

    with pytest.raises(ssl.SSLError):
        https_live(tls_server, context)
    assert https_live(tls_server, client_context(certificates)) == 200


def test_the_server_log_never_shows_a_token(tls_server: ThreadServer, certificates: Certificates) -> None:
    with pytest.raises(InferenceServerException):
        http_infer(https_client(tls_server, certificates), headers=bearer("a-wrong-token-0123456789abcdef"))

    log = tls_server.log()
    assert "token auth: 2 token(s)" in log
    assert ADMIN_TOKEN not in log and INFERENCE_TOKEN not in log and "a-wrong-token" not in log


# ---- mutual TLS ----------------------------------------------------------------------------------


def test_mtls_a_client_with_a_certificate_from_the_client_ca_is_answered(
    mtls_server: ThreadServer, certificates: Certificates
) -> None:
    http_client = https_client(mtls_server, certificates, certificates.client)
    grpc_client = grpcs_client(mtls_server, certificates, certificates.client)

    assert http_infer(http_client).shape == (1, 3)
    assert grpc_infer(grpc_client).shape == (1, 3)


def https_live(server: ThreadServer, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection(HOST, server.http_port, timeout=10, context=context)
    try:
        connection.request("GET", "/v2/health/live")
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize("who", ["no certificate", "a certificate from another CA"])
def test_mtls_an_https_client_without_an_accepted_certificate_is_refused(
    mtls_server: ThreadServer, certificates: Certificates, who: str
) -> None:
    context = client_context(certificates, None if who == "no certificate" else certificates.stranger)

    # TLS 1.3 sends the server's refusal after the client's handshake ends: the first read fails.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_live(mtls_server, context)
    assert https_live(mtls_server, client_context(certificates, certificates.client)) == 200


@pytest.mark.parametrize("who", ["no certificate", "a certificate from another CA"])
def test_mtls_a_grpc_client_without_an_accepted_certificate_is_refused(
    mtls_server: ThreadServer, certificates: Certificates, who: str
) -> None:
    client = None if who == "no certificate" else certificates.stranger
    with channel(mtls_server, certificates, client) as refused:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.GRPCInferenceServiceStub(refused).ServerLive(pb.ServerLiveRequest(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    with channel(mtls_server, certificates, certificates.client) as accepted:
        assert pb_grpc.GRPCInferenceServiceStub(accepted).ServerLive(pb.ServerLiveRequest(), timeout=10).live


# ---- startup errors ------------------------------------------------------------------------------


def serve_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "serve",
        "run",
        "--model-repository",
        str(tmp_path),
        "--http-port",
        str(free_port()),
    ]
    return subprocess.run(
        [*command, "--grpc-port", str(free_port()), *args], capture_output=True, text=True, timeout=60
    )


def test_a_bad_tokens_file_stops_the_start_naming_the_file_and_line_but_not_the_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"deployer admin {ADMIN_TOKEN}\nfrontend {INFERENCE_TOKEN} inference\n")

    result = serve_run(tmp_path, "--auth-tokens-file", str(tokens))

    assert result.returncode == 1
    assert f"auth tokens file {tokens} line 2: the scope must be admin or inference" in result.stderr
    assert INFERENCE_TOKEN not in result.stderr and ADMIN_TOKEN not in result.stderr


def test_a_key_that_does_not_match_the_certificate_stops_the_start_naming_both_files(
    tmp_path: Path, certificates: Certificates
) -> None:
    result = serve_run(
        tmp_path, "--tls-cert-file", str(certificates.server.cert), "--tls-key-file", str(certificates.client.key)
    )

    assert result.returncode == 1
    assert f"--tls-cert-file {certificates.server.cert} with --tls-key-file {certificates.client.key}" in result.stderr


def test_a_client_ca_file_that_is_no_certificate_stops_the_start(tmp_path: Path, certificates: Certificates) -> None:
    not_a_ca = tmp_path / "ca.pem"
    not_a_ca.write_text("not a certificate\n")

    result = serve_run(
        tmp_path,
        "--tls-cert-file", str(certificates.server.cert),
        "--tls-key-file", str(certificates.server.key),
        "--tls-client-ca-file", str(not_a_ca),
    )  # fmt: skip

    assert result.returncode == 1
    assert f"--tls-client-ca-file {not_a_ca}: no PEM CA certificate" in result.stderr


def test_a_key_without_its_certificate_is_a_settings_error(tmp_path: Path, certificates: Certificates) -> None:
    result = serve_run(tmp_path, "--tls-key-file", str(certificates.server.key))

    assert result.returncode == 2
    assert "--tls-cert-file and --tls-key-file: give both or neither" in result.stderr


def test_grpc_frontend_native_with_tls_serves_grpc_over_tls_with_grpc_aio_and_says_why(
    certificates: Certificates, repository: Path, tmp_path: Path
) -> None:
    server = start_in_thread(
        repository,
        tmp_path,
        "--tls-cert-file", str(certificates.server.cert),
        "--tls-key-file", str(certificates.server.key),
        "--grpc-frontend", "native",
        tls=client_context(certificates),
    )  # fmt: skip
    try:
        client = grpcs_client(server, certificates)
        assert client.is_server_live()
        assert grpc_infer(client).shape == (1, 3)
    finally:
        server.stop()
    log = server.log()
    assert "--grpc-frontend native has no TLS" in log and "served by grpc.aio" in log
    assert "gRPC on 127.0.0.1:" in log and "(grpc.aio)" in log
