"""`bench sync`'s report: the table, and a last line a script can read."""

from __future__ import annotations

import os
import uuid
from typing import Any

from bluebutton.sandbox.tools.bench.options import Options
from bluebutton.sandbox.tools.bench.rounds import Round
from bluebutton.sandbox.tools.bench.speed import Speed
from bluebutton.sync.runner import RESOURCE_TYPES


def _cpu(r: Round) -> str:
    return ", ".join(
        f"{name} {own:.0f}" + (f" + {children:.0f} in its children" if children >= 0.5 else "")
        for name, (own, children) in r.cpu.items()
    )


def _types(r: Round, key: str) -> str:
    return ", ".join(f"{k} {r.resources[k][key]}" for k in RESOURCE_TYPES)


def report(options: Options, found: dict[str, Any]) -> list[str]:
    first: Round = found["first"]
    second: Round = found["second"]
    changed: set[uuid.UUID] = found["changed"]
    speed: Speed = found["speed"]
    cores = os.cpu_count() or 1
    n = options.grants
    first_rate = first.validated() / first.seconds / cores
    in_pool = first.validated() / max(first.validation_cpu(), 1e-9)
    own_rate = speed.entries / max(speed.cpu_seconds, 1e-9)
    sent = first.entries_sent + second.entries_sent
    once = "yes" if sent == found["ledger_rows"] else "no"
    first_claims = first.validated(("ExplanationOfBenefit",))
    requests_2 = sum(second.cms_requests[k] for k in RESOURCE_TYPES)
    requests_1 = sum(first.cms_requests[k] for k in RESOURCE_TYPES)
    only_new = second.grants_posting == changed
    resent = second.validated() - len(changed) * options.new_claims
    lines = [
        f"bench sync: {n} grants x {options.claims} claims on Blue Button v{options.api_version}, "
        f"{options.rtt_ms} ms added per CMS request, "
        f"2 worker processes x {options.concurrency} concurrent grants, {cores} cores",
        f"enrolment (emulator login + consent, code exchange, grant store): {found['enrol_seconds']:.1f} s",
        f"first round: {first.seconds:.1f} s, {n / first.seconds * 60:.0f} grants/min (all queued after "
        f"{first.deferred_seconds:.1f} s); runs "
        f"{dict(first.statuses)}; new: {_types(first, 'new')}",
        f"  CMS requests {requests_1} ({requests_1 / n:.2f} per grant; token {first.cms_requests['token']}); "
        f"connect POSTs {first.posts} (Bundles recorded {first.bundles})",
        f"  validated {first.validated()} resources ({first_claims} claims, validation "
        f"{'/'.join(sorted(set(found['worker_modes'])))}): {first_rate:.0f} per second "
        f"per core (wall time x {cores} cores), {in_pool:.0f} per CPU second of the validation "
        f"processes; the validator alone on {speed.entries} of the same resources ({speed.claims} "
        f"claims, {options.sample} grants, validation {speed.mode}): {own_rate:.0f} per CPU second "
        f"({speed.entries / speed.seconds:.0f} per wall second); ratios {first_rate / own_rate:.2f} "
        f"and {in_pool / own_rate:.2f}",
        f"  CPU seconds: {_cpu(first)} (PostgreSQL's not counted)",
        f"incremental round ({len(changed)} grants got {options.new_claims} new claims each): "
        f"{second.seconds:.1f} s, {n / second.seconds * 60:.0f} grants/min (all queued after "
        f"{second.deferred_seconds:.1f} s); runs {dict(second.statuses)}",
        f"  CMS requests {requests_2} ({requests_2 / n:.2f} per grant; Patient "
        f"{second.cms_requests['Patient']}, Coverage {second.cms_requests['Coverage']}, "
        f"ExplanationOfBenefit {second.cms_requests['ExplanationOfBenefit']}, token "
        f"{second.cms_requests['token']}); CPU seconds: {_cpu(second)}",
        f"  connect POSTs {second.posts} from {len(second.grants_posting)} grants (only the grants "
        f"with new claims: {'yes' if only_new else 'NO'}); fetched: {_types(second, 'fetched')}; "
        f"validated {second.validated()} (new {second.resources['ExplanationOfBenefit']['new']}, "
        f"changed {second.validated() - sum(second.resources[k]['new'] for k in RESOURCE_TYPES)})",
        f"  unchanged resources validated or sent again: {resent}; resources sent to connect in both "
        f"rounds {sent}, ledger rows {found['ledger_rows']} (each sent once: "
        f"{once})",
        f"database size: {found['database_bytes'] / 1e6:.1f} MB",
        "peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in found["rss"].items()),
        f"bench sync api_version={options.api_version} grants={n} claims={options.claims} "
        f"rtt_ms={options.rtt_ms} "
        f"first_s={first.seconds:.1f} first_grants_per_min={n / first.seconds * 60:.0f} "
        f"incremental_s={second.seconds:.1f} incremental_cms_requests={requests_2} "
        f"incremental_posts={second.posts} only_new={'yes' if only_new else 'no'} "
        f"validated_per_core_s={first_rate:.0f} validated_per_cpu_s={in_pool:.0f} "
        f"validator_per_cpu_s={own_rate:.0f} "
        f"db_mb={found['database_bytes'] / 1e6:.1f} resent={resent} sent_once={once}",
    ]
    return lines
