"""``/vms``: the VM list (filtered, paginated) and one VM."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import NOT_FOUND, DiskRead, Page, VmRead
from corral.api.tenancy import require_visible, visible_names
from corral.compute.inventory import VmView

router = APIRouter(prefix="/vms", tags=["vms"])

State = Literal["defined", "starting", "running", "paused", "stopping", "shutoff", "crashed"]


def vm_read(view: VmView) -> VmRead:
    """The wire form of a VM view."""
    return VmRead(
        name=view.name,
        uuid=view.uuid,
        state=view.state,
        reason=view.reason,
        vcpus=view.vcpus,
        memory=view.memory,
        machine=view.machine,
        image=view.image,
        provisioned=view.provisioned,
        used=view.used,
        host_cpu=view.host_cpu,
        host_memory=view.host_memory,
        pid=view.pid,
        created_at=view.created_at,
        state_changed_at=view.state_changed_at,
        disks=[
            DiskRead(name=d.name, image=d.image, provisioned=d.provisioned, used=d.used)
            for d in view.disks
        ],
        forwards=view.forwards,
        instance_type=view.instance_type,
        keypair=view.keypair,
        instance_id=view.instance_id,
        ssh=view.ssh,
    )


@router.get("")
def list_vms(
    ctx: CorralDep,
    principal: PrincipalDep,
    state: Annotated[State | None, Query(description="Only VMs in this state.")] = None,
    image: Annotated[str | None, Query(max_length=63, description="Only clones of it.")] = None,
    name: Annotated[
        str | None, Query(max_length=63, description="Only names that contain this.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[VmRead]:
    """Every VM (running or not), by name, reconciled with the host."""
    from corral.compute.inventory import list_vms as do_list
    from corral.store.models import VmRow

    mine = visible_names(ctx, principal, VmRow)
    views = [
        v
        for v in do_list(ctx, include_inactive=True)
        if v.name in mine
        and (state is None or v.state == state)
        and (image is None or v.image == image)
        and (name is None or name in v.name)
    ]
    return page([vm_read(v) for v in views], limit, offset)


@router.get("/{name}", responses=NOT_FOUND)
def get_vm(ctx: CorralDep, principal: PrincipalDep, name: str) -> VmRead:
    """One VM, its run state asked from QEMU."""
    from corral.compute.inventory import info
    from corral.store.models import VmRow

    require_visible(ctx, principal, VmRow, "vm", name)
    return vm_read(info(ctx, name))
