"""Wire types of volumes: disks of a project, and (read-only, in listings) VMs' disks."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from corral.api.schemas.base import Create, Read
from corral.errors import InvalidInput
from corral.spec.vm import NAME_PATTERN
from corral.storage.volumes import MAX_VOLUME_SIZE, parse_volume_size

#: What a name must look like, said in words (the pattern is in the OpenAPI document).
_NAME_RULE = "use 1-63 lower-case letters, digits and '-', starting with a letter or digit"


def _name(value: str) -> str:
    if not re.match(NAME_PATTERN, value):
        raise ValueError(f"{value!r} is not allowed: {_NAME_RULE}")
    return value


class VolumeRead(Read):
    """A volume, or in listings a VM's disk (kind ``vm-disk``, named ``<vm>/<disk>``)."""

    name: str
    project: str
    kind: Literal["volume", "vm-disk"] = Field(
        description="'volume', or 'vm-disk': a VM's own disk, shown read-only (see /vms)."
    )
    format: Literal["qcow2", "raw"]
    size: int = Field(description="Provisioned (virtual) size in bytes.")
    used: int = Field(description="Bytes allocated on the host.")
    attached_to: str | None = Field(description="The VM it is attached to, by name.")
    description: str
    image: str | None = Field(description="The image a VM's disk is a linked clone of.")
    created_at: str


class VolumeCreate(Create):
    """A blank volume to create (``POST /volumes``)."""

    name: str = Field(
        max_length=63,
        description="Unique within the project: lower-case letters, digits, '-'.",
        examples=["data"],
    )
    size: str | int = Field(
        description=f"Provisioned size: '10G' (binary units) or bytes; at most "
        f"{MAX_VOLUME_SIZE // 1024**4} TiB.",
        examples=["10G", 1073741824],
    )
    format: Literal["qcow2", "raw"] = Field(
        default="qcow2", description="qcow2 (thin, snapshots) or raw (sparse file)."
    )
    project: str = Field(
        default="default", max_length=63, description="The project, by name.", examples=["p1"]
    )
    description: str = Field(default="", max_length=1000)

    @field_validator("name")
    @classmethod
    def check_name(cls, value: str) -> str:
        return _name(value)

    @field_validator("size", mode="before")
    @classmethod
    def check_size(cls, value: object) -> object:
        try:
            return parse_volume_size(value)
        except InvalidInput as exc:
            raise ValueError(exc.reason) from None


class VolumeUpdate(Create):
    """What ``PATCH /volumes/{name}`` changes; a field left out keeps its value."""

    name: str | None = Field(
        default=None, max_length=63, description="A new name, unique within the project."
    )
    description: str | None = Field(default=None, max_length=1000)

    @field_validator("name")
    @classmethod
    def check_name(cls, value: str | None) -> str | None:
        return None if value is None else _name(value)


class VolumeAttach(Create):
    """``POST /volumes/{name}/attach``: the VM it goes to."""

    vm: str = Field(
        max_length=63,
        description="A VM of the volume's project. A running one gets it at once (hotplug); "
        "a stopped one at its next start.",
        examples=["web1"],
    )

    @field_validator("vm")
    @classmethod
    def check_vm(cls, value: str) -> str:
        return _name(value)


class VolumeDetach(Create):
    """``POST /volumes/{name}/detach``: how long a running guest has to release it."""

    timeout: float = Field(
        default=10.0,
        ge=1,
        le=120,
        description="Seconds the guest of a running VM has to release the disk; past them "
        "the answer is 504 and the volume stays attached.",
    )


class VolumeResize(Create):
    """``POST /volumes/{name}/resize``: the new, larger size."""

    size: str | int = Field(
        description="The new provisioned size: '20G' or bytes; larger than the current one.",
        examples=["20G"],
    )

    @field_validator("size", mode="before")
    @classmethod
    def check_size(cls, value: object) -> object:
        try:
            return parse_volume_size(value)
        except InvalidInput as exc:
            raise ValueError(exc.reason) from None


#: The formats a volume is imported from and exported to.
FileFormat = Literal["raw", "qcow2", "vmdk", "vdi"]


class VolumeUploadCreate(Create):
    """The query of ``PUT /volumes/{name}/file``: the file itself is the request body."""

    format: FileFormat | None = Field(
        default=None,
        description="The file's format; detected from its header when left out (an OVA, a "
        "tar of an OVF and VMDKs, only so).",
    )
    project: str = Field(
        default="default", max_length=63, description="The project, by name.", examples=["p1"]
    )
    description: str = Field(default="", max_length=1000)


class VolumeImport(VolumeUploadCreate):
    """A volume imported from a file on corrald's host (``POST /volumes/import``; admins)."""

    name: str = Field(
        max_length=63,
        description="Unique within the project; an OVA's further disks are NAME-1, NAME-2, ...",
        examples=["data"],
    )
    path: str = Field(
        min_length=1, max_length=4096, description="The file, an absolute path on the host."
    )

    @field_validator("name")
    @classmethod
    def check_name(cls, value: str) -> str:
        return _name(value)


class VolumeExport(Create):
    """The query of ``GET /volumes/{name}/file``."""

    format: FileFormat = Field(description="The copy's format.", examples=["raw"])
    project: str | None = Field(
        default=None,
        max_length=63,
        description="The volume's project, by name; needed only when the name is in several "
        "of the caller's projects.",
    )
