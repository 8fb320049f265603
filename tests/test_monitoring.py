"""deploy/: the Grafana dashboard, its provisioning and Prometheus's scrape configuration fit
docker-compose.yml's `monitoring` profile and the connectors they scrape.

That every panel reads a metric the app really exposes is checked against a real scrape in
tests/sync/test_dashboard.py (it needs the grant-keeping database); the PromQL reading is here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bluebutton.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "bluebutton.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
SANDBOX_KEY = "bluebutton-sandbox-operator-key-not-a-secret"  # docker-compose.yml, a public value
KEY_FILE = "/run/bluebutton/admin-api-key"

# PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    aggregations, keywords, label names or label values."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and other strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors ($__rate_interval included)
    text = LABEL_LISTS.sub("", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", text):  # not inside 1h or 2e3
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def panels() -> list[dict[str, Any]]:
    """Every panel but the rows, nested ones included."""
    found: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return found


def dashboard_metrics() -> dict[str, set[str]]:
    """Panel title -> the metric names its queries read."""
    return {p["title"]: set().union(*(metric_names(t["expr"]) for t in p["targets"])) for p in panels()}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param("up", {"up"}, id="bare"),
        pytest.param(
            'sum by (route, status) (rate(bluebutton_http_requests_total{status=~"5.."}[$__rate_interval]))',
            {"bluebutton_http_requests_total"},
            id="aggregation",
        ),
        pytest.param(
            "histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m]))) / on (job) b_total offset 1h",
            {"a_bucket", "b_total"},
            id="quantile-binary-offset",
        ),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def binds(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> source relative to the compose file."""
    return {v["target"]: v["source"] for v in service.get("volumes", []) if isinstance(v, dict)}


def test_the_monitoring_profile_runs_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    monitoring = {name for name, s in services.items() if s.get("profiles") == ["monitoring"]}
    assert monitoring == {"prometheus", "grafana"}
    for name in monitoring:
        service = services[name]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), "a pinned image"
        assert all(str(port).startswith("127.0.0.1:") for port in service["ports"]), "loopback only"
        assert "main" in service["networks"]  # where both profiles' connectors are
        for target, source in binds(service).items():
            assert (ROOT / source).exists(), (name, target, source)


def test_the_dashboard_is_provisioned_with_its_data_source(compose: dict[str, Any]) -> None:
    grafana = binds(compose["services"]["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    [provider] = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert grafana[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "bluebutton"
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))
    assert panels()
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"]), panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]


def test_every_panel_reads_bluebutton_metrics_only() -> None:
    # `up` and the like are Prometheus's own, not in /metrics: the scrape test would refuse them.
    for title, names in dashboard_metrics().items():
        assert names, f"{title}: no metric"
        assert all(name.startswith("bluebutton_") for name in names), (title, names)


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}


def test_prometheus_scrapes_each_profiles_connector_over_verified_tls(compose: dict[str, Any]) -> None:
    services = compose["services"]
    jobs = scrape_jobs()
    # The sandbox connector runs in cms-sandbox's network namespace: it is reached by that name.
    owners = {"bluebutton": "bluebutton", "bluebutton-sandbox": "cms-sandbox"}
    assert set(jobs) == set(owners)
    cert = x509.load_pem_x509_certificate((ROOT / "local-certs" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    prometheus = binds(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    for connector, host in owners.items():
        job = jobs[connector]
        assert services[connector].get("network_mode", f"service:{connector}") == f"service:{host}"
        [targets] = [c["targets"] for c in job["static_configs"]]
        assert targets == [f"{host}:5200"]
        assert job["scheme"] == "https"
        assert job["tls_config"]["server_name"] in names
        assert prometheus[job["tls_config"]["ca_file"]] == "./local-certs/ca.pem"
        assert "insecure_skip_verify" not in job["tls_config"]


def test_the_operator_key_reaches_the_scrape_without_being_written_down(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    jobs = scrape_jobs()
    # Sandbox: its public development key, the one the sandbox connector is given.
    sandbox_env = services["bluebutton-sandbox"]["environment"]
    assert sandbox_env["BLUEBUTTON_ADMIN_API_KEY"] == SANDBOX_KEY
    assert jobs["bluebutton-sandbox"]["http_headers"] == {"X-API-Key": {"values": [SANDBOX_KEY]}}
    # Connect: the key of the environment, passed through (no value here), written by the
    # entrypoint to a tmpfs file the scrape reads.
    assert prometheus["environment"] == {"BLUEBUTTON_ADMIN_API_KEY": None}
    assert services["bluebutton"]["environment"]["BLUEBUTTON_ADMIN_API_KEY"] is None
    assert jobs["bluebutton"]["http_headers"] == {"X-API-Key": {"files": [KEY_FILE]}}
    assert KEY_FILE.rpartition("/")[0] in prometheus["tmpfs"]
    script = prometheus["entrypoint"][-1]
    assert f'"$$BLUEBUTTON_ADMIN_API_KEY" > {KEY_FILE}' in script and "umask 077" in script
    assert "exec /bin/prometheus --config.file=/etc/prometheus/prometheus.yml" in script
