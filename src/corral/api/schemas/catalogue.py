"""Wire types that change the catalogue: importing and updating images, registering key pairs.

What the catalogue answers with (:class:`~corral.api.schemas.core.ImageRead`,
:class:`~corral.api.schemas.core.KeyPairRead`,
:class:`~corral.api.schemas.core.InstanceTypeRead`) is in :mod:`corral.api.schemas.core`;
instance types are read-only here (they are the host's, in ``instance-types.toml``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create

#: The formats an image file may be in (``corral.storage.formats.IMPORT_FORMATS``).
ImageFormat = Literal["raw", "qcow2", "vmdk", "vdi"]

#: Longest path corrald takes, in characters (Linux's ``PATH_MAX``).
MAX_PATH = 4096


class ImageFacts(Create):
    """What an image says about its guest, given at import."""

    os_hint: str = Field(default="", max_length=63, description="Shown in listings: 'debian 12'.")
    ssh_user: str = Field(
        default="",
        max_length=32,
        description="The user cloud-init gives the key to; empty: implied by the OS hint.",
    )
    ready_marker: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The serial console line that says the guest is ready.",
    )
    project: str = Field(
        default="default",
        max_length=63,
        description="The project that owns it; the images of 'default' every project uses.",
    )


class ImageUploadCreate(ImageFacts):
    """The query of ``PUT /images/{name}/file``: the file itself is the request body."""

    format: ImageFormat | None = Field(
        default=None, description="The file's format; detected from its header when left out."
    )


class ImageCreate(ImageFacts):
    """An image imported from a file on corrald's host (``POST /images``; admins only)."""

    name: str = Field(
        max_length=63, description="The image's name: lower-case letters, digits, '-'."
    )
    path: str = Field(
        min_length=1, max_length=MAX_PATH, description="The file, an absolute path on the host."
    )
    format: ImageFormat | None = Field(
        default=None, description="The file's format; detected from its header when left out."
    )
    kernel: str | None = Field(
        default=None, max_length=MAX_PATH, description="A kernel on the host, for direct boot."
    )
    initrd: str | None = Field(default=None, max_length=MAX_PATH, description="Its initrd.")
    cmdline: str = Field(default="", max_length=4096, description="Its kernel command line.")


class ImageUpdate(Create):
    """What ``PATCH /images/{name}`` changes; a field left out (or null) stays as it is."""

    os_hint: str | None = Field(default=None, max_length=63)
    ssh_user: str | None = Field(
        default=None, max_length=32, description="Empty: the user the OS hint implies."
    )
    ready_marker: str | None = Field(
        default=None, max_length=128, description="Empty: no ready marker."
    )


class KeyPairCreate(Create):
    """A public key to register (``POST /keypairs``); its private key stays where it was made."""

    name: str = Field(
        max_length=63,
        description="The key pair's name: lower-case letters, digits, '-', '.', '_'.",
    )
    public_key: str = Field(
        max_length=64 * 1024,
        description="One OpenSSH public key (what a .pub file holds) or its RFC 4716 form.",
    )
    project: str = Field(default="default", max_length=63, description="The project, by name.")
    private_key_path: str | None = Field(
        default=None,
        max_length=MAX_PATH,
        description="Where the private key is on the machine that made it (for `corral ssh` "
        "there); an absolute path, recorded as a hint and never read.",
    )
