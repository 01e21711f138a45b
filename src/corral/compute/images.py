"""The image catalogue: base images (read-only qcow2) and how to boot them.

An image belongs to a project (``default`` unless told otherwise). The images of ``default``
are shared with every project; another project's are its own (see
:mod:`corral.compute.ownership`).

An import is checked first (:func:`check_import`: its options, its name, its project, and the
file verified as :mod:`corral.storage` verifies untrusted files), then converted
(:func:`import_image`, which checks again: the API answers the first check at once and runs
the conversion as a task). What an image says about its guest (OS hint, login user, ready
marker) may change later (:func:`update_image`); its file never does.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from corral.compute.context import Corral
from corral.compute.locks import ObjectLock
from corral.compute.ownership import project_name, project_names, resolve_project
from corral.compute.records import IMAGE_FILE
from corral.errors import AlreadyExists, InUse, InvalidInput, NotFound
from corral.spec import parse
from corral.spec.vm import NAME_PATTERN, BootSpec
from corral.store.models import ImageRow, VmRow, as_utc

if TYPE_CHECKING:
    from corral.storage.verify import VerifiedImage

Progress = Callable[[float], None]

#: A login name as useradd accepts it.
LOGIN_PATTERN = r"[a-z_][a-z0-9_-]{0,31}"
#: Longest OS hint and ready marker, in characters (their columns' lengths).
MAX_OS_HINT = 63
MAX_READY_MARKER = 128
#: The default user of each distribution's cloud images, by a word of the OS hint.
_CLOUD_USERS = {
    "debian": "debian",
    "ubuntu": "ubuntu",
    "fedora": "fedora",
    "centos": "cloud-user",
    "rhel": "cloud-user",
    "rocky": "rocky",
    "alma": "almalinux",
    "almalinux": "almalinux",
    "opensuse": "opensuse",
    "arch": "arch",
    "alpine": "alpine",
}


def default_login(os_hint: str) -> str:
    """The user cloud-init creates on an image with this OS hint (``root`` if unknown)."""
    for word in re.findall(r"[a-z]+", os_hint.lower()):
        if word in _CLOUD_USERS:
            return _CLOUD_USERS[word]
    return "root"


@dataclass(frozen=True)
class ImageView:
    name: str
    #: The name of the project that owns it (``default``: shared with every project).
    project: str
    format: str
    source_format: str
    virtual_size: int
    actual_size: int
    sha256: str
    os_hint: str
    kernel: str | None
    initrd: str | None
    cmdline: str
    ready_marker: str | None
    #: Who ``corral ssh`` logs in as on instances of the image.
    ssh_user: str
    path: str
    created_at: str
    used_by: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lock(ctx: Corral, name: str) -> ObjectLock:
    return ObjectLock(ctx.home.locks, "image", name)


def _users_by_image(ctx: Corral) -> dict[str, list[str]]:
    """For each image, the VMs with a disk cloned from it (one pass over the VMs)."""
    from corral.spec.vm import VmSpec

    users: dict[str, list[str]] = {}
    with ctx.db.session() as session:
        for row in session.scalars(select(VmRow).order_by(VmRow.name)):
            spec = VmSpec.model_validate_json(row.spec)
            for image in sorted({disk.image for disk in spec.disks if disk.image}):
                users.setdefault(image, []).append(row.name)
    return users


def _users(ctx: Corral, name: str) -> list[str]:
    """VMs with a disk cloned from image ``name``."""
    return _users_by_image(ctx).get(name, [])


def _view(row: ImageRow, users: list[str], project: str) -> ImageView:
    return ImageView(
        name=row.name,
        project=project,
        format="qcow2",
        source_format=row.source_format,
        virtual_size=row.virtual_size,
        actual_size=row.actual_size,
        sha256=row.sha256,
        os_hint=row.os_hint,
        kernel=row.kernel,
        initrd=row.initrd,
        cmdline=row.cmdline,
        ready_marker=row.ready_marker,
        ssh_user=row.ssh_user or default_login(row.os_hint),
        path=row.path,
        created_at=as_utc(row.created_at).isoformat(),
        used_by=users,
    )


def _check_guest_facts(os_hint: str | None, ready_marker: str | None, ssh_user: str | None) -> None:
    """Check what an image says about its guest; ``None`` is not checked.

    :raise InvalidInput: a value that is too long, not one printable line, or not a login.
    """
    if os_hint is not None and (len(os_hint) > MAX_OS_HINT or not os_hint.isprintable()):
        raise InvalidInput(
            "os_hint", f"must be one printable line of at most {MAX_OS_HINT} characters"
        )
    if ready_marker is not None and (
        not ready_marker or len(ready_marker) > MAX_READY_MARKER or not ready_marker.isprintable()
    ):
        raise InvalidInput(
            "ready_marker",
            f"must be one non-empty printable line of at most {MAX_READY_MARKER} characters",
        )
    if ssh_user and not re.fullmatch(LOGIN_PATTERN, ssh_user):
        raise InvalidInput(
            "ssh_user", f"{ssh_user!r} is not a user name; it must match {LOGIN_PATTERN}"
        )


def _check_options(
    name: str,
    os_hint: str,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str,
    ready_marker: str | None,
    ssh_user: str,
) -> None:
    """:raise InvalidInput: a bad name, boot option or guest fact (naming its field)."""
    if not re.match(NAME_PATTERN, name):
        raise InvalidInput("name", f"{name!r} is not allowed; it must match {NAME_PATTERN}")
    if initrd is not None and kernel is None:
        raise InvalidInput("initrd", "an initrd needs a kernel")
    if cmdline and kernel is None:
        raise InvalidInput("cmdline", "a kernel command line needs a kernel")
    # The same rules as a VM's kernel command line, reported as InvalidInput("cmdline", ...).
    parse(BootSpec, {"kind": "kernel", "kernel": "/", "cmdline": cmdline})
    for field, path in (("kernel", kernel), ("initrd", initrd)):
        if path is not None and not path.is_file():
            raise InvalidInput(field, f"{path} is not a file")
    _check_guest_facts(os_hint, ready_marker, ssh_user)


def check_new(
    ctx: Corral,
    name: str,
    os_hint: str = "",
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str = "",
    ready_marker: str | None = None,
    ssh_user: str = "",
    project: str | None = None,
) -> None:
    """Check what :func:`import_image` would refuse before it reads the file.

    The parameters are :func:`import_image`'s.

    :raise InvalidInput: a bad name, boot option or guest fact.
    :raise NotFound: no such project.
    :raise AlreadyExists: the name is taken.
    """
    _check_options(name, os_hint, kernel, initrd, cmdline, ready_marker, ssh_user)
    with ctx.db.session() as session:
        resolve_project(session, project)
        if session.scalars(select(ImageRow.id).where(ImageRow.name == name)).first():
            raise AlreadyExists("image", name)


def check_import(
    ctx: Corral,
    name: str,
    source: Path,
    fmt: str | None = None,
    os_hint: str = "",
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str = "",
    ready_marker: str | None = None,
    ssh_user: str = "",
    project: str | None = None,
) -> VerifiedImage:
    """Check everything :func:`import_image` would refuse, the file included, without
    writing anything.

    The parameters are :func:`import_image`'s.

    :return: what verifying the file found.
    :raise InvalidInput: a bad name, format, boot option or guest fact.
    :raise NotFound: no such project.
    :raise AlreadyExists: the name is taken.
    :raise ImageError: the file is not an image corral accepts.
    :raise HostError: qemu-img or prlimit is missing.
    """
    from corral.storage.verify import verify_image

    check_new(ctx, name, os_hint, kernel, initrd, cmdline, ready_marker, ssh_user, project)
    return verify_image(source, fmt)


def import_image(
    ctx: Corral,
    name: str,
    source: Path,
    fmt: str | None = None,
    os_hint: str = "",
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str = "",
    ready_marker: str | None = None,
    progress: Progress | None = None,
    ssh_user: str = "",
    project: str | None = None,
) -> ImageView:
    """Import ``source`` as base image ``name``: verified, converted to qcow2, read-only.

    :param fmt: the source's format; detected (and verified) when ``None``.
    :param kernel: a kernel for direct boot, copied into the image's directory.
    :param ssh_user: the user cloud-init gives the key to; by default guessed from ``os_hint``.
    :param project: the project it goes into, by name; ``None`` is ``default`` (shared with
        every project).
    :raise InvalidInput: a bad name, boot option or guest fact.
    :raise NotFound: no such project.
    :raise AlreadyExists: the name is taken.
    :raise ImageError: the file is not an image corral accepts.
    """
    from corral.storage.images import import_image as convert_in

    _check_options(name, os_hint, kernel, initrd, cmdline, ready_marker, ssh_user)
    with _lock(ctx, name):
        with ctx.db.session() as session:
            owner = resolve_project(session, project)
            project_id, owner_name = owner.id, owner.name
            if session.scalars(select(ImageRow.id).where(ImageRow.name == name)).first():
                raise AlreadyExists("image", name)
        directory = ctx.home.image_dir(name)
        shutil.rmtree(directory, ignore_errors=True)  # left by an interrupted import
        directory.mkdir(mode=0o700, parents=True)
        try:
            imported = convert_in(source, directory / IMAGE_FILE, fmt, progress)
            boot_files: dict[str, str | None] = {"kernel": None, "initrd": None}
            for field, path in (("kernel", kernel), ("initrd", initrd)):
                if path is not None:
                    dest = directory / field
                    shutil.copyfile(path, dest)
                    dest.chmod(0o444)
                    boot_files[field] = str(dest)
            row = ImageRow(
                id=str(uuid.uuid4()),
                name=name,
                path=str(imported.path),
                source_format=imported.source_format,
                virtual_size=imported.virtual_size,
                actual_size=imported.actual_size,
                sha256=imported.sha256,
                os_hint=os_hint,
                kernel=boot_files["kernel"],
                initrd=boot_files["initrd"],
                cmdline=cmdline,
                ready_marker=ready_marker,
                ssh_user=ssh_user,
                project_id=project_id,
            )
            with ctx.db.session() as session:
                session.add(row)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return _view(row, [], owner_name)


def list_images(ctx: Corral) -> list[ImageView]:
    """All base images by name, each with the VMs cloned from it."""
    with ctx.db.session() as session:
        rows = list(session.scalars(select(ImageRow).order_by(ImageRow.name)))
        names = project_names(session)
    users = _users_by_image(ctx)
    return [
        _view(row, users.get(row.name, []), names.get(row.project_id, row.project_id))
        for row in rows
    ]


def get_image(ctx: Corral, name: str) -> ImageView:
    """:raise NotFound: no image is called ``name``."""
    with ctx.db.session() as session:
        row = session.scalars(select(ImageRow).where(ImageRow.name == name)).first()
        if row is None:
            raise NotFound("image", name)
        project = project_name(session, row.project_id)
    return _view(row, _users(ctx, name), project)


@dataclass(frozen=True)
class ImageChanges:
    """What :func:`update_image` changes; a field left ``None`` stays as it is."""

    os_hint: str | None = None
    #: ``""``: the user the OS hint implies.
    ssh_user: str | None = None
    #: ``""``: no ready marker.
    ready_marker: str | None = None


def update_image(ctx: Corral, name: str, changes: ImageChanges) -> ImageView:
    """Change what image ``name`` says about its guest (its file stays as it is).

    :raise InvalidInput: a value :func:`import_image` would refuse (naming its field).
    :raise NotFound: no such image.
    """
    marker = changes.ready_marker or None
    _check_guest_facts(changes.os_hint, marker, changes.ssh_user)
    users = _users(ctx, name)
    with _lock(ctx, name), ctx.db.session() as session:
        row = session.scalars(select(ImageRow).where(ImageRow.name == name)).first()
        if row is None:
            raise NotFound("image", name)
        if changes.os_hint is not None:
            row.os_hint = changes.os_hint
        if changes.ssh_user is not None:
            row.ssh_user = changes.ssh_user
        if changes.ready_marker is not None:
            row.ready_marker = marker
        session.flush()
        return _view(row, users, project_name(session, row.project_id))


def delete_image(ctx: Corral, name: str) -> ImageView:
    """Delete a base image no VM uses.

    :return: the image as it was.
    :raise NotFound: no such image.
    :raise InUse: VMs are cloned from it.
    """
    with _lock(ctx, name):
        users = _users(ctx, name)
        with ctx.db.session() as session:
            row = session.scalars(select(ImageRow).where(ImageRow.name == name)).first()
            if row is None:
                raise NotFound("image", name)
            if users:
                raise InUse("image", name, users)
            view = _view(row, [], project_name(session, row.project_id))
            session.delete(row)
            session.flush()
            shutil.rmtree(ctx.home.image_dir(name), ignore_errors=True)
    return view
