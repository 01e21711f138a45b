"""``/volumes``: volumes (disks that belong to a project), and VMs' disks in the listing.

A volume's name is unique within its project. The endpoints that name one take
``?project=``; without it, the volume is the one of that name in the caller's projects, and
a name in several of them is a 422 on ``project``. Creating a volume is instant (a blank
qcow2 or a sparse raw file), so ``POST`` answers 201 with it, not a task. Attaching,
detaching and resizing answer with the volume too: each is bounded (hotplug takes a
fraction of a second; a detach waits for the guest at most its ``timeout``).

Files come in as images do: ``POST /volumes/import`` names a file on corrald's host (admins
only), ``PUT /volumes/{name}/file`` sends it as the request body (spooled, never held in
memory). The name, format, project and role are answered at once; the file is verified and
converted to qcow2 by a 202 task (``volume.import``), an OVA into one volume per disk.
``GET /volumes/{name}/file?format=`` answers a converted copy, removed as it is sent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path as FilePath
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from corral.access.principal import Principal
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.images import Note, recorded, write_refusal
from corral.api.routers.paging import Limit, Offset
from corral.api.routers.tasks import TaskPoolDep, accepted, task_read
from corral.api.routers.uploads import spool_upload
from corral.api.schemas import ERRORS, ErrorRead, Page, TaskRead
from corral.api.schemas.volumes import (
    VolumeAttach,
    VolumeCreate,
    VolumeDetach,
    VolumeExport,
    VolumeImport,
    VolumeRead,
    VolumeResize,
    VolumeUpdate,
    VolumeUploadCreate,
)
from corral.compute.context import Corral
from corral.compute.tasks import Report, Target, TaskPool
from corral.compute.volumes import VolumeView
from corral.errors import CorralError, Forbidden, ImageError, InvalidInput
from corral.spec.vm import NAME_PATTERN
from corral.units import format_size

router = APIRouter(prefix="/volumes", tags=["volumes"], responses=ERRORS)

VolumeName = Annotated[
    str, Path(pattern=NAME_PATTERN, description="The volume's name.", examples=["data"])
]
Project = Annotated[
    str | None,
    Query(
        max_length=63,
        description="The volume's project, by name; needed only when the name is in several "
        "of the caller's projects.",
    ),
]


def volume_read(view: VolumeView) -> VolumeRead:
    """The wire form of a volume view."""
    return VolumeRead(
        name=view.name,
        project=view.project,
        kind=view.kind,
        format=view.format,
        size=view.size,
        used=view.used,
        attached_to=view.attached_to,
        description=view.description,
        image=view.image,
        created_at=view.created_at,
    )


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


#: ``responses=`` of ``POST /volumes``.
CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not create, or the disk quota (named) would be exceeded."),
    404: _error("No such project (or not the caller's)."),
    409: _error("The name is taken in the project, or the datastore is too small."),
}
#: ``responses=`` of an endpoint that names a volume.
VOLUME_RESPONSES: dict[int | str, dict[str, object]] = {
    404: _error("No such volume (or not in the caller's projects)."),
}
#: ``responses=`` of ``PATCH /volumes/{name}``.
UPDATE_RESPONSES = VOLUME_RESPONSES | {
    403: _error("The caller's role may not change it."),
    409: _error("The new name is taken in the project."),
}
#: ``responses=`` of ``DELETE /volumes/{name}``.
DELETE_RESPONSES = VOLUME_RESPONSES | {
    403: _error("The caller's role may not delete."),
    409: _error("It is attached to a VM (named)."),
}


def _location(request: Request, view: VolumeView) -> str:
    path = request.url_for("get_volume", name=view.name).path
    return f"{path}?project={view.project}"


#: ``responses=`` of ``GET /volumes``.
LIST_RESPONSES: dict[int | str, dict[str, object]] = {
    404: _error("The project filtered on does not exist (or is not the caller's)."),
}


@router.get("", responses=LIST_RESPONSES)
def list_volumes(
    ctx: CorralDep,
    principal: PrincipalDep,
    project: Annotated[str | None, Query(max_length=63, description="Only this project's.")] = None,
    name: Annotated[
        str | None, Query(max_length=127, description="Only names that contain this.")
    ] = None,
    attached: Annotated[
        bool | None,
        Query(
            description="Only attached (true) or detached (false) ones; a VM's disk is "
            "attached to its VM."
        ),
    ] = None,
    kind: Annotated[
        Literal["volume", "vm-disk"] | None, Query(description="Only volumes, or VMs' disks.")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[VolumeRead]:
    """Volumes and VMs' disks by name, with their provisioned and used sizes."""
    from corral.compute.volumes import VolumeFilter, page_volumes

    if "\x00" in (name or ""):
        # No name holds a NUL (and PostgreSQL refuses one in a query): nothing matches.
        return Page[VolumeRead](items=[], total=0, limit=limit, offset=offset)
    filters = VolumeFilter(project=project, name=name, attached=attached, kind=kind)
    views, total = page_volumes(ctx, principal, filters, limit, offset)
    return Page[VolumeRead](
        items=[volume_read(v) for v in views], total=total, limit=limit, offset=offset
    )


