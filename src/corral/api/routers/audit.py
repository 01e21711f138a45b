"""``/audit``: The audit log: who did what."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.schemas import ERRORS

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERRORS)
