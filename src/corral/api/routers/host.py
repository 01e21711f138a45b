"""``/host``: the host's summary."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from corral.api.auth import get_principal
from corral.api.deps import CorralDep
from corral.api.schemas import UNAUTHENTICATED, HostSummary

router = APIRouter(
    prefix="/host",
    tags=["host"],
    dependencies=[Depends(get_principal)],
    responses=UNAUTHENTICATED,
)


@router.get("")
def get_host(ctx: CorralDep) -> HostSummary:
    """CPU model, cores and usage, memory, the datastore's capacity, VMs and networks."""
    from corral.compute.hostinfo import host_info

    return HostSummary(**asdict(host_info(ctx)))
