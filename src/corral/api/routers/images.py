"""``/images``: the catalogue of base images; importing, updating and deleting them.

An import answers 202 with a task (``image.import``, ``Location: /api/v1/tasks/{id}``) that
converts the file into the catalogue's read-only qcow2. Everything that can be known before
the conversion is answered at once: the caller's rights, the name, the project, the options,
and the file itself, verified as every untrusted image is (:mod:`corral.storage.verify`): a
corrupt file, one that refers to other files or whose header contradicts its declared
format is a 422 before any task exists.

The file comes from one of two places:

* ``POST /images`` names a file on corrald's host. Only admins may: it reads the host's
  files with corrald's rights (the local socket's user is an admin).
* ``PUT /images/{name}/file`` sends it as the request body. corrald writes it, piece by
  piece as it arrives, to a file of its own in the state directory (never held in memory,
  at most :data:`~corral.storage.uploads.MAX_UPLOAD` bytes), verifies it, and removes it once
  the task has imported it or anything refused it.

Imports, updates and deletions are recorded in the audit log, refusals included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from corral.access.principal import Action, Principal
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.routers.tasks import TaskPoolDep, accepted, task_read
from corral.api.routers.uploads import spool_upload
from corral.api.routers.vms import require_creatable
from corral.api.schemas import ERRORS, NOT_FOUND, ErrorRead, ImageRead, Page, TaskRead
from corral.api.schemas.catalogue import ImageCreate, ImageUpdate, ImageUploadCreate
from corral.api.tenancy import require_visible, visible_names
from corral.compute.context import Corral
from corral.compute.images import ImageView
from corral.compute.tasks import Report, Target, TaskPool
from corral.errors import CorralError, Forbidden, ImageError, InUse, InvalidInput
from corral.spec.vm import NAME_PATTERN

router = APIRouter(prefix="/images", tags=["images"], responses=ERRORS)

ImageName = Annotated[str, Path(pattern=NAME_PATTERN, description="The image's name.")]


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


#: ``responses=`` of the two imports.
IMPORT_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not create here (a host file: only admins may)."),
    404: _error("No such project (or not the caller's)."),
    409: _error("The name is taken."),
    422: _error("A parameter is not valid, or the file is not an image corral accepts."),
    503: _error("Not enough space, or qemu-img is missing."),
}
#: ``responses=`` of ``PATCH /images/{name}``.
UPDATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not change it."),
    404: _error("No such image (or not in the caller's projects)."),
}
#: ``responses=`` of ``DELETE /images/{name}``.
DELETE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not delete it."),
    404: _error("No such image (or not in the caller's projects)."),
    409: _error("VMs are cloned from it (named)."),
}
#: The request body of ``PUT /images/{name}/file`` in the OpenAPI document.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image file (raw, qcow2, vmdk or vdi), as it is.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


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
        kernel=view.kernel,
        initrd=view.initrd,
        cmdline=view.cmdline,
        ready_marker=view.ready_marker,
        path=view.path,
        created_at=view.created_at,
        used_by=[vm for vm in view.used_by if vm in vms],
    )


# -- the audit log -----------------------------------------------------------------------------


@dataclasses.dataclass
class Note:
    """What :func:`recorded` writes: the object's project (learnt on the way) and facts."""

    project: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


def write_entry(
    ctx: Corral, principal: Principal, action: str, kind: str, name: str, note: Note, outcome: str
) -> None:
    """Add one entry to the audit log, in a transaction of its own."""
    from corral.access.audit import record

    with ctx.db.session() as session:
        record(session, principal.name, action, kind, name, note.project, outcome, note.detail)


def write_refusal(
    ctx: Corral,
    principal: Principal,
    action: str,
    kind: str,
    name: str,
    note: Note,
    exc: CorralError,
) -> None:
    """Add to the audit log the refusal ``exc`` (its message, and its class as the outcome)."""
    note.detail["error"] = exc.message
    write_entry(ctx, principal, action, kind, name, note, type(exc).__name__)


@contextmanager
def recorded(
    ctx: Corral,
    principal: Principal,
    action: str,
    kind: str,
    name: str,
    *,
    success: bool = True,
    **detail: Any,
) -> Iterator[Note]:
    """Record what the block does in the audit log: its refusal (the
    :class:`~corral.errors.CorralError`'s class, which propagates) or, with ``success``, its
    success.

    :param action: ``<kind>.<verb>``: ``image.delete``.
    :param detail: facts to record, never a secret; the block may add to them.
    """
    from corral.access.audit import OK

    note = Note(detail=dict(detail))
    try:
        yield note
    except CorralError as exc:
        write_refusal(ctx, principal, action, kind, name, note, exc)
        raise
    if success:
        write_entry(ctx, principal, action, kind, name, note, OK)


