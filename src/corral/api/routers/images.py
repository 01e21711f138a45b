"""``/images``: the catalogue of base images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import ERRORS, NOT_FOUND, ImageRead, Page
from corral.api.tenancy import require_visible, visible_names
from corral.compute.images import ImageView
from corral.spec.vm import NAME_PATTERN

router = APIRouter(prefix="/images", tags=["images"], responses=ERRORS)

ImageName = Annotated[str, Path(pattern=NAME_PATTERN, description="The image's name.")]


def image_read(view: ImageView, vms: set[str]) -> ImageRead:
    """The wire form of an image; of the VMs using it, only those in ``vms`` are named."""
    return ImageRead(
        name=view.name,
        project=view.project,
        format=view.format,
        source_format=view.source_format,
        virtual_size=view.virtual_size,
        actual_size=view.actual_size,
        sha256=view.sha256,
        os_hint=view.os_hint,
        ssh_user=view.ssh_user,
        boot="kernel" if view.kernel else "firmware",
        ready_marker=view.ready_marker,
        created_at=view.created_at,
        used_by=[vm for vm in view.used_by if vm in vms],
    )


@router.get("")
def list_images(
    ctx: CorralDep, principal: PrincipalDep, limit: Limit = 100, offset: Offset = 0
) -> Page[ImageRead]:
    """Base images by name, each with the VMs cloned from it."""
    from corral.compute.images import list_images as do_list
    from corral.store.models import ImageRow, VmRow

    mine = visible_names(ctx, principal, ImageRow)
    vms = visible_names(ctx, principal, VmRow)
    views = [image_read(v, vms) for v in do_list(ctx) if v.name in mine]
    return page(views, limit, offset)


@router.get("/{name}", responses=NOT_FOUND)
def get_image(ctx: CorralDep, principal: PrincipalDep, name: ImageName) -> ImageRead:
    """One base image."""
    from corral.compute.images import get_image as do_get
    from corral.store.models import ImageRow, VmRow

    require_visible(ctx, principal, ImageRow, "image", name)
    return image_read(do_get(ctx, name), visible_names(ctx, principal, VmRow))
