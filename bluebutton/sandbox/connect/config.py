"""The connect emulator's settings: `ConnectSandboxConfig` and the command line that fills it.

Each flag of `python -m bluebutton.sandbox.connect` can also come from the environment as
`BLUEBUTTON_SANDBOX_CONNECT_<FLAG>` (`--max-record-bytes` → `..._MAX_RECORD_BYTES`; the switches
`--no-tls` and `--no-validate` take true/false). A flag on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CERT_DIR = Path(__file__).resolve().parents[3] / "local-certs"
ENV_PREFIX = "BLUEBUTTON_SANDBOX_CONNECT_"
KAFKA_RECORD_OVERHEAD = 36
"""Bytes of framing librdkafka adds to a record and counts against `message.max.bytes`: with the
default 1,000,000 it reproduces connect's measured limit (999,964-byte envelopes stored, one more
refused; lfh-connect.md §6)."""


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True, slots=True)
class ConnectSandboxConfig:
    """Start-up settings; `rate_limit` and `validate` can be changed later via /_sandbox/faults."""

    host: str = "127.0.0.1"
    port: int = 5000
    control_port: int | None = None  # `/_sandbox/...` only; stays open while `down`
    tls: bool = True
    tls_cert: Path = CERT_DIR / "server.pem"
    tls_key: Path = CERT_DIR / "server.key"
    db: Path = Path("connect-sandbox.sqlite3")
    rate_limit: int = 10
    max_record_bytes: int = 1_000_000
    validate: bool = True
    null_location_share: float = 0.0  # share of stored POSTs answered without a location (§7)
    lfh_id: str = field(default_factory=socket.gethostname)
    log_level: str = "info"  # uvicorn's; the demo asks for warning unless --verbose

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.control_port is not None:
            if not 0 <= self.control_port <= 65535:
                raise ValueError(f"control_port must be 0-65535, got {self.control_port}")
            if self.control_port == self.port != 0:
                raise ValueError("control_port must differ from port")
        if self.rate_limit < 0:
            raise ValueError(f"rate_limit must be >= 0, got {self.rate_limit}")
        if not 0.0 <= self.null_location_share <= 1.0:
            raise ValueError(f"null_location_share must be 0-1, got {self.null_location_share}")
        if self.max_record_bytes <= KAFKA_RECORD_OVERHEAD:
            raise ValueError(f"max_record_bytes must be > {KAFKA_RECORD_OVERHEAD}")


def _env_flag(name: str) -> bool:
    value = os.environ.get(ENV_PREFIX + name, "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise SystemExit(f"{ENV_PREFIX}{name}: expected true or false, got {value!r}")


def parse_args(argv: Sequence[str] | None = None) -> ConnectSandboxConfig:
    """CLI flags, each defaulting to `BLUEBUTTON_SANDBOX_CONNECT_<FLAG>`, then to the config's."""
    defaults = ConnectSandboxConfig()

    def env(name: str, default: object) -> Any:
        # argparse runs `type=` over string defaults, so env values are parsed like flags.
        return os.environ.get(ENV_PREFIX + name, default)

    parser = argparse.ArgumentParser(
        prog="python -m bluebutton.sandbox.connect",
        description="Offline LinuxForHealth connect 0.42.0 emulator (loopback use only).",
    )
    parser.add_argument("--host", default=env("HOST", defaults.host))
    parser.add_argument("--port", type=int, default=env("PORT", defaults.port))
    parser.add_argument(
        "--control-port",
        type=int,
        default=env("CONTROL_PORT", None),
        help="a second port serving only /_sandbox/... (it stays open while the `down` fault is on)",
    )
    parser.add_argument("--tls-cert", type=Path, default=env("TLS_CERT", defaults.tls_cert))
    parser.add_argument("--tls-key", type=Path, default=env("TLS_KEY", defaults.tls_key))
    parser.add_argument("--no-tls", action="store_true", default=_env_flag("NO_TLS"))
    parser.add_argument("--db", type=Path, default=env("DB", defaults.db), help="SQLite file")
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=env("RATE_LIMIT", defaults.rate_limit),
        help="requests per second per client IP and path (0 = off)",
    )
    parser.add_argument(
        "--max-record-bytes", type=int, default=env("MAX_RECORD_BYTES", defaults.max_record_bytes)
    )
    parser.add_argument("--no-validate", action="store_true", default=_env_flag("NO_VALIDATE"))
    parser.add_argument(
        "--null-location-share",
        type=float,
        default=env("NULL_LOCATION_SHARE", defaults.null_location_share),
        help="share (0-1) of stored POSTs answered 200 without data_record_location, like connect's "
        "Kafka callback race",
    )
    parser.add_argument("--lfh-id", default=env("LFH_ID", defaults.lfh_id))
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=env("LOG_LEVEL", defaults.log_level),
        help="the server's log level (default info)",
    )
    args = parser.parse_args(argv)
    try:
        return ConnectSandboxConfig(
            host=args.host,
            port=args.port,
            control_port=args.control_port,
            tls=not args.no_tls,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            db=args.db,
            rate_limit=args.rate_limit,
            max_record_bytes=args.max_record_bytes,
            validate=not args.no_validate,
            null_location_share=args.null_location_share,
            lfh_id=args.lfh_id,
            log_level=args.log_level,
        )
    except ValueError as e:
        parser.error(str(e))
