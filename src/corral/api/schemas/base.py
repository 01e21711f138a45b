"""What every area's wire types share: pages, the error body, and the error answers that
endpoints declare."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Read(BaseModel):
    """Base of answers (``*Read``): frozen."""

    model_config = ConfigDict(frozen=True)


class Create(BaseModel):
    """Base of request bodies (``*Create``, ``*Update``): unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class Page(Read, Generic[T]):
    """One page of a listing."""

    items: list[T]
    #: How many items match, over all pages.
    total: int
    limit: int
    offset: int


class ErrorRead(Read):
    """Every error answer: what kind, the one-line message, and context."""

    error: str = Field(description="The error class: NotFound, InvalidInput, StateError...")
    message: str
    field: str | None = None


#: ``responses=`` of an endpoint that looks an object up by name.
NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorRead, "description": "No such object."}
}

#: ``responses=`` of a VM action: a state the operation cannot start from.
CONFLICT: dict[int | str, dict[str, object]] = {
    409: {"model": ErrorRead, "description": "Not allowed in the current state."}
}

#: ``responses=`` of every endpoint behind :func:`~corral.api.auth.get_principal`: a request
#: off the UNIX socket without a valid bearer token.
UNAUTHENTICATED: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorRead, "description": "No valid bearer token."}
}

#: ``responses=`` of an endpoint that takes parameters: the answer when one is refused (it
#: replaces FastAPI's ``HTTPValidationError``, which the app never sends).
INVALID: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorRead, "description": "A parameter is not valid; `field` names it."}
}

#: ``responses=`` of a router whose endpoints all take parameters and a principal.
ERRORS: dict[int | str, dict[str, object]] = UNAUTHENTICATED | INVALID