# -- reading -----------------------------------------------------------------------------------


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


# -- importing ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Import:
    """One import, as both endpoints describe it to :func:`_check` and :func:`_submit`."""

    name: str
    facts: ImageUploadCreate
    #: Where the file comes from, for the audit log: its path on the host, or ``upload``.
    origin: str
    kernel: FilePath | None = None
    initrd: FilePath | None = None
    cmdline: str = ""
    #: How refusals name the file when not by its path: ``upload of image 'x'``.
    shown: str | None = None

    def detail(self) -> dict[str, Any]:
        """What the audit log records of it."""
        return {"source": self.origin, "format": self.facts.format}


def _host_path(field: str, text: str) -> FilePath:
    """:raise InvalidInput: ``text`` is not an absolute path (naming ``field``)."""
    if not text.startswith("/") or "\x00" in text:
        raise InvalidInput(field, f"must be an absolute path on corrald's host, not {text!r}")
    return FilePath(text)


def _check(ctx: Corral, principal: Principal, job: _Import, source: FilePath | None) -> str:
    """Check the import ``job`` of ``source`` (``None``: the file is not there yet).

    :return: the project's id.
    """
    from corral.compute.images import check_import, check_new

    project_id = require_creatable(ctx, principal, job.facts.project)
    f = job.facts
    args = (f.os_hint, job.kernel, job.initrd, job.cmdline, f.ready_marker, f.ssh_user, f.project)
    if source is None:
        check_new(ctx, job.name, *args)
    else:
        try:
            check_import(ctx, job.name, source, f.format, *args)
        except ImageError as exc:
            raise _renamed(exc, source, job.shown) from None
    return project_id


def _renamed(exc: ImageError, source: FilePath, shown: str | None) -> ImageError:
    """``exc`` naming the file as ``shown`` rather than its spooled path."""
    if shown is None:
        return exc
    return ImageError(shown, exc.reason.replace(str(source), shown))


def _progress(report: Report) -> Callable[[float], None]:
    """The conversion's progress as the task's, written once per whole percent."""
    last = -1

    def update(fraction: float) -> None:
        nonlocal last
        percent = int(fraction * 100)
        if percent != last:
            last = percent
            report(percent, "converting to qcow2")

    return update


def _submit(
    ctx: Corral,
    pool: TaskPool,
    principal: Principal,
    job: _Import,
    source: FilePath,
    project_id: str,
    done: Callable[[], None] = lambda: None,
) -> TaskRead:
    """Queue the task that imports ``source``; once it has run, however it ended, it calls
    ``done`` (a task cancelled before it ran leaves its spooled file to the spool's sweep,
    :func:`corral.storage.uploads.new_upload`)."""
    from corral.access.audit import OK
    from corral.compute.images import import_image
    from corral.units import format_size

    f = job.facts

    def run(report: Report) -> str:
        note = Note(project=f.project, detail=job.detail())
        try:
            report(0, "verifying")
            view = import_image(
                ctx,
                job.name,
                source,
                f.format,
                f.os_hint,
                job.kernel,
                job.initrd,
                job.cmdline,
                f.ready_marker,
                _progress(report),
                ssh_user=f.ssh_user,
                project=f.project,
            )
        except CorralError as exc:
            failure = _renamed(exc, source, job.shown) if isinstance(exc, ImageError) else exc
            note.detail["error"] = failure.message
            write_entry(ctx, principal, "image.import", "image", job.name, note, type(exc).__name__)
            raise failure from None
        finally:
            done()
        write_entry(ctx, principal, "image.import", "image", job.name, note, OK)
        return (
            f"image {view.name} imported from {view.source_format}: "
            f"{format_size(view.virtual_size)} virtual, {format_size(view.actual_size)} on disk"
        )

    return task_read(
        pool.submit(principal, "image.import", Target("image", job.name), project_id, run)
    )


