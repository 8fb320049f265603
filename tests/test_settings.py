"""Settings: the public `BLUEBUTTON_*` names and defaults, validators naming the variable, TLS trust."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bluebutton.outbound.tls import build_ssl_context
from bluebutton.settings import Settings, describe_error
from tests.factories import CERTS, make_settings

REPO_CERTS = Path(__file__).resolve().parents[1] / "local-certs"


def env_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"BLUEBUTTON_{name}", value)
    return Settings(_env_file=None)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        pytest.param("cms_base_url", "https://sandbox.bluebutton.cms.gov/", id="cms_base_url"),
        pytest.param("cms_api_version", 2, id="cms_api_version"),
        pytest.param("cms_client_id", None, id="cms_client_id"),
        pytest.param("cms_client_secret", None, id="cms_client_secret"),
        pytest.param(
            "callback_url", "https://localhost:5200/bluebutton/authorize_callback", id="callback_url"
        ),
        pytest.param("lfh_url", "https://localhost:5000/", id="lfh_url"),
        pytest.param("ca_file", None, id="ca_file"),
        pytest.param("host", "0.0.0.0", id="host"),  # noqa: S104 - the documented default
        pytest.param("port", 5200, id="port"),
        pytest.param("tls", True, id="tls"),
        pytest.param("tls_cert", REPO_CERTS / "server.pem", id="tls_cert"),
        pytest.param("tls_key", REPO_CERTS / "server.key", id="tls_key"),
        pytest.param("lfh_max_bundle_bytes", 600_000, id="lfh_max_bundle_bytes"),
    ],
)
def test_defaults_are_the_documented_ones(field: str, expected: Any) -> None:
    settings = Settings(_env_file=None)
    value = getattr(settings, field)
    if expected is not None and not isinstance(expected, (int, bool, Path)):
        value = str(value)
    assert value == expected


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        pytest.param(
            "CMS_BASE_URL",
            "https://api.bluebutton.cms.gov",
            "cms_origin",
            "https://api.bluebutton.cms.gov",
            id="CMS_BASE_URL",
        ),
        pytest.param("CMS_API_VERSION", "3", "cms_api_version", 3, id="CMS_API_VERSION-3"),
        pytest.param("CMS_API_VERSION", "2", "cms_api_version", 2, id="CMS_API_VERSION-2"),
        pytest.param("CMS_CLIENT_ID", "app-id-123", "cms_client_id", "app-id-123", id="CMS_CLIENT_ID"),
        pytest.param(
            "CALLBACK_URL",
            "https://bb.example/cb",
            "callback_url",
            "https://bb.example/cb",
            id="CALLBACK_URL",
        ),
        pytest.param("LFH_URL", "https://connect:5000", "lfh_origin", "https://connect:5000", id="LFH_URL"),
        pytest.param("CA_FILE", str(CERTS / "ca.pem"), "ca_file", CERTS / "ca.pem", id="CA_FILE"),
        pytest.param("HOST", "127.0.0.1", "host", "127.0.0.1", id="HOST"),
        pytest.param("PORT", "8443", "port", 8443, id="PORT"),
        pytest.param("TLS", "false", "tls", False, id="TLS"),
        pytest.param("TLS_CERT", str(CERTS / "server.pem"), "tls_cert", CERTS / "server.pem", id="TLS_CERT"),
        pytest.param("TLS_KEY", str(CERTS / "server.key"), "tls_key", CERTS / "server.key", id="TLS_KEY"),
        pytest.param(
            "LFH_MAX_BUNDLE_BYTES", "250000", "lfh_max_bundle_bytes", 250_000, id="LFH_MAX_BUNDLE_BYTES"
        ),
    ],
)
def test_public_environment_variables(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str, field: str, expected: Any
) -> None:
    settings = env_settings(monkeypatch, **{variable: raw})
    value = getattr(settings, field)
    assert (str(value) if isinstance(expected, str) else value) == expected


def test_client_secret_is_read_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = env_settings(monkeypatch, CMS_CLIENT_SECRET="s3cr3t-value-xyz")
    assert settings.cms_client_secret is not None
    assert settings.cms_client_secret.get_secret_value() == "s3cr3t-value-xyz"
    assert "s3cr3t-value-xyz" not in repr(settings)
    assert "s3cr3t-value-xyz" not in str(settings)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BLUEBUTTON_LFH_URL=https://connect.example:5000\nBLUEBUTTON_TLS=false\n")
    settings = Settings(_env_file=env_file)
    assert settings.lfh_origin == "https://connect.example:5000"
    assert settings.tls is False


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BLUEBUTTON_PORT=7000\n")
    monkeypatch.setenv("BLUEBUTTON_PORT", "7001")
    assert Settings(_env_file=env_file).port == 7001


@pytest.mark.parametrize(
    ("version", "fhir_base", "oauth_base"),
    [
        pytest.param(2, "https://cms.test/v2/fhir/", "https://cms.test/v2/o/", id="v2"),
        pytest.param(3, "https://cms.test/v3/fhir/", "https://cms.test/v3/o/", id="v3"),
    ],
)
def test_derived_urls(version: int, fhir_base: str, oauth_base: str) -> None:
    settings = make_settings(cms_api_version=version)
    assert settings.cms_fhir_base == fhir_base
    assert settings.cms_oauth_base == oauth_base


def test_local_emulator_url_with_port_is_accepted() -> None:
    settings = make_settings(cms_base_url="http://127.0.0.1:8100", lfh_url="http://127.0.0.1:5000/")
    assert settings.cms_fhir_base == "http://127.0.0.1:8100/v2/fhir/"
    assert settings.lfh_origin == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        pytest.param({"CMS_API_VERSION": "4"}, "BLUEBUTTON_CMS_API_VERSION", id="version-4"),
        pytest.param({"CMS_API_VERSION": "1"}, "BLUEBUTTON_CMS_API_VERSION", id="version-1"),
        pytest.param({"CMS_BASE_URL": "not a url"}, "BLUEBUTTON_CMS_BASE_URL", id="cms-not-a-url"),
        pytest.param({"CMS_BASE_URL": "ftp://cms.test"}, "BLUEBUTTON_CMS_BASE_URL", id="cms-ftp"),
        pytest.param({"CMS_BASE_URL": "https://cms.test/?x=1"}, "BLUEBUTTON_CMS_BASE_URL", id="cms-query"),
        pytest.param({"LFH_URL": "localhost:5000"}, "BLUEBUTTON_LFH_URL", id="lfh-no-scheme"),
        pytest.param({"CALLBACK_URL": "nowhere"}, "BLUEBUTTON_CALLBACK_URL", id="callback-not-a-url"),
        pytest.param({"PORT": "0"}, "BLUEBUTTON_PORT", id="port-0"),
        pytest.param({"PORT": "http"}, "BLUEBUTTON_PORT", id="port-text"),
        pytest.param({"TLS": "perhaps"}, "BLUEBUTTON_TLS", id="tls-not-bool"),
        pytest.param({"LFH_MAX_BUNDLE_BYTES": "-1"}, "BLUEBUTTON_LFH_MAX_BUNDLE_BYTES", id="limit-negative"),
        pytest.param({"CA_FILE": "/nonexistent/ca.pem"}, "BLUEBUTTON_CA_FILE", id="ca-file-missing"),
        pytest.param(
            {"TLS": "true", "TLS_CERT": "/nonexistent/server.pem"},
            "BLUEBUTTON_TLS_CERT",
            id="tls-cert-missing",
        ),
        pytest.param(
            {"TLS": "true", "TLS_KEY": "/nonexistent/server.key"}, "BLUEBUTTON_TLS_KEY", id="tls-key-missing"
        ),
    ],
)
def test_bad_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ValidationError) as info:
        env_settings(monkeypatch, **env)
    message = describe_error(info.value)
    lines = message.splitlines()
    assert len(lines) == 1, message
    assert lines[0].startswith(f"{variable}:"), message
    assert len(lines[0]) > len(variable) + 5  # says what is wrong, not only which variable


def test_two_bad_values_give_two_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as info:
        env_settings(monkeypatch, CMS_API_VERSION="4", PORT="99999")
    lines = describe_error(info.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["BLUEBUTTON_CMS_API_VERSION", "BLUEBUTTON_PORT"]


def test_missing_cert_is_fine_without_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = env_settings(monkeypatch, TLS="false", TLS_CERT="/nonexistent/server.pem")
    assert settings.tls is False


def test_settings_are_immutable() -> None:
    settings = make_settings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


# Outbound TLS: verification can never be switched off; the CA file only adds trust.


def test_no_setting_can_switch_verification_off() -> None:
    names = {name.lower() for name in Settings.model_fields}
    assert not {n for n in names if "verify" in n or "insecure" in n}


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"VERIFY": "false"}, id="VERIFY"),
        pytest.param({"TLS_VERIFY": "false"}, id="TLS_VERIFY"),
        pytest.param({"CERTIFICATE_VERIFY": "false"}, id="CERTIFICATE_VERIFY"),
        pytest.param({"CA_FILE": str(CERTS / "ca.pem")}, id="extra-CA"),
    ],
)
def test_outbound_context_always_verifies(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    context = build_ssl_context(env_settings(monkeypatch, TLS="false", **env))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def _subjects(context: ssl.SSLContext) -> list[str]:
    subjects = []
    for cert in context.get_ca_certs():
        subject: Any = cert["subject"]
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    subjects.append(value)
    return subjects


def test_ca_file_adds_to_the_normal_trust_store() -> None:
    without = build_ssl_context(make_settings())
    with_ca = build_ssl_context(make_settings(ca_file=CERTS / "ca.pem"))
    assert "bluebutton development CA" not in _subjects(without)
    assert "bluebutton development CA" in _subjects(with_ca)
    # the public roots are still trusted
    assert len(with_ca.get_ca_certs()) == len(without.get_ca_certs()) + 1
    assert len(without.get_ca_certs()) > 50
