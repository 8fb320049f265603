"""Every setting of the service, read from `BLUEBUTTON_*` environment variables or a `.env` file.

Validators refuse unsafe or impossible values at start-up so a bad deployment fails loudly, naming
the variable, instead of failing on the first request.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, HttpUrl, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bluebutton.fhir.bundles import MAX_BUNDLE_BYTES

CERT_DIR = Path(__file__).resolve().parent.parent / "local-certs"
EMBEDDED_DATA_DIR = Path(__file__).resolve().parent.parent / ".data" / "postgres"

DEFAULT_SCOPES = "openid profile patient/Patient.read patient/Coverage.read patient/ExplanationOfBenefit.read"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLUEBUTTON_", env_file=".env", extra="ignore", frozen=True)

    cms_base_url: HttpUrl = HttpUrl("https://sandbox.bluebutton.cms.gov")
    cms_api_version: Literal[2, 3] = 2
    cms_client_id: str | None = None
    cms_client_secret: SecretStr | None = None
    cms_scopes: str = DEFAULT_SCOPES
    cms_include_not_final: bool = False  # v3: shared-system (not yet final) claims too (bb2-v3.md §4)
    callback_url: HttpUrl = HttpUrl("https://localhost:5200/bluebutton/authorize_callback")
    lfh_url: HttpUrl = HttpUrl("https://localhost:5000")
    ca_file: Path | None = None

    host: str = "0.0.0.0"  # noqa: S104 - a service listens on all interfaces by default
    port: int = Field(default=5200, ge=1, le=65535)
    tls: bool = True
    tls_cert: Path = CERT_DIR / "server.pem"
    tls_key: Path = CERT_DIR / "server.key"

    lfh_max_bundle_bytes: int = Field(default=600_000, ge=10_000)
    lfh_timeout_seconds: float = Field(default=120.0, gt=0)
    lfh_rate_limit_retries: int = Field(default=20, ge=0)
    lfh_rate_limit_wait_seconds: float = Field(default=1.0, ge=0)
    lfh_rate_limit_jitter_seconds: float = Field(default=0.5, ge=0)
    pull_timeout_seconds: float = Field(default=300.0, gt=0)  # fetch + validate + forward, in all
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)  # how long an Idempotency-Key is kept

    cms_timeout_seconds: float = Field(default=60.0, gt=0)
    cms_max_pages: int = Field(default=200, ge=1)
    cms_retry_attempts: int = Field(default=4, ge=1)
    cms_retry_backoff_seconds: float = Field(default=0.5, ge=0)
    cms_retry_budget_seconds: float = Field(default=30.0, ge=0)
    cms_fetch_concurrency: int = Field(default=4, ge=1, le=16)

    validation_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    fast_validation: bool = True

    state_store: str = "memory"
    state_ttl_seconds: int = Field(default=600, ge=30)
    state_max_pending: int = Field(default=10_000, ge=1)

    # Grant keeping (bluebutton/sync): off unless a database is set.
    database_url: SecretStr | None = None
    database_migrate: bool = True
    database_pool_size: int = Field(default=10, ge=2, le=100)
    embedded_database_dir: Path = EMBEDDED_DATA_DIR
    token_keys: SecretStr | None = None
    admin_api_key: SecretStr | None = None
    sync_worker: Literal["embedded", "off"] = "embedded"
    sync_interval_seconds: int = Field(default=86_400, ge=60)
    sync_concurrency: int = Field(default=8, ge=1, le=64)
    sync_refresh_margin_seconds: int = Field(default=300, ge=0)
    sync_retry_attempts: int = Field(default=3, ge=0, le=20)
    sync_retry_wait_seconds: int = Field(default=10, ge=0)
    sync_sweep_cron: str = "* * * * *"
    sync_heartbeat_seconds: float = Field(default=10.0, gt=0)
    sync_stalled_seconds: float = Field(default=60.0, gt=0)
    # A sync POST waits past librdkafka's 300 s message timeout, so connect's answer is final: a
    # run has no caller waiting, and a POST given up on is the one way to store a Bundle twice.
    sync_lfh_timeout_seconds: float = Field(default=330.0, gt=0, le=3600)
    # How long a worker keeps the ledger rows of a Bundle connect stored, waiting for the database.
    sync_commit_deadline_seconds: float = Field(default=86_400.0, gt=0)

    @field_validator("cms_base_url", "lfh_url")
    @classmethod
    def _no_query(cls, url: HttpUrl) -> HttpUrl:
        if url.query or url.fragment:
            raise ValueError("give a base URL without a query or fragment")
        return url

    @field_validator("lfh_max_bundle_bytes")
    @classmethod
    def _fits_one_connect_record(cls, value: int) -> int:
        if value > MAX_BUNDLE_BYTES:
            raise ValueError(
                f"BLUEBUTTON_LFH_MAX_BUNDLE_BYTES={value} is more than {MAX_BUNDLE_BYTES}: connect "
                "stores a Bundle base64-encoded (4/3 of its JSON) in one Kafka record of at most "
                "999,964 bytes with its envelope, and answers 500 to anything larger"
            )
        return value

    @field_validator("cms_api_version", mode="before")
    @classmethod
    def _version_from_text(cls, value: object) -> object:
        # Environment variables are text; Literal[2, 3] only matches the integers.
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("state_store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value != "memory" and urlsplit(value).scheme not in ("redis", "rediss"):
            raise ValueError("use 'memory' or a redis://host:port/db URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        text = value.get_secret_value()
        if text != "embedded" and urlsplit(text).scheme not in ("postgresql", "postgres"):
            raise ValueError("use 'embedded' or a postgresql://user@host:port/database URL")
        return value

    @field_validator("token_keys")
    @classmethod
    def _keys_decode(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        for number, key in enumerate(value.get_secret_value().split(","), start=1):
            try:
                raw = base64.b64decode(key.strip(), validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    f"key {number} is not base64 of 32 bytes (make one with: python -m bluebutton keygen)"
                )
        return value

    @field_validator("admin_api_key")
    @classmethod
    def _long_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if len(value.get_secret_value()) < 32:
            raise ValueError(
                "use at least 32 characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @model_validator(mode="after")
    def _database_needs_keys(self) -> Self:
        if self.database_url is not None and self.token_keys is None:
            raise ValueError(
                "BLUEBUTTON_TOKEN_KEYS: required when BLUEBUTTON_DATABASE_URL is set (stored tokens "
                "are encrypted with it); make one with: python -m bluebutton keygen"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_exist(self) -> Self:
        if self.tls:
            for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
                if not path.is_file():
                    raise ValueError(
                        f"BLUEBUTTON_{name.upper()}: no such file: {path} "
                        "(run scripts/make_certs.py, or set BLUEBUTTON_TLS=false)"
                    )
        return self

    @property
    def cms_origin(self) -> str:
        """The CMS base URL without a trailing slash (a path prefix, if any, is kept)."""
        return str(self.cms_base_url).rstrip("/")

    @property
    def cms_fhir_base(self) -> str:
        """FHIR base with its trailing slash, e.g. https://sandbox.bluebutton.cms.gov/v2/fhir/."""
        return self.fhir_base(self.cms_api_version)

    @property
    def cms_oauth_base(self) -> str:
        return self.oauth_base(self.cms_api_version)

    def fhir_base(self, version: int) -> str:
        """The FHIR base of one API version: a deployment speaks v2 and v3 at once."""
        return f"{self.cms_origin}/v{version}/fhir/"

    def oauth_base(self, version: int) -> str:
        return f"{self.cms_origin}/v{version}/o/"

    @property
    def lfh_origin(self) -> str:
        return str(self.lfh_url).rstrip("/")

    @property
    def sync_enabled(self) -> bool:
        return self.database_url is not None

    # Events (bluebutton/events): the outbox delivered to NATS JetStream and signed webhooks.
    nats_url: SecretStr | None = None
    nats_nkey_seed_file: Path | None = None
    webhook_urls: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_retry_wait_seconds: float = Field(default=10.0, ge=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    events_retention_days: int = Field(default=90, ge=1)
    metrics_public: bool = False

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if urlsplit(value.get_secret_value()).scheme not in ("nats", "tls"):
            raise ValueError("use nats://host:4222 (or tls://host:4222 for TLS)")
        return value

    @field_validator("nats_nkey_seed_file")
    @classmethod
    def _seed_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_targets_safe(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for url in (u.strip() for u in value.split(",") if u.strip()):
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError(f"{parts.scheme}://{parts.hostname}...: not an absolute http(s) URL")
            if parts.scheme == "http" and not _loopback(parts.hostname):
                raise ValueError(
                    f"http://{parts.hostname}...: webhooks go over HTTPS (plain HTTP only to a loopback "
                    "receiver such as 127.0.0.1)"
                )
        return value

    @model_validator(mode="after")
    def _webhooks_need_secret(self) -> Self:
        if self.webhook_urls and self.webhook_secret is None:
            raise ValueError(
                "BLUEBUTTON_WEBHOOK_SECRET: required with BLUEBUTTON_WEBHOOK_URLS (receivers verify "
                "the signature with it); e.g. whsec_ followed by base64 of 32 random bytes"
            )
        if self.webhook_secret is not None:
            from bluebutton.events.signing import secret_key

            try:
                key = secret_key(self.webhook_secret.get_secret_value())
            except ValueError as e:
                raise ValueError(f"BLUEBUTTON_WEBHOOK_SECRET: {e}") from None
            if len(key) < 24:
                raise ValueError("BLUEBUTTON_WEBHOOK_SECRET: use at least 24 bytes")
        return self

    @property
    def webhook_targets(self) -> list[str]:
        return [u.strip() for u in (self.webhook_urls or "").split(",") if u.strip()]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_error(error: Exception) -> str:
    """One line per bad setting, naming the environment variable, for start-up failures."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    lines = []
    for err in error.errors(include_url=False, include_input=False):
        loc = [str(part) for part in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if loc:
            lines.append(f"BLUEBUTTON_{loc[0].upper()}: {msg}")
        else:
            lines.append(msg)
    return "\n".join(lines)