@router.post("", status_code=202, responses=IMPORT_RESPONSES)
def import_image(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: ImageCreate,
) -> TaskRead:
    """Import a file on corrald's host (admins only): checked and verified at once, then
    converted by a task."""
    facts = ImageUploadCreate(
        **body.model_dump(include={"os_hint", "ssh_user", "ready_marker", "project", "format"})
    )
    job = _Import(name=body.name, facts=facts, origin=body.path, cmdline=body.cmdline)
    with recorded(
        ctx, principal, "image.import", "image", body.name, success=False, **job.detail()
    ) as note:
        note.project = body.project
        if not principal.is_admin:
            raise Forbidden(
                principal.name, principal.role.value, "import", "files of corrald's host"
            )
        source = _host_path("path", body.path)
        job = dataclasses.replace(
            job,
            kernel=None if body.kernel is None else _host_path("kernel", body.kernel),
            initrd=None if body.initrd is None else _host_path("initrd", body.initrd),
        )
        project_id = _check(ctx, principal, job, source)
    task = _submit(ctx, pool, principal, job, source, project_id)
    return accepted(request, response, task)


@router.put("/{name}/file", status_code=202, responses=IMPORT_RESPONSES, openapi_extra=UPLOAD_BODY)
async def upload_image(
    ctx: CorralDep,
    pool: TaskPoolDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    name: ImageName,
    query: Annotated[ImageUploadCreate, Query()],
) -> TaskRead:
    """Import the file sent as the request body: received, checked and verified at once,
    then converted by a task."""
    shown = f"upload of image {name!r}"
    job = _Import(name=name, facts=query, origin="upload", shown=shown)
    note = Note(project=query.project, detail=job.detail())

    def submit(spooled: FilePath, project_id: str, done: Callable[[], None]) -> TaskRead:
        _check(ctx, principal, job, spooled)
        return _submit(ctx, pool, principal, job, spooled, project_id, done)

    try:
        task = await spool_upload(
            request,
            ctx.home.images,
            note.detail,
            lambda: _check(ctx, principal, job, None),
            submit,
        )
    except CorralError as exc:
        await run_in_threadpool(
            write_refusal, ctx, principal, "image.import", "image", name, note, exc
        )
        raise
    return accepted(request, response, task)


# -- changing ----------------------------------------------------------------------------------


def _owned(ctx: Corral, principal: Principal, name: str, action: Action) -> str:
    """The name of image ``name``'s project, if ``principal`` may take ``action`` on it.

    :raise NotFound: no such image, or not visible to ``principal``.
    :raise Forbidden: visible, but its role does not allow ``action``.
    """
    from corral.access.scope import find_owned
    from corral.compute.ownership import project_name
    from corral.store.models import ImageRow

    with ctx.db.session() as session:
        row = find_owned(session, principal, ImageRow, "image", name, action)
        return project_name(session, row.project_id)


@router.patch("/{name}", responses=UPDATE_RESPONSES)
def update_image(
    ctx: CorralDep, principal: PrincipalDep, name: ImageName, body: ImageUpdate
) -> ImageRead:
    """Change what an image says about its guest: OS hint, login user, ready marker."""
    from corral.compute.images import ImageChanges
    from corral.compute.images import update_image as do_update
    from corral.store.models import VmRow

    changes = body.model_dump(exclude_none=True)
    with recorded(ctx, principal, "image.update", "image", name, **changes) as note:
        note.project = _owned(ctx, principal, name, Action.OPERATE)
        view = do_update(ctx, name, ImageChanges(**changes))
    return image_read(view, visible_names(ctx, principal, VmRow))


@router.delete("/{name}", responses=DELETE_RESPONSES)
def delete_image(ctx: CorralDep, principal: PrincipalDep, name: ImageName) -> ImageRead:
    """Delete a base image that no VM is cloned from; answers the image as it was."""
    from corral.compute.images import delete_image as do_delete
    from corral.store.models import VmRow

    with recorded(ctx, principal, "image.delete", "image", name) as note:
        note.project = _owned(ctx, principal, name, Action.DELETE)
        try:
            view = do_delete(ctx, name)
        except InUse as exc:
            raise _in_use(exc, visible_names(ctx, principal, VmRow)) from None
    return image_read(view, set())


def _in_use(exc: InUse, vms: set[str]) -> InUse:
    """``exc`` naming only the VMs in ``vms``; the others are counted, not named."""
    shown = [vm for vm in exc.users if vm in vms]
    hidden = len(exc.users) - len(shown)
    if hidden:
        shown.append(f"{hidden} VM{'s' if hidden > 1 else ''} of other projects")
    return InUse(exc.kind, exc.name, shown)
