"""Pagination shared by the list endpoints: ``?limit=&offset=``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, TypeVar

from fastapi import Query

from corral.api.schemas import Page

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip.")]


def page(items: Sequence[T], limit: int, offset: int) -> Page[T]:
    """The page of ``items`` from ``offset``, at most ``limit`` long."""
    return Page[T](
        items=list(items[offset : offset + limit]), total=len(items), limit=limit, offset=offset
    )
