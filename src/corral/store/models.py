"""Tables of corral's state: VMs, images and key pairs. Specs are stored as JSON."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class VmRow(Base):
    """A defined VM: its spec, its last known state and, while it runs, its QEMU process."""

    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    #: ``VmSpec`` as JSON.
    spec: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    #: Base image of the root disk, if any (for "in use" checks).
    image: Mapped[str | None] = mapped_column(String(63), index=True)
    #: Serial console line that says the guest is ready (from the image).
    ready_marker: Mapped[str | None] = mapped_column(String(128))
    #: Why the VM is in its state (last error, crash reason).
    reason: Mapped[str] = mapped_column(Text, default="")
    #: QEMU's PID and its start time in clock ticks (to tell a reused PID apart).
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_start: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Instance type it was launched with (``corral launch``); ``None`` for ``corral create``.
    instance_type: Mapped[str | None] = mapped_column(String(63))
    #: Key pair whose public key the seed installed.
    keypair: Mapped[str | None] = mapped_column(String(63))
    #: The cloud-init ``instance-id`` (``i-`` and 16 hex digits), stable for the VM's life.
    instance_id: Mapped[str | None] = mapped_column(String(32))
    #: The user ``corral ssh`` logs in as (from the image).
    ssh_user: Mapped[str | None] = mapped_column(String(32))


class ImageRow(Base):
    """A base image in the catalogue: a read-only qcow2 file and how to boot it."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    #: The catalogue's copy (always qcow2, read-only).
    path: Mapped[str] = mapped_column(Text)
    #: Format of the file it was imported from.
    source_format: Mapped[str] = mapped_column(String(8))
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    actual_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    os_hint: Mapped[str] = mapped_column(String(63), default="")
    #: Direct kernel boot, when the image needs it (copies inside the image's directory).
    kernel: Mapped[str | None] = mapped_column(Text)
    initrd: Mapped[str | None] = mapped_column(Text)
    cmdline: Mapped[str] = mapped_column(Text, default="")
    ready_marker: Mapped[str | None] = mapped_column(String(128))
    #: The user cloud-init gives the key pair's key to (``debian``, ``ubuntu``, ``root``).
    ssh_user: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KeyPairRow(Base):
    """An SSH public key that launches install in guests. The private key is never stored."""

    __tablename__ = "keypairs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    #: The key's algorithm as OpenSSH names it (``ssh-ed25519``, ``ssh-rsa``, ...).
    kind: Mapped[str] = mapped_column(String(64))
    #: The public key in ``authorized_keys`` form: ``<kind> <base64> [comment]``.
    public_key: Mapped[str] = mapped_column(Text)
    #: ``SHA256:<base64>``, as ``ssh-keygen -l`` prints it.
    fingerprint: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str] = mapped_column(Text, default="")
    #: Where the private key was written or said to be (a path, never the key).
    private_key_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
