"""Wire types of the first resources: VMs, images, instance types, key pairs, the host and
tasks.

Read types mirror the service layer's views; create and update types are separate classes
that forbid unknown fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.api.schemas.base import Read


class DiskRead(Read):
    name: str
    path: str = Field(description="Its file on the host.")
    image: str | None
    provisioned: int = Field(description="Virtual size in bytes.")
    used: int = Field(description="Bytes allocated on the host.")


class VmRead(Read):
    """A VM as the VM list and its detail page show it."""

    name: str
    project: str
    uuid: str
    state: str
    reason: str
    vcpus: int
    memory: int = Field(description="Guest memory in bytes.")
    machine: str
    image: str | None
    provisioned: int
    used: int
    host_cpu: float | None = Field(description="Host CPU use in percent of one core.")
    host_memory: int | None = Field(description="QEMU's resident memory in bytes.")
    pid: int | None
    created_at: str
    state_changed_at: str
    disks: list[DiskRead]
    forwards: list[str]
    console: str | None = Field(description="The serial console's socket on the host, if any.")
    vnc: str | None = Field(description="The VNC display's socket or address, if any.")
    instance_type: str | None
    keypair: str | None
    instance_id: str | None
    ssh: str | None


class ImageRead(Read):
    name: str
    project: str
    format: str
    source_format: str
    virtual_size: int
    actual_size: int
    sha256: str
    os_hint: str
    ssh_user: str
    boot: str = Field(description="'kernel' (direct kernel boot) or 'firmware'.")
    kernel: str | None = Field(description="The kernel of a direct boot, on corrald's host.")
    initrd: str | None
    cmdline: str
    ready_marker: str | None
    path: str = Field(description="The image's file on corrald's host.")
    created_at: str
    used_by: list[str]


class InstanceTypeRead(Read):
    name: str
    vcpus: int
    memory: int
    disk: int
    price_per_hour: str
    currency: str
    description: str
    source: str


class KeyPairRead(Read):
    name: str
    project: str
    kind: str
    bits: int
    fingerprint: str
    comment: str
    public_key: str
    private_key_path: str | None = Field(
        description="Where the private key is on the machine that made it (a hint, never read)."
    )
    created_at: str


class HostSummary(Read):
    """The host at a glance, as vSphere's summary page shows it."""

    hostname: str
    cpu_model: str
    cpus: int
    cpu_usage: float = Field(description="Percent of all CPUs busy, since the previous call.")
    memory_total: int
    memory_used: int
    datastore: str = Field(description="The state directory's file system.")
    datastore_capacity: int
    datastore_free: int
    accelerator: str
    qemu_version: str
    vms_running: int
    vms_total: int
    networks: list[str]


class TaskRead(Read):
    """A long operation: what it works on, where it is, who asked, when."""

    id: str
    name: str = Field(description="The operation: vm.start, vm.delete...")
    target_kind: str
    target_name: str
    status: Literal["queued", "running", "success", "error", "cancelled"]
    progress: int = Field(ge=0, le=100, description="Percent done.")
    detail: str = Field(description="What it is doing, or what it did.")
    error: str | None = Field(description="Why it ended as error.")
    initiated_by: str
    requested_at: str
    started_at: str | None
    completed_at: str | None
    cancellable: bool = Field(description="Whether POST /tasks/{id}/cancel would accept it now.")


class NicCreate(BaseModel):
    """A NIC of a VM to define or launch: on a virtual network, or user-mode NAT."""

    model_config = ConfigDict(extra="forbid")

    network: str = Field(
        max_length=63,
        description="The network, by name (one of the VM's project); 'user': user-mode NAT "
        "(where port forwards go).",
    )
    ip: str | None = Field(
        default=None,
        max_length=15,
        description="A fixed IPv4 address on a managed network; none: the network assigns one.",
    )
    link: bool = Field(default=True, description="Carrier up, or down (no traffic passes).")


class VmCreate(BaseModel):
    """A VM to define (``POST /vms``): what ``corral create`` takes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63, description="The VM's name: lower-case letters, digits, '-'.")
    image: str | None = Field(
        default=None,
        max_length=255,
        description="The image its root disk is cloned from; none for a blank disk.",
    )
    vcpus: int = Field(default=1, ge=1, le=1024)
    memory: str | int = Field(default="512M", description="Guest memory: bytes, or '512M'.")
    disk_size: str | int | None = Field(
        default=None, description="Root disk's virtual size (grows the image's); none keeps it."
    )
    data_disks: list[str | int] = Field(
        default_factory=list,
        max_length=16,
        description="Blank disks to add, by size (data1, data2, ...).",
    )
    cpu: str | None = Field(
        default=None, max_length=64, description="QEMU CPU model; none: the host's under KVM."
    )
    vnc: bool = Field(default=False, description="Add a VNC display on a UNIX socket.")
    display: Literal["none", "vnc", "curses", "sdl", "gtk"] | None = Field(
        default=None,
        description="The display: none, vnc, or a front end of the host's QEMU (curses, sdl, "
        "gtk) where it can show one; default: vnc with `vnc`, else none.",
    )
    forwards: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Host port forwards: [tcp|udp:][ADDR:]HOSTPORT:GUESTPORT.",
    )
    project: str = Field(default="default", max_length=63, description="The project, by name.")
    machine: str = Field(default="pc", max_length=63, description="QEMU machine type.")
    firmware: Literal["bios", "uefi"] = Field(
        default="bios", description="Firmware, for images that boot from disk."
    )
    cdrom: str | None = Field(
        default=None,
        max_length=4096,
        description="An ISO 9660 file on the daemon's host for a CD-ROM drive (admins only).",
    )
    boot: Literal["disk", "cdrom", "network"] | None = Field(
        default=None,
        description="What firmware boots first: the disk, the CD-ROM, or the network (the "
        "NIC's iPXE ROM); none: the CD-ROM when there is one, else the disk.",
    )
    networks: list[NicCreate] = Field(
        default_factory=list,
        max_length=8,
        description="The VM's NICs, in order (net0, net1, ...); empty: one user-mode NIC. A NIC "
        "on a network gets a port there: a MAC of its own and, on a managed network, an "
        "address that DHCP gives it and `<vm>.<network>` names.",
    )
