"""``/images``: the catalogue of base images."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import NOT_FOUND, ImageRead, Page
from corral.compute.images import ImageView

router = APIRouter(prefix="/images", tags=["images"])


def image_read(view: ImageView) -> ImageRead:
    return ImageRead(
        name=view.name,
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
        used_by=view.used_by,
    )


@router.get("")
def list_images(ctx: CorralDep, limit: Limit = 100, offset: Offset = 0) -> Page[ImageRead]:
    """Base images by name, each with the VMs cloned from it."""
    from corral.compute.images import list_images as do_list

    return page([image_read(v) for v in do_list(ctx)], limit, offset)


@router.get("/{name}", responses=NOT_FOUND)
def get_image(ctx: CorralDep, name: str) -> ImageRead:
    """One base image."""
    from corral.compute.images import get_image as do_get

    return image_read(do_get(ctx, name))
