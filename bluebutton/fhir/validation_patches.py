"""Run-time patches to fhir_core that make fhir.resources validation faster with the same results:
its per-element checks, planned once per class.

fhir_core 1.1 runs two Python validators on every element it builds (some 675 per claim), and
each asks its class the same questions every time: which fields are lists of complex types (where
a null is refused), which primitives are required, which fields form a `value[x]` choice. The
answers are fixed once a class is built, so here they are worked out on a class's first instance
and kept; the validators then only look at the data. A nested element given as a dict is also
built once, where the library validates it and then runs its after-checks a second time.
Together this halves the cost of a claim (about 6 ms to 3 ms on the benchmark machine).

pydantic captured both validators in every model's schema when the classes were built, so their
code is replaced in place: the function objects stay, the schemas are not rebuilt. The checks
below restate fhir_core 1.1.12's (same order, same errors, same messages), and nothing is changed
for any other version. `tests/fhir/test_validation_patches.py` compares every result, pass or fail and each
error's location, message and type, with the untouched library on CMS samples, the sandbox's
valid and invalid claims and targeted mutations. Used only in the validation workers, and
`BLUEBUTTON_FAST_VALIDATION=false` turns it off; `/health` says
whether the workers run with them (`"validation": "fast"`) or without (`"standard"`).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import fhir_core.fhirabstractmodel as fam
import fhir_core.types as fhir_types
from fhir_core.utils import is_list_type, is_primitive_type
from pydantic_core import PydanticCustomError, ValidationError

CHECKED_VERSIONS = {"fhir_core": "1.1.12", "fhir.resources": "8.3.0", "pydantic": "2.14.4"}

# (field name, alias) of the fields that are lists of a complex type, per class.
_null_plans: dict[type[Any], tuple[tuple[str, str | None], ...]] = {}
# Per class: ((attribute, alias, extension attribute) of each required primitive,
#             (fields, required) of each choice group), or None when there is nothing to check.
_after_plans: dict[type[Any], Any] = {}
_UNSET = object()
_installed = False


def installed() -> bool:
    return _installed


def matches_checked_versions() -> bool:
    return all(version(name) == wanted for name, wanted in CHECKED_VERSIONS.items())


def _null_plan(cls: type[Any]) -> tuple[tuple[str, str | None], ...]:
    plan = tuple(
        (name, field.alias)
        for name, field in cls.__pydantic_fields__.items()
        if is_list_type(field) and not is_primitive_type(field) and not name.endswith("__ext")
    )
    _null_plans[cls] = plan
    return plan


def _reject_null_complex_elements(cls: Any, data: Any, *, plans: Any = None, plan_for: Any = None) -> Any:
    # Becomes the code of FHIRAbstractModel.reject_null_complex_elements; `plans` and `plan_for`
    # arrive as keyword defaults set with it.
    if not isinstance(data, dict):
        return data
    plan = plans.get(cls)
    if plan is None:
        plan = plan_for(cls)
    errors: list[Any] | None = None
    for name, alias in plan:
        key = alias if alias and alias in data else name
        value = data.get(key)
        if not isinstance(value, list):
            continue
        for item in value:
            if item is None:
                if errors is None:
                    errors = []
                errors.append(
                    {
                        "type": PydanticCustomError(
                            "list_type", "None is not allowed as an element of {field}", {"field": key}
                        ),
                        "loc": (key,),
                        "input": value,
                    }
                )
                break
    if errors:
        raise ValidationError.from_exception_data(cls.__name__, errors)
    return data


def _after_plan(instance: Any) -> Any:
    cls = type(instance)
    fields = cls.__pydantic_fields__
    required = []
    required_fields = instance.get_required_fields()
    if required_fields:
        aliases = instance.get_alias_mapping()
        for name, extension in required_fields:
            key = aliases[name]
            required.append((key, fields[key].alias, extension))
    choices = []
    for prefix, group in instance.get_one_of_many_fields().items():
        extra = fields[group[0]].json_schema_extra
        assert extra["one_of_many"] == prefix  # the library's own assertion, now once per class
        choices.append((group, extra["one_of_many_required"] is True))
    plan = (tuple(required), tuple(choices)) if required or choices else None
    _after_plans[cls] = plan
    return plan


def _check_required_and_choices(instance: Any, plan: Any) -> None:
    required, choices = plan
    missing: Any = object()
    errors: list[Any] = []
    for key, alias, extension in required:
        value = getattr(instance, key, missing)
        if value not in (missing, None):
            continue
        ext_value = getattr(instance, extension, missing) if extension is not None else None
        missing_ext = True
        if ext_value not in (missing, None):
            if isinstance(ext_value, dict):
                missing_ext = len(ext_value.get("extension", [])) == 0
            elif ext_value.extension and len(ext_value.extension) > 0:
                missing_ext = False
        if missing_ext:
            errors.append(
                {
                    "type": PydanticCustomError(
                        "model_field_validation.missing",
                        "Value for the field '{field_name}' is required.",
                        {"field_name": alias},
                    ),
                    "loc": (alias,),
                    "input": value,
                }
            )
    if errors:
        raise ValidationError.from_exception_data(type(instance).__name__, errors)
    for group, is_required in choices:
        found = False
        for name in group:
            if getattr(instance, name, None) is not None:
                if found:
                    raise ValueError(
                        f"Any of one field value is expected from this list {group}, but got multiple!"
                    )
                found = True
        if is_required and not found:
            raise ValueError(f"Expect any of field value from this list {group}.")


def _validate_after_model_construction(
    self: Any, *, plans: Any = None, plan_for: Any = None, check: Any = None, unset: Any = None
) -> Any:
    # Becomes the code of FHIRAbstractModel.validate_after_model_construction.
    plan = plans.get(type(self), unset)
    if plan is unset:
        plan = plan_for(self)
    if plan is not None:
        check(self, plan)
    return self


def _swap_code(function: Any, replacement: Any, keywords: dict[str, Any]) -> None:
    function.__code__ = replacement.__code__
    function.__kwdefaults__ = keywords


def install() -> bool:
    """Apply the patches to this process (idempotent); False where the versions differ."""
    global _installed
    if _installed:
        return True
    if not matches_checked_versions():
        return False
    model = fam.FHIRAbstractModel
    _swap_code(
        model.__dict__["reject_null_complex_elements"].__func__,
        _reject_null_complex_elements,
        {"plans": _null_plans, "plan_for": _null_plan},
    )
    _swap_code(
        model.__dict__["validate_after_model_construction"],
        _validate_after_model_construction,
        {
            "plans": _after_plans,
            "plan_for": _after_plan,
            "check": _check_required_and_choices,
            "unset": _UNSET,
        },
    )
    library_validator = fhir_types.FhirBase.__dict__["fhir_model_validator"].__func__

    def fhir_model_validator(cls: Any, value: Any, model_klass: Any) -> Any:
        # model_validate(dict) builds the element and then runs its after-checks again; one
        # construction gives the same instance. Anything unusual goes to the library's code.
        if isinstance(value, dict):
            value = model_klass(**value)
            if isinstance(value, model_klass) and model_klass.__resource_type__ == value.__resource_type__:
                return value
        return library_validator(cls, value, model_klass)

    fhir_types.FhirBase.fhir_model_validator = classmethod(fhir_model_validator)  # type: ignore[assignment]
    _installed = True
    return True
