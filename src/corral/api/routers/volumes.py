"""``/volumes``: Volumes: disks that belong to a project."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.schemas import ERRORS

router = APIRouter(prefix="/volumes", tags=["volumes"], responses=ERRORS)
