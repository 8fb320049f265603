"""The error tree drawn in `errors.py`'s docstring is the one the classes form: every class is
drawn, under its first base, with its status and issue code, and marked ↻ exactly when it is a
`TransientUpstreamError`."""

from __future__ import annotations

import inspect
import re

import pytest

from bluebutton import errors

ROW = re.compile(
    r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<status>\d{3})\s+(?P<code>[a-z-]+)\s*(?P<rest>.*)$"
)


def drawn() -> dict[str, tuple[str | None, int, str, bool]]:
    """name → (parent drawn above it, status, code, marked transient), read from the docstring."""
    assert errors.__doc__ is not None
    rows: dict[str, tuple[str | None, int, str, bool]] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        match = ROW.match(line.removeprefix("    "))
        if match is None:
            continue
        depth = len(match["indent"]) // 4
        del stack[depth:]
        parent = stack[-1][1] if stack else None
        rows[match["name"]] = (parent, int(match["status"]), match["code"], match["rest"].startswith("↻"))
        stack.append((depth, match["name"]))
    return rows


def error_classes() -> list[type[errors.BlueButtonError]]:
    return [
        value
        for _, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, errors.BlueButtonError) and value.__module__ == errors.__name__
    ]


def test_the_drawing_has_every_class_and_nothing_else() -> None:
    assert sorted(drawn()) == sorted(cls.__name__ for cls in error_classes())


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_each_class_is_where_the_drawing_puts_it(cls: type[errors.BlueButtonError]) -> None:
    parent, status, code, transient = drawn()[cls.__name__]
    first_base = cls.__bases__[0]
    assert parent == (None if cls is errors.BlueButtonError else first_base.__name__)
    assert cls.status_code == status
    assert cls.code == code
    assert issubclass(cls, errors.TransientUpstreamError) == (
        transient or cls is errors.TransientUpstreamError
    )


def test_statuses_are_not_set_per_instance() -> None:
    """A class decides its status and code; no constructor takes them."""
    for cls in error_classes():
        parameters = inspect.signature(cls.__init__).parameters
        assert "status_code" not in parameters
        assert "code" not in parameters


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_only_retryable_upstream_errors_say_transient(cls: type[errors.BlueButtonError]) -> None:
    """An OperationOutcome's `transient` promises that resending can help; a permanent refusal
    must not say it."""
    if issubclass(cls, errors.UpstreamError):
        assert (cls.code == "transient") == (
            issubclass(cls, errors.TransientUpstreamError) and cls.code not in {"throttled", "timeout"}
        )
