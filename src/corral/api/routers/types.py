"""``/instance-types``: the flavors a launch chooses from."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from corral.api.auth import get_principal
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import ERRORS, NOT_FOUND, InstanceTypeRead, Page
from corral.spec.cloud import TYPE_NAME_PATTERN

router = APIRouter(
    prefix="/instance-types",
    tags=["instance types"],
    dependencies=[Depends(get_principal)],
    responses=ERRORS,
)

TypeName = Annotated[
    str, Path(pattern=TYPE_NAME_PATTERN, description="The type's name: `t1.micro`...")
]


def _read(itype: object) -> InstanceTypeRead:
    from corral.spec.cloud import InstanceType

    assert isinstance(itype, InstanceType)
    return InstanceTypeRead(
        name=itype.name,
        vcpus=itype.vcpus,
        memory=itype.memory,
        disk=itype.disk,
        price_per_hour=str(itype.price_per_hour),
        currency=itype.currency,
        description=itype.description,
        source=itype.source,
    )


@router.get("")
def list_types(ctx: CorralDep, limit: Limit = 100, offset: Offset = 0) -> Page[InstanceTypeRead]:
    """Instance types, shipped and the host's own, smallest first in each family."""
    from corral.compute.types import list_types as do_list

    return page([_read(t) for t in do_list(ctx.home)], limit, offset)


@router.get("/{name}", responses=NOT_FOUND)
def get_type(ctx: CorralDep, name: TypeName) -> InstanceTypeRead:
    """One instance type."""
    from corral.compute.types import get_type as do_get

    return _read(do_get(ctx.home, name))
