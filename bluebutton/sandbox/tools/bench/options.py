"""`bench sync`'s command line."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass
class Options:
    grants: int
    claims: int
    rtt_ms: int
    new_share: float
    new_claims: int
    concurrency: int
    sample: int
    database_url: str | None
    keep_database: bool
    api_version: int = 2


def parse(argv: list[str] | None, description: str) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bluebutton.sandbox.tools.bench sync", description=description
    )
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=20, help="claims per beneficiary")
    parser.add_argument("--rtt-ms", type=int, default=100, help="latency the emulated CMS adds")
    parser.add_argument("--new-share", type=float, default=0.1, help="share of grants given new claims")
    parser.add_argument("--new-claims", type=int, default=2, help="new claims each of those gets")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="BLUEBUTTON_SYNC_CONCURRENCY of each worker"
    )
    parser.add_argument("--sample", type=int, default=50, help="grants whose claims time the validator")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BLUEBUTTON_DATABASE_URL"),
        help="a PostgreSQL server to create a fresh database on (default: BLUEBUTTON_DATABASE_URL, "
        "else an embedded server in a temporary directory)",
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--api-version",
        type=int,
        choices=(2, 3),
        default=2,
        help="the Blue Button API version the grants use",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.grants <= 30_000:
        parser.error("--grants must be 1..30000 (the emulator's users)")
    if not 0 < args.new_share <= 1:
        parser.error("--new-share must be in (0, 1]")
    return Options(
        args.grants,
        args.claims,
        args.rtt_ms,
        args.new_share,
        args.new_claims,
        args.concurrency,
        max(1, min(args.sample, args.grants)),
        args.database_url,
        args.keep_database,
        args.api_version,
    )
