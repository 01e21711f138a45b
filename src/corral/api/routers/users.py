"""``/users``: Local users and their roles."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.schemas import ERRORS

router = APIRouter(prefix="/users", tags=["users"], responses=ERRORS)
