"""Tables of corral's state. One row per VM and per image; specs are stored as JSON."""

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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
