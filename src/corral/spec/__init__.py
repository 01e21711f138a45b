"""Specs: frozen pydantic models of what corral manages, and their validation."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral.errors import InvalidInput
from corral.spec.vm import BootSpec, DiskSpec, NicSpec, PortForward, SerialSpec, VmSpec, VncSpec

__all__ = [
    "BootSpec",
    "DiskSpec",
    "NicSpec",
    "PortForward",
    "SerialSpec",
    "VmSpec",
    "VncSpec",
    "parse",
]

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate ``data`` into ``model``; failures become one :class:`InvalidInput`.

    :raise InvalidInput: naming the first offending field (and counting the others).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc) from None


def invalid_input(exc: ValidationError) -> InvalidInput:
    """Turn a pydantic error into corral's, naming the field and the reason."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "spec"
    reason = str(first["msg"])
    reason = reason.removeprefix("Value error, ")
    if first["type"] == "string_pattern_mismatch":
        pattern = first.get("ctx", {}).get("pattern", "")
        reason = f"{first.get('input')!r} is not allowed; it must match {pattern}"
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidInput(field, reason)