@router.post("", status_code=201, responses=CREATE_RESPONSES)
def create_volume(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: VolumeCreate,
) -> VolumeRead:
    """Create a blank volume in a project, within its disk quota and the datastore's room."""
    from corral.compute.volumes import create_volume as create

    view = create(
        ctx,
        principal,
        body.name,
        body.size,
        body.format,
        project=body.project,
        description=body.description,
    )
    response.headers["Location"] = _location(request, view)
    return volume_read(view)


@router.get("/{name}", responses=VOLUME_RESPONSES)
def get_volume(
    ctx: CorralDep, principal: PrincipalDep, name: VolumeName, project: Project = None
) -> VolumeRead:
    """One volume."""
    from corral.compute.volumes import get_volume as get

    return volume_read(get(ctx, principal, name, project))


@router.patch("/{name}", responses=UPDATE_RESPONSES)
def update_volume(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: VolumeName,
    body: VolumeUpdate,
    project: Project = None,
) -> VolumeRead:
    """Rename a volume within its project, or change its description."""
    from corral.compute.volumes import update_volume as update

    return volume_read(
        update(ctx, principal, name, project, new_name=body.name, description=body.description)
    )


@router.delete("/{name}", status_code=204, response_class=Response, responses=DELETE_RESPONSES)
def delete_volume(
    ctx: CorralDep, principal: PrincipalDep, name: VolumeName, project: Project = None
) -> None:
    """Delete a detached volume and its file."""
    from corral.compute.volumes import delete_volume as delete

    delete(ctx, principal, name, project)


#: ``responses=`` of ``POST /volumes/{name}/attach``.
ATTACH_RESPONSES = VOLUME_RESPONSES | {
    403: _error("The caller's role may not change the volume or the VM."),
    404: _error("No such volume or VM (or not in the caller's projects)."),
    409: _error(
        "The volume is attached (the VM named), or the VM is starting or stopping (the state "
        "named), or it runs on a machine without hotplug."
    ),
    422: _error("The VM is in another project (field vm)."),
}
#: ``responses=`` of ``POST /volumes/{name}/detach``.
DETACH_RESPONSES = VOLUME_RESPONSES | {
    403: _error("The caller's role may not change it."),
    409: _error("It is not attached, or its VM is starting or stopping (the state named)."),
    504: _error("The guest did not release the disk in time; the volume stays attached."),
}
#: ``responses=`` of ``POST /volumes/{name}/resize``.
RESIZE_RESPONSES = VOLUME_RESPONSES | {
    403: _error("The caller's role may not change it, or the disk quota (named) is exceeded."),
    409: _error("The datastore is too small, or its VM is starting or stopping."),
    422: _error("Not a size, or not larger than the current one (field size)."),
}


@router.post("/{name}/attach", responses=ATTACH_RESPONSES)
def attach_volume(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: VolumeName,
    body: VolumeAttach,
    project: Project = None,
) -> VolumeRead:
    """Attach a volume to a VM of its project: hot-plugged into a running VM, or from a
    stopped VM's next start."""
    from corral.compute.volume_attach import attach_volume as attach

    return volume_read(attach(ctx, principal, name, body.vm, project))


@router.post("/{name}/detach", responses=DETACH_RESPONSES)
def detach_volume(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: VolumeName,
    body: VolumeDetach | None = None,
    project: Project = None,
) -> VolumeRead:
    """Detach a volume from its VM; a running guest releases the disk first."""
    from corral.compute.volume_attach import detach_volume as detach

    timeout = (body or VolumeDetach()).timeout
    return volume_read(detach(ctx, principal, name, project, timeout))


@router.post("/{name}/resize", responses=RESIZE_RESPONSES)
def resize_volume(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: VolumeName,
    body: VolumeResize,
    project: Project = None,
) -> VolumeRead:
    """Grow a volume; a running guest it is attached to sees the new size at once."""
    from corral.compute.volume_attach import resize_volume as resize

    return volume_read(resize(ctx, principal, name, body.size, project))


# -- files in and out --------------------------------------------------------------------------

