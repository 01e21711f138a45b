"""``/login``: Password login: a token for a user name and password."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.schemas import ERRORS

router = APIRouter(prefix="/login", tags=["login"], responses=ERRORS)
