"""docker-compose.yml: valid Compose, two self-contained profiles, wiring that matches Settings,
and grant keeping in each profile: a PostgreSQL and a standalone worker beside the connector.

No Docker engine runs here, so these check what can be checked without one: the file parses, Debian's
docker-compose 1.29 accepts it (when installed), and the services fit together.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509

from bluebutton.__main__ import build_parser
from bluebutton.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROFILES = ("connect", "sandbox")
ADD_ONS = ("monitoring",)  # started beside one of PROFILES (Prometheus and Grafana)
CONNECTORS = {"connect": "bluebutton", "sandbox": "bluebutton-sandbox"}
WORKERS = {"connect": "worker", "sandbox": "worker-sandbox"}
DATABASES = {"connect": "postgres", "sandbox": "postgres-sandbox"}
POSTGRES_IMAGE = "postgres:18"
IMAGE = "bluebutton:local"
HEALTHCHECK = ["CMD", "python", "-m", "bluebutton", "healthcheck"]  # as in the Dockerfile

# The images and tags of LinuxForHealth connect 0.42.0's docker-compose.yml.
CONNECT_STACK = {
    "connect": "linuxforhealth/connect:0.42.0",
    "nats-server": "linuxforhealth/nats-server:v2.6.6",
    "zookeeper": "docker.io/linuxforhealth/zookeeper:3.6.3-alpine-3.14.2",
    "kafka": "docker.io/linuxforhealth/kafka:3.0.0-alpine-3.14.2",
    "ipfs-cluster-0": "linuxforhealth/ipfs-cluster:v0.14.0",
    "ipfs-node-0": "linuxforhealth/go-ipfs:release-v0.9.1",
}
# The CMS emulator's documented development client and the sandbox's grant-keeping keys: public
# development values guarding emulated tokens only, not credentials.
SANDBOX_CLIENT = {"bluebutton-sandbox-client", "bluebutton-sandbox-secret"}
SANDBOX_KEYS = {
    "Ymx1ZWJ1dHRvbi1zYW5kYm94LXRva2VuLWtleS1kZXY=",  # base64 of b"bluebutton-sandbox-token-key-dev"
    "bluebutton-sandbox-operator-key-not-a-secret",
}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|(^|_)KEY$", re.IGNORECASE)
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")  # `$${` is a literal
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a server in a container must bind
DEFAULTED = re.compile(r"(?<!\$)\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    parsed: dict[str, dict[str, Any]] = compose["services"]
    return parsed


def with_defaults(value: str) -> str:
    """`value` as Compose interpolates it in an empty environment: `${VAR:-default}` -> default."""
    return DEFAULTED.sub(lambda m: m.group(1) or "", value)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment in an empty shell environment; None = passed through, if set."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else with_defaults(str(value)) for key, value in env.items()}


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """Services this one needs started first, with the condition (network_mode counts too)."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        depends = {name: {"condition": "service_started"} for name in depends}
    needed = {name: spec.get("condition", "service_started") for name, spec in depends.items()}
    mode = service.get("network_mode", "")
    if mode.startswith("service:"):
        needed.setdefault(mode.removeprefix("service:"), "service_started")
    return needed


def network_owner(services: dict[str, dict[str, Any]], name: str) -> str:
    """The service whose network namespace `name` runs in (itself unless network_mode says so)."""
    mode = services[name].get("network_mode", "")
    return network_owner(services, mode.removeprefix("service:")) if mode else name


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port), from short-syntax port strings."""
    ports = {}
    for entry in service.get("ports", []):
        address, host, container = ["", *str(entry).split(":")][-3:]
        ports[int(container.split("/")[0])] = (address, int(host))
    return ports


def flags(service: dict[str, Any]) -> dict[str, str]:
    """`--name=value` arguments of a service's command."""
    return dict(arg[2:].split("=", 1) for arg in service.get("command", []) if "=" in arg)


def active(services: dict[str, dict[str, Any]], profile: str) -> set[str]:
    return {name for name, s in services.items() if not s.get("profiles") or profile in s["profiles"]}


def built_here(service: dict[str, Any]) -> bool:
    return service.get("image") == IMAGE


def serves_http(name: str, service: dict[str, Any]) -> bool:
    """Our services that listen (connectors, emulators); workers only call out."""
    return built_here(service) and name not in WORKERS.values()


def bind_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            volume = {"type": "bind", "source": source, "target": target, "read_only": mode == ["ro"]}
        if volume["type"] == "bind":
            mounts.append(volume)
    return mounts