#: ``responses=`` of the two imports.
IMPORT_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not create here (a host file: only admins may)."),
    404: _error("No such project (or not the caller's)."),
    409: _error("The name is taken in the project."),
    422: _error("A parameter is not valid (named)."),
    503: _error("Not enough space for the upload."),
}
#: ``responses=`` of ``GET /volumes/{name}/file``.
EXPORT_RESPONSES: dict[int | str, dict[str, object]] = VOLUME_RESPONSES | {
    200: {
        "description": "The volume converted to the format asked for.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    409: _error("It is attached to a VM that runs (the state named)."),
}
#: The request body of ``PUT /volumes/{name}/file`` in the OpenAPI document.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The disk image (raw, qcow2, vmdk, vdi) or OVA, as it is.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
#: Bytes read from an exported copy per piece of the answer.
READ_BYTES = 1024 * 1024


def _import_task(
    ctx: Corral,
    pool: TaskPool,
    principal: Principal,
    name: str,
    facts: VolumeUploadCreate,
    source: FilePath,
    shown: str | None = None,
    done: Callable[[], None] = lambda: None,
) -> TaskRead:
    """Queue the task that imports ``source``; it calls ``done`` once it has run."""
    from corral.api.routers.images import _renamed
    from corral.compute.volume_io import check_import, import_volume

    project_id = check_import(ctx, principal, name, facts.format, facts.project)

    def run(report: Report) -> str:
        try:
            views = import_volume(
                ctx,
                principal,
                name,
                source,
                facts.format,
                facts.project,
                facts.description,
                lambda fraction, what: report(int(fraction * 100), what),
            )
        except ImageError as exc:
            raise _renamed(exc, source, shown) from None
        finally:
            done()
        made = ", ".join(f"{v.name} ({format_size(v.size)})" for v in views)
        return f"imported into project {facts.project}: {made}"

    target = Target("volume", name)
    return task_read(pool.submit(principal, "volume.import", target, project_id, run))


@router.post("/import", status_code=202, responses=IMPORT_RESPONSES)
def import_volume(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: VolumeImport,
) -> TaskRead:
    """Import a file on corrald's host (admins only) as a qcow2 volume, an OVA as one
    volume per disk: the name checked at once, the file verified and converted by a task."""
    facts = VolumeUploadCreate(**body.model_dump(include={"format", "project", "description"}))
    with recorded(
        ctx, principal, "volume.import", "volume", body.name, success=False, source=body.path
    ) as note:
        note.project = body.project
        if not principal.is_admin:
            raise Forbidden(
                principal.name, principal.role.value, "import", "files of corrald's host"
            )
        if not body.path.startswith("/") or "\x00" in body.path:
            raise InvalidInput("path", f"must be an absolute path on corrald's host: {body.path!r}")
        task = _import_task(ctx, pool, principal, body.name, facts, FilePath(body.path))
    return accepted(request, response, task)


@router.put("/{name}/file", status_code=202, responses=IMPORT_RESPONSES, openapi_extra=UPLOAD_BODY)
async def upload_volume(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: VolumeName,
    query: Annotated[VolumeUploadCreate, Query()],
) -> TaskRead:
    """Import the file sent as the request body as a qcow2 volume (an OVA as one volume per
    disk): received, the name checked at once, the file verified and converted by a task."""
    from corral.compute.volume_io import check_import

    note = Note(project=query.project, detail={"source": "upload", "format": query.format})
    shown = f"upload of volume {name!r}"

    def submit(spooled: FilePath, _: str, done: Callable[[], None]) -> TaskRead:
        return _import_task(ctx, pool, principal, name, query, spooled, shown, done)

    try:
        task = await spool_upload(
            request,
            ctx.home.images,
            note.detail,
            lambda: check_import(ctx, principal, name, query.format, query.project),
            submit,
        )
    except CorralError as exc:
        await run_in_threadpool(
            write_refusal, ctx, principal, "volume.import", "volume", name, note, exc
        )
        raise
    return accepted(request, response, task)


def _pieces(file: BinaryIO) -> Iterator[bytes]:
    with file:
        while chunk := file.read(READ_BYTES):
            yield chunk


@router.get("/{name}/file", response_class=Response, responses=EXPORT_RESPONSES)
def export_volume(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: VolumeName,
    query: Annotated[VolumeExport, Query()],
) -> Response:
    """The volume converted to another format: a temporary copy, removed as it is sent."""
    from corral.compute.volume_io import export_volume as export
    from corral.storage.volumes import ensure_pool

    pool = ensure_pool(ctx.home.root)
    copy = export(ctx, principal, name, query.format, pool, query.project)
    try:
        file = copy.open("rb")
    finally:
        copy.unlink()  # the open file is read to its end; no name outlives the request
    size = os.fstat(file.fileno()).st_size
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{name}.{query.format}"',
    }
    return StreamingResponse(_pieces(file), media_type="application/octet-stream", headers=headers)
