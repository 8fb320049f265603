"""Blue Button 2.0 scopes: what an authorize request is granted and what each token may read.

Rules from bb2-api.md §2.10 and §2.11: the supported list of the SMART configuration (plus `.r` and
`.s`), `.r` + `.s` requested together condensed to `.rs`, no `scope` parameter meaning everything
the app is registered for, demographics withheld removing `profile` and `patient/Patient.*`, search
needing `.read`/`.rs`/`.s` and read needing `.read`/`.rs`/`.r`.
"""

from __future__ import annotations

from typing import Literal

RESOURCES = ("Patient", "Coverage", "ExplanationOfBenefit")
SUPPORTED_SCOPES = frozenset(
    ["openid", "profile", "launch/patient"]
    + [f"patient/{r}.{a}" for r in RESOURCES for a in ("read", "rs", "r", "s")]
)
# What an app registered for everything gets when the authorize request names no scope (PYSDK).
DEFAULT_SCOPES = tuple(
    sorted(
        ["openid", "profile", "launch/patient"]
        + [f"patient/{r}.{a}" for r in RESOURCES for a in ("read", "rs")]
    )
)
# Withheld when the beneficiary declines to share demographics (BENE_PERSONAL_INFO_SCOPES).
DEMOGRAPHIC_SCOPES = frozenset(["profile"] + [f"patient/Patient.{a}" for a in ("read", "rs", "r", "s")])


def granted_scopes(requested: str | None) -> tuple[str, ...]:
    """Scopes granted for an authorize `scope` value: known ones, `.r` + `.s` condensed to `.rs`."""
    if requested is None:
        return DEFAULT_SCOPES
    wanted = {s for s in requested.split() if s in SUPPORTED_SCOPES}
    for resource in RESOURCES:
        r, s = f"patient/{resource}.r", f"patient/{resource}.s"
        if r in wanted and s in wanted:
            wanted -= {r, s}
            wanted.add(f"patient/{resource}.rs")
    return tuple(sorted(wanted))


def without_demographics(scopes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for s in scopes if s not in DEMOGRAPHIC_SCOPES)


def within(requested: tuple[str, ...], original: tuple[str, ...]) -> bool:
    """Whether a refresh `scope` narrows the original (a `.rs` also covers `.r` and `.s`)."""

    def covered(scope: str) -> bool:
        if scope in original:
            return True
        base, _, action = scope.rpartition(".")
        return action in ("r", "s") and f"{base}.rs" in original

    return all(covered(s) for s in requested)


def allows(scopes: tuple[str, ...], resource: str, interaction: Literal["read", "search"]) -> bool:
    """Search needs `.read`/`.rs`/`.s`, read needs `.read`/`.rs`/`.r` (READ_SEARCH_SCOPE_LOOKUP)."""
    actions = ("read", "rs", "s") if interaction == "search" else ("read", "rs", "r")
    return any(f"patient/{resource}.{a}" in scopes for a in actions)
