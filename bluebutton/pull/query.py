"""The `GET /bluebutton/fhir` query: its rules, checked before anything is sent, and its CMS form.

The rules are CMS's own (bb2-api.md §3.1), applied here so a bad value is a clear 422 from us rather
than a round trip that ends in CMS's terse 400.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bluebutton.cms.versions import ApiVersion

ResourceType = Literal["Patient", "Coverage", "ExplanationOfBenefit"]

EOB_TYPES = ("carrier", "pde", "dme", "hha", "hospice", "inpatient", "outpatient", "snf")

# FHIR id: 1-64 of [A-Za-z0-9-.]; CMS's synthetic beneficiary ids are negative numbers.
FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"

_DATE_PARAM = re.compile(
    r"^(?P<prefix>lt|le|gt|ge)"
    r"(?P<value>\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?)$"
)

# CMS paging maximum (bb2-api.md §3.1: `_count` above 50 is a 400).
PAGE_SIZE = 50

# A date range is one lower and one upper bound (`ge` + `le`, bb2-api.md §3.1): a third bound can
# only repeat or contradict one of them. With these bounds the CMS URL stays a few hundred bytes.
MAX_DATE_BOUNDS = 2


def _short(text: str, limit: int = 24) -> str:
    """A caller's value, quoted and cut, for an error message (it may be kilobytes long)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _bounded(name: str, values: list[str]) -> list[str]:
    if len(values) > MAX_DATE_BOUNDS:
        raise ValueError(
            f"{name} given {len(values)} times; at most {MAX_DATE_BOUNDS}, a lower and an upper "
            f"bound, e.g. {name}=ge2023-01-01&{name}=lt2024-01-01"
        )
    return values


def _check_date_param(name: str, value: str) -> str:
    match = _DATE_PARAM.match(value)
    if match is None:
        raise ValueError(
            f"{name} {_short(value)} must be a FHIR date with an lt/le/gt/ge prefix, e.g. "
            "ge2023-01-01 or lt2024-06-30T00:00:00Z"
        )
    text = match["value"]
    try:
        if len(text) == 7:
            date.fromisoformat(text + "-01")
        elif len(text) == 10:
            date.fromisoformat(text)
        elif len(text) > 10:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"{name} {_short(value)} is not a real date or time") from e
    return value


class FhirQuery(BaseModel):
    """Query parameters of `GET /bluebutton/fhir`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource_type: ResourceType = Field(
        description="Which CMS search to run: Patient, Coverage or ExplanationOfBenefit."
    )
    patient: Annotated[str | None, Field(pattern=FHIR_ID)] = Field(
        default=None,
        examples=["-19990000000043"],
        description=(
            "Beneficiary id (e.g. -19990000000043, BBUser00042 of the demo), the `patient` of the "
            "token response. "
            "Optional: CMS scopes every search to the token's beneficiary anyway."
        ),
    )
    return_cms: bool = Field(
        default=False,
        description="true: answer with the merged CMS Bundle; false: with connect's envelope(s).",
    )
    type: str | None = Field(
        default=None,
        description=(
            "ExplanationOfBenefit only: comma list of " + ", ".join(EOB_TYPES) + ", each at most once."
        ),
        examples=["carrier,pde"],
    )
    service_date: list[str] = Field(
        default_factory=list,
        description=f"ExplanationOfBenefit only, at most {MAX_DATE_BOUNDS} (a range): e.g. ge2023-01-01.",
    )
    version: ApiVersion | None = Field(
        default=None,
        description=(
            "The Blue Button API version the token belongs to (tokens are version-bound): 2 or 3; "
            "default BLUEBUTTON_CMS_API_VERSION. The answer says which in `X-Blue-Button-Version`."
        ),
        examples=[3],
    )
    last_updated: list[str] = Field(
        default_factory=list,
        description=(
            f"`_lastUpdated` bound with an lt/le/gt/ge prefix, e.g. gt2024-01-01; at most "
            f"{MAX_DATE_BOUNDS} (a range)."
        ),
    )

    @field_validator("type")
    @classmethod
    def _check_types(cls, value: str | None) -> str | None:
        if value is None:
            return None
        codes = [code.strip() for code in value.split(",")]
        if len(codes) > len(EOB_TYPES):
            raise ValueError(
                f"{len(codes)} claim types listed; at most {len(EOB_TYPES)}, each of "
                f"{', '.join(EOB_TYPES)} once (omit type for all of them)"
            )
        unknown = [code for code in codes if code not in EOB_TYPES]
        if unknown:
            raise ValueError(
                f"unknown claim type(s) {', '.join(_short(c) for c in unknown)}; "
                f"use a comma list of {', '.join(EOB_TYPES)}"
            )
        repeated = sorted({code for code in codes if codes.count(code) > 1})
        if repeated:
            raise ValueError(f"claim type(s) {', '.join(repeated)} listed more than once; list each once")
        return ",".join(codes)

    @field_validator("service_date")
    @classmethod
    def _check_service_dates(cls, values: list[str]) -> list[str]:
        return [_check_date_param("service_date", v) for v in _bounded("service_date", values)]

    @field_validator("last_updated")
    @classmethod
    def _check_last_updated(cls, values: list[str]) -> list[str]:
        return [_check_date_param("last_updated", v) for v in _bounded("last_updated", values)]

    @model_validator(mode="after")
    def _eob_only_filters(self) -> FhirQuery:
        if self.resource_type != "ExplanationOfBenefit":
            used = [n for n in ("type", "service_date") if getattr(self, n)]
            if used:
                raise ValueError(f"{' and '.join(used)} only apply to resource_type=ExplanationOfBenefit")
        return self

    def cms_params(self) -> list[tuple[str, str]]:
        """CMS search parameters; the beneficiary id goes bare under the resource's own name."""
        params: list[tuple[str, str]] = [("_count", str(PAGE_SIZE))]
        if self.patient is not None:
            name = {"Patient": "_id", "Coverage": "beneficiary", "ExplanationOfBenefit": "patient"}
            params.append((name[self.resource_type], self.patient))
        if self.type:
            params.append(("type", self.type))
        params += [("service-date", v) for v in self.service_date]
        params += [("_lastUpdated", v) for v in self.last_updated]
        return params


def repeated_single_values(names: list[str]) -> list[str]:
    """The parameters of `FhirQuery` that take one value but were given several (in `names`, the
    query's parameter names in order): FastAPI keeps only the last, which would run a search the
    caller did not ask for."""
    single = {
        name for name, field in FhirQuery.model_fields.items() if get_origin(field.annotation) is not list
    }
    return sorted({name for name in names if name in single and names.count(name) > 1})