def mounted_read_only(service: dict[str, Any], path: str | None) -> bool:
    return path is not None and any(
        m.get("read_only") and (path == m["target"] or path.startswith(m["target"].rstrip("/") + "/"))
        for m in bind_mounts(service)
    )


def test_compose_file_parses(services: dict[str, dict[str, Any]]) -> None:
    assert set(CONNECT_STACK) | set(CONNECTORS.values()) <= set(services)


@pytest.mark.parametrize("profile", PROFILES + ADD_ONS)
def test_docker_compose_accepts_the_file(profile: str, tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (CI: apt-get install -y docker-compose)")
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    # A developer's own settings must not change the verdict: no .env, no BLUEBUTTON_*/COMPOSE_*.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BLUEBUTTON_", "COMPOSE_", "LFH_", "DOCKER_"))
    }
    result = subprocess.run(
        [
            binary,
            "--env-file",
            str(empty_env_file),
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            profile,
            "config",
            "-q",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_service_is_in_exactly_one_profile(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert len(service.get("profiles", [])) == 1, name
        assert service["profiles"][0] in PROFILES + ADD_ONS, name


@pytest.mark.parametrize("profile", PROFILES + ADD_ONS)
def test_profile_is_self_contained(services: dict[str, dict[str, Any]], profile: str) -> None:
    running = active(services, profile)
    for name in running:
        for needed, condition in dependencies(services[name]).items():
            assert needed in services, f"{name} depends on undefined {needed}"
            assert needed in running, f"{name} ({profile}) depends on {needed}, not in {profile}"
            assert condition in CONDITIONS, f"{name}: {condition}"


def test_profiles_run_the_right_stack(services: dict[str, dict[str, Any]]) -> None:
    assert active(services, "connect") == set(CONNECT_STACK) | {"bluebutton", "worker", "postgres"}
    sandbox = active(services, "sandbox")
    assert sandbox == {
        "bluebutton-sandbox",
        "cms-sandbox",
        "connect-sandbox",
        "worker-sandbox",
        "postgres-sandbox",
    }
    assert all(built_here(services[name]) for name in sandbox - {"postgres-sandbox"})


def test_connect_stack_uses_connect_0_42_images(services: dict[str, dict[str, Any]]) -> None:
    assert {name: services[name]["image"] for name in CONNECT_STACK} == CONNECT_STACK


def test_services_built_here_share_one_image_and_build(services: dict[str, dict[str, Any]]) -> None:
    ours = [s for s in services.values() if built_here(s)]
    assert len(ours) == 6
    assert all(s.get("build") in (".", {"context": "."}) for s in ours)


def test_healthy_conditions_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for needed, condition in dependencies(service).items():
            if condition == "service_healthy":
                assert "test" in services[needed].get("healthcheck", {}), f"{name} -> {needed}"


def test_connectors_and_emulators_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if serves_http(name, service):
            test = service["healthcheck"]["test"]
            assert test[: len(HEALTHCHECK)] == HEALTHCHECK, name
            arguments = test[len(HEALTHCHECK) :]
            build_parser().parse_args(["healthcheck", *arguments])  # options the command knows
            probe = dict(arg[2:].split("=", 1) for arg in arguments if "=" in arg)
            # An emulator's probe goes to the port it listens on; a connector's to BLUEBUTTON_PORT.
            assert probe.get("port", "5200") == flags(service).get("port", "5200"), name


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    assert dependencies(services["bluebutton"]) == {
        "connect": "service_healthy",
        "postgres": "service_healthy",
    }
    assert dependencies(services["connect"])["kafka"] == "service_healthy"
    assert dependencies(services["kafka"]) == {"zookeeper": "service_healthy"}
    assert dependencies(services["bluebutton-sandbox"]) == {
        "cms-sandbox": "service_healthy",
        "connect-sandbox": "service_healthy",
        "postgres-sandbox": "service_healthy",
    }
    # A worker starts after its connector answers health checks: the migrations are applied.
    assert dependencies(services["worker"]) == {
        "bluebutton": "service_healthy",
        "postgres": "service_healthy",
    }
    assert dependencies(services["worker-sandbox"]) == {
        "bluebutton-sandbox": "service_healthy",
        "postgres-sandbox": "service_healthy",
        "cms-sandbox": "service_started",  # its network namespace
    }


def test_bluebutton_variables_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    fields = {f"BLUEBUTTON_{name.upper()}" for name in Settings.model_fields}
    named = set(INTERPOLATION.findall(COMPOSE_FILE.read_text()))
    for service in services.values():
        named |= set(environment(service))
    named = {n for n in named if n.startswith("BLUEBUTTON_")}
    assert named, "no BLUEBUTTON_* variable found"
    assert named <= fields, named - fields


@pytest.mark.parametrize("profile", PROFILES)
def test_connector_joins_network_main(services: dict[str, dict[str, Any]], profile: str) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert compose["networks"]["main"].get("name") == "main"
    owner = services[network_owner(services, CONNECTORS[profile])]
    assert "main" in owner["networks"]


def test_connector_publishes_its_port(services: dict[str, dict[str, Any]]) -> None:
    port = Settings.model_fields["port"].default
    assert port == 5200
    for name in CONNECTORS.values():
        env = environment(services[name])
        assert env.get("BLUEBUTTON_PORT", str(port)) == str(port)
        ports = published(services[network_owner(services, name)])
        assert ports[port] == ("127.0.0.1", port), name
        callback = urlsplit(env.get("BLUEBUTTON_CALLBACK_URL") or "")
        # The browser comes back to the callback URL: it must be the published port on localhost.
        assert (callback.hostname, callback.port) == ("localhost", port), name


def test_connector_reaches_real_connect(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["bluebutton"])
    assert env["BLUEBUTTON_LFH_URL"] == "https://connect:5000"
    assert 5000 in published(services["connect"])
    assert "main" in services["connect"]["networks"]
    # The CA file is connect's mkcert root, mounted read-only from a configurable path.
    assert mounted_read_only(services["bluebutton"], env["BLUEBUTTON_CA_FILE"])
    sources = [m["source"] for m in bind_mounts(services["bluebutton"])]
    assert "${LFH_CONNECT_CA:-../connect/local-config/connect/lfh-root-ca.pem}" in sources


def test_sandbox_connector_reaches_the_emulators(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["bluebutton-sandbox"])
    cms, connect = services["cms-sandbox"], services["connect-sandbox"]
    lfh = urlsplit(env["BLUEBUTTON_LFH_URL"])
    assert (lfh.scheme, lfh.hostname, lfh.port) == ("https", "connect-sandbox", 5000)
    assert flags(connect)["port"] == "5000" and flags(connect)["host"] == ALL_INTERFACES
    assert "main" in connect["networks"]
    # CMS is reached as localhost from the connector's namespace and from the browser alike.
    assert network_owner(services, "bluebutton-sandbox") == "cms-sandbox"
    base = urlsplit(env["BLUEBUTTON_CMS_BASE_URL"])
    assert (base.scheme, base.hostname, base.port) == ("https", "localhost", 5300)
    assert flags(cms)["port"] == "5300" and flags(cms)["host"] == ALL_INTERFACES
    assert published(cms)[5300] == ("127.0.0.1", 5300)
    assert flags(cms)["client-id"] == env["BLUEBUTTON_CMS_CLIENT_ID"]
    assert flags(cms)["client-secret"] == env["BLUEBUTTON_CMS_CLIENT_SECRET"]
    assert flags(cms)["redirect-uri"] == env["BLUEBUTTON_CALLBACK_URL"]
    assert mounted_read_only(services["bluebutton-sandbox"], env["BLUEBUTTON_CA_FILE"])


def test_dev_certificate_covers_the_names_used_over_tls(services: dict[str, dict[str, Any]]) -> None:
    cert = x509.load_pem_x509_certificate((ROOT / "local-certs" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    env = environment(services["bluebutton-sandbox"])
    urls = ("BLUEBUTTON_LFH_URL", "BLUEBUTTON_CMS_BASE_URL", "BLUEBUTTON_CALLBACK_URL")
    for url in urls:
        assert urlsplit(env[url]).hostname in names, url


def test_tls_files_are_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if serves_http(name, service):
            for path in ("/etc/bluebutton/tls/server.pem", "/etc/bluebutton/tls/server.key"):
                assert mounted_read_only(service, path), (name, path)
            for flag in ("tls-cert", "tls-key"):
                if flag in flags(service):
                    assert mounted_read_only(service, flags(service)[flag]), (name, flag)


def test_no_secret_values_committed(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        sandbox = service["profiles"] == ["sandbox"]
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and value:
                assert sandbox and value in SANDBOX_CLIENT | SANDBOX_KEYS, f"{name}: {key} has a value"
        for arg in service.get("command", []):
            if "secret" in str(arg):
                assert sandbox and str(arg).split("=", 1)[-1] in SANDBOX_CLIENT, f"{name}: {arg}"


def test_connect_profile_takes_credentials_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    env = environment(services["bluebutton"])
    assert env["BLUEBUTTON_CMS_CLIENT_ID"] is None
    assert env["BLUEBUTTON_CMS_CLIENT_SECRET"] is None
    # `${VAR:?}` would make even `--profile sandbox` fail without credentials.
    assert ":?" not in COMPOSE_FILE.read_text()


def test_sandbox_profile_needs_no_configuration(services: dict[str, dict[str, Any]]) -> None:
    for name in active(services, "sandbox"):
        text = yaml.safe_dump(services[name])
        assert not INTERPOLATION.search(text), name


def test_env_example_documents_every_variable(services: dict[str, dict[str, Any]]) -> None:
    lines = [line.strip() for line in ENV_EXAMPLE.read_text().splitlines()]
    documented = {line.lstrip("# ").split("=", 1)[0] for line in lines if "=" in line}
    passed_through = {k for k, v in environment(services["bluebutton"]).items() if v is None}
    assert passed_through >= {"BLUEBUTTON_CMS_CLIENT_ID", "BLUEBUTTON_CMS_CLIENT_SECRET"}
    assert set(INTERPOLATION.findall(COMPOSE_FILE.read_text())) | passed_through <= documented


def test_env_example_holds_placeholders_only() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, value = line.partition("=")
        if line.startswith("#") or not value:
            continue
        if SECRET_NAME.search(key) or key.endswith("_CLIENT_ID"):
            assert value.startswith("replace-with-"), key


def test_env_file_is_git_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_keeps_grants_in_its_own_postgres(
    services: dict[str, dict[str, Any]], profile: str
) -> None:
    database = services[DATABASES[profile]]
    assert database["image"] == POSTGRES_IMAGE
    assert "ports" not in database  # reachable on the compose network only
    assert "main" in database["networks"]
    assert any(str(v).endswith(":/var/lib/postgresql") for v in database["volumes"])
    assert database["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "pg_isready" in database["healthcheck"]["test"][1]
    env = environment(services[CONNECTORS[profile]])
    url = urlsplit(env["BLUEBUTTON_DATABASE_URL"] or "")
    db_env = environment(database)
    assert (url.scheme, url.hostname, url.port) == ("postgresql", DATABASES[profile], 5432)
    assert (url.username, url.path) == (db_env["POSTGRES_USER"], f"/{db_env['POSTGRES_DB']}")
    assert env["BLUEBUTTON_SYNC_WORKER"] == "off"  # the worker service runs the jobs
    volumes = {str(v).split(":")[0] for v in database["volumes"]}
    other = DATABASES["sandbox" if profile == "connect" else "connect"]
    assert volumes == {DATABASES[profile]} and other not in volumes  # emulated and real never mix


def test_the_connect_database_password_comes_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert raw["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-}"
    url = raw["bluebutton"]["environment"]["BLUEBUTTON_DATABASE_URL"]
    assert urlsplit(url).password == "${POSTGRES_PASSWORD:-}"
    env = environment(services["bluebutton"])
    assert env["BLUEBUTTON_TOKEN_KEYS"] is None and env["BLUEBUTTON_ADMIN_API_KEY"] is None


@pytest.mark.parametrize("profile", PROFILES)
def test_the_worker_runs_with_its_connectors_settings(
    services: dict[str, dict[str, Any]], profile: str
) -> None:
    worker, connector = services[WORKERS[profile]], services[CONNECTORS[profile]]
    assert worker["command"] == ["python", "-m", "bluebutton", "worker"]
    assert worker["profiles"] == [profile] and built_here(worker)
    assert environment(worker) == environment(connector)  # same database, keys, CMS and connect
    # Where the connector reaches CMS and connect, so does the worker.
    assert worker.get("network_mode") == connector.get("network_mode")
    assert worker.get("networks") == connector.get("networks")
    assert "ports" not in worker
    assert worker["healthcheck"] == {"disable": True}  # the image's HTTP probe would fail
    assert worker["restart"] == "unless-stopped"
    # Its CA is mounted; the server certificate and key are not (it serves nothing).
    assert mounted_read_only(worker, environment(worker)["BLUEBUTTON_CA_FILE"])
    assert not any(
        m["target"] in ("/etc/bluebutton/tls", "/etc/bluebutton/tls/server.key") for m in bind_mounts(worker)
    )


def test_the_sandbox_keys_are_valid_settings(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["bluebutton-sandbox"])
    names = ("BLUEBUTTON_DATABASE_URL", "BLUEBUTTON_TOKEN_KEYS", "BLUEBUTTON_ADMIN_API_KEY")
    values: dict[str, Any] = {n.removeprefix("BLUEBUTTON_").lower(): env[n] for n in names}
    settings = Settings(_env_file=None, **values)
    assert settings.sync_enabled and settings.admin_api_key is not None
