"""Settings are declared once: flags and SERVE_* variables come from the fields, checked alike."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from serve import settings
from serve.settings import ServerSettings, SettingsError


def parse(*argv: str, environ: dict[str, str] | None = None, command: str = "run") -> ServerSettings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, command)
    return settings.from_arguments(parser.parse_args(list(argv)), environ or {})


def test_defaults_are_the_fields_defaults() -> None:
    assert parse() == ServerSettings()


def test_the_environment_overrides_the_default_and_a_flag_overrides_the_environment() -> None:
    assert parse(environ={"SERVE_HTTP_PORT": "9000"}).http_port == 9000
    assert parse("--http-port", "9100", environ={"SERVE_HTTP_PORT": "9000"}).http_port == 9100


def test_values_are_converted_to_the_fields_types() -> None:
    got = parse(
        "--model-repository", "/models", "--stats-sample-rate", "0.5", "--no-stats", "--latency-buckets-s", "0.1,1",
        environ={"SERVE_ORT_ALLOW_SPINNING": "yes", "SERVE_METRICS_PORT": "9200"},
    )  # fmt: skip
    assert (got.model_repository, got.stats_sample_rate, got.stats_enabled) == (Path("/models"), 0.5, False)
    assert (got.latency_buckets_s, got.ort_allow_spinning, got.metrics_port) == ((0.1, 1.0), True, 9200)


def test_a_list_setting_repeats_as_a_flag_and_is_comma_separated_in_the_environment() -> None:
    assert parse("--load-model", "a", "--load-model", "b").load_models == ["a", "b"]
    assert parse(environ={"SERVE_LOAD_MODEL": "a,b"}).load_models == ["a", "b"]


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (
            ["--model-control-mode", "manual"],
            {},
            "--model-control-mode='manual': 'manual' is not one of none, poll, explicit",
        ),
        ([], {"SERVE_LOG_LEVEL": "loud"}, "environment variable SERVE_LOG_LEVEL='loud'"),
        (["--http-port", "70000"], {}, "must be a port number"),
        (["--stats-sample-rate", "0"], {}, "must be in (0, 1]"),
        ([], {"SERVE_STATS": "maybe"}, "is not a boolean"),
        (["--shutdown-grace-s", "soon"], {}, "expected a number"),
        (["--latency-buckets-s", "1,0.5"], {}, "strictly increasing"),
    ],
)
def test_a_bad_value_is_refused_naming_the_flag_or_variable(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse(*argv, environ=environ)
    assert message in str(caught.value)


def test_the_native_grpc_frontend_without_its_extra_is_refused_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "missing_modules", lambda extra: ["pygrpc_native"])
    with pytest.raises(SettingsError, match=r"--grpc-frontend='native'.*pip install 'serve\[grpc-native\]'"):
        parse("--grpc-frontend", "native")


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="--model-control-mode"):
        ServerSettings(model_control_mode="sometimes")  # type: ignore[arg-type]


def test_every_field_is_a_flag_of_serve_run_with_its_variable() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, "run")
    text = parser.format_help()
    for field in dataclasses.fields(ServerSettings):
        spec = next(s for s in settings.SPECS if s.name == field.name)
        assert spec.flag in text and spec.env in text, field.name


def test_validate_takes_only_the_model_loading_settings() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, "validate")
    text = parser.format_help()
    assert "--model-repository" in text and "--ort-intra-op-threads" in text
    assert "--http-port" not in text


def test_settings_survive_the_trip_through_the_environment() -> None:
    original = ServerSettings(
        model_repository=Path("/models"), http_port=9000, load_models=["a", "b"], stats_enabled=False,
        latency_buckets_s=(0.1, 1.0), workers="3", model_control_mode="explicit",
    )  # fmt: skip
    environment = settings.to_environment(original)
    assert settings.from_arguments(argparse.Namespace(), environment) == original
