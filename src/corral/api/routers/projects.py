"""``/projects``: Projects, their members and quotas."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.schemas import ERRORS

router = APIRouter(prefix="/projects", tags=["projects"], responses=ERRORS)
