"""``/tokens``: API tokens."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.schemas import ERRORS

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=ERRORS)
