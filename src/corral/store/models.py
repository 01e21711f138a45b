"""Tables of corral's state: VMs, images, key pairs (specs stored as JSON) and volumes;
projects, users, their memberships and API tokens, quotas, the audit log and tasks; virtual
networks and the ports guests have on them.

Every VM, image, key pair and volume belongs to a project; the project ``default`` (id
:data:`DEFAULT_PROJECT_ID`) is made by migration 0003 and owns whatever is created without a
project. The tables work on SQLite and PostgreSQL alike: strings have lengths, times are
timezone-aware, and every foreign key and check constraint has a name.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Id of the project ``default``; migration 0003 inserts it with this very id.
DEFAULT_PROJECT_ID = "00000000-0000-4000-8000-000000000001"
#: Name of the project that owns objects created without one.
DEFAULT_PROJECT = "default"
#: The global roles a user may have, from most to least powerful.
ROLES = ("admin", "operator", "viewer")
#: Length of a token id, in hex digits (the id is also inside the token).
TOKEN_ID_LENGTH = 16


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` made timezone-aware: SQLite hands back naive datetimes, which are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _project_fk(table: str) -> ForeignKey:
    return ForeignKey("projects.id", name=f"fk_{table}_project_id_projects")


class Base(DeclarativeBase):
    """Declarative base of every table."""


class VmRow(Base):
    """A defined VM: its spec, its last known state and, while it runs, its QEMU process."""

    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    #: The project that owns it (the project ``default`` unless told otherwise).
    project_id: Mapped[str] = mapped_column(
        String(36), _project_fk("vms"), index=True, default=DEFAULT_PROJECT_ID
    )
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
    #: Where snapshots left the disks, as JSON: ``{"current": <snapshot id or null>,
    #: "disks": {<disk>: [<file>, ...]}}``, files inside the VM's directory, top first, the
    #: image not included. ``None`` until the first snapshot: each disk is ``<disk>.qcow2``.
    disk_chain: Mapped[str | None] = mapped_column(Text)


class ImageRow(Base):
    """A base image in the catalogue: a read-only qcow2 file and how to boot it."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    #: The project that owns it (the project ``default`` unless told otherwise).
    project_id: Mapped[str] = mapped_column(
        String(36), _project_fk("images"), index=True, default=DEFAULT_PROJECT_ID
    )
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
    #: The project that owns it (the project ``default`` unless told otherwise).
    project_id: Mapped[str] = mapped_column(
        String(36), _project_fk("keypairs"), index=True, default=DEFAULT_PROJECT_ID
    )
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


class VolumeRow(Base):
    """A volume: a disk file of its own in the state directory's pool
    (``volumes/<id>.<format>``), named uniquely within its project.

    The file's name is the id, not the volume's name: a rename touches only the row.
    """

    __tablename__ = "volumes"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_volumes_project_id_name"),
        CheckConstraint("format IN ('qcow2', 'raw')", name="ck_volumes_format"),
        CheckConstraint("size > 0", name="ck_volumes_size"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: Unique within the project; the same name may be used by another project.
    name: Mapped[str] = mapped_column(String(63), index=True)
    project_id: Mapped[str] = mapped_column(String(36), _project_fk("volumes"))
    #: ``qcow2`` or ``raw``: how the file is opened, never guessed from its content.
    format: Mapped[str] = mapped_column(String(8))
    #: Provisioned (virtual) size in bytes, as created; counted against the disk quota.
    size: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text, default="")
    #: The id of the VM it is attached to; ``None`` while detached. Deleting the VM
    #: detaches it.
    attached_to: Mapped[str | None] = mapped_column(
        String(36),
        ForeignKey("vms.id", name="fk_volumes_attached_to_vms", ondelete="SET NULL"),
        index=True,
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProjectRow(Base):
    """A tenant: VMs, images and key pairs belong to one; users are members of some."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserRow(Base):
    """A user of the API: a global role, membership of projects, a password and tokens."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'operator', 'viewer')", name="ck_users_role"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    #: The argon2id hash in PHC form (``$argon2id$v=19$m=...``); ``None``: tokens only.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    #: One of :data:`ROLES`; it holds in every project the user is a member of.
    role: Mapped[str] = mapped_column(String(16))
    #: A disabled user's tokens and password are refused; the record and its tokens stay.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MembershipRow(Base):
    """A user's membership of a project."""

    __tablename__ = "memberships"
    __table_args__ = (PrimaryKeyConstraint("user_id", "project_id", name="pk_memberships"),)

    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("users.id", name="fk_memberships_user_id_users", ondelete="CASCADE")
    )
    project_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("projects.id", name="fk_memberships_project_id_projects", ondelete="CASCADE"),
        index=True,
    )


class TokenRow(Base):
    """An API token. Only the SHA-256 of the secret is kept, never the secret itself.

    A token reads ``crl_<id>_<random>``: the id finds the row, the hash of the whole token
    proves it.
    """

    __tablename__ = "tokens"

    #: :data:`TOKEN_ID_LENGTH` hex digits, also inside the token.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("users.id", name="fk_tokens_user_id_users", ondelete="CASCADE"),
        index=True,
    )
    #: What the token is for, as its owner named it.
    name: Mapped[str] = mapped_column(String(63))
    #: SHA-256 of the whole token, in hex.
    secret_hash: Mapped[str] = mapped_column(String(64))
    #: The token's first characters (``crl_`` and the id's first 8), to recognise it.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Updated at most once a minute.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class QuotaRow(Base):
    """The limits of one project; ``None`` is unlimited, and so is a project without a row."""

    __tablename__ = "quotas"

    project_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("projects.id", name="fk_quotas_project_id_projects", ondelete="CASCADE"),
        primary_key=True,
    )
    instances: Mapped[int | None] = mapped_column(Integer)
    vcpus: Mapped[int | None] = mapped_column(Integer)
    #: Guest memory of all instances, in bytes.
    memory: Mapped[int | None] = mapped_column(BigInteger)
    #: Provisioned (virtual) size of all instances' disks, in bytes.
    disk: Mapped[int | None] = mapped_column(BigInteger)


class AuditRow(Base):
    """One entry of the audit log: who did what to which object, and how it ended.

    Names, not foreign keys: an entry outlives the user, project and object it names.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    #: A user's name, or ``local:<uid>`` for the local administrator.
    actor: Mapped[str] = mapped_column(String(80), index=True)
    #: ``<kind>.<verb>``: ``project.create``, ``token.revoke``.
    action: Mapped[str] = mapped_column(String(63))
    target_kind: Mapped[str] = mapped_column(String(32))
    target_name: Mapped[str] = mapped_column(String(255))
    #: The project's name, if the object belongs to one.
    project: Mapped[str | None] = mapped_column(String(63), index=True)
    #: ``ok``, or the class of the error that refused it (``NotFound``, ``QuotaExceeded``).
    outcome: Mapped[str] = mapped_column(String(63))
    #: JSON object with what else there is to know (the role given, the error's message).
    detail: Mapped[str] = mapped_column(Text, default="{}")


#: The statuses a task may have; the last three are final.
TASK_STATUSES = ("queued", "running", "success", "error", "cancelled")


class TaskRow(Base):
    """One long operation (``vm.start``, ``vm.delete``...): who asked, how far it got, how it
    ended.

    Target and project by value, not foreign key: a task outlives the VM it deleted.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'success', 'error', 'cancelled')",
            name="ck_tasks_status",
        ),
        CheckConstraint("progress BETWEEN 0 AND 100", name="ck_tasks_progress"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: ``<kind>.<verb>``: ``vm.start``.
    name: Mapped[str] = mapped_column(String(63))
    target_kind: Mapped[str] = mapped_column(String(32))
    target_name: Mapped[str] = mapped_column(String(255))
    #: The target's project (``None`` for what belongs to none: only admins see it).
    project_id: Mapped[str | None] = mapped_column(String(36), index=True)
    #: One of :data:`TASK_STATUSES`.
    status: Mapped[str] = mapped_column(String(16), index=True)
    #: Percent done, 0-100.
    progress: Mapped[int] = mapped_column(Integer, default=0)
    #: What it is doing now, or what it did.
    detail: Mapped[str] = mapped_column(Text, default="")
    #: Why it ended as ``error`` (the error's message).
    error: Mapped[str | None] = mapped_column(Text)
    #: A user's name, or ``local:<uid>`` for the local administrator.
    initiated_by: Mapped[str] = mapped_column(String(80))
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Whether the operation may be cancelled while it runs (any task may be while queued).
    cancellable: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The corrald instance that runs it; another instance finding it unfinished knows it
    #: was interrupted.
    daemon_id: Mapped[str] = mapped_column(String(36))


class SnapshotRow(Base):
    """A snapshot of a VM's disks: one node of the VM's snapshot tree.

    Its frozen files (one per disk, inside the VM's directory) are read-only from the moment
    it is taken; the VM's position in the tree is :attr:`VmRow.disk_chain`. Deleting the VM
    deletes its snapshots.
    """

    __tablename__ = "snapshots"
    __table_args__ = (
        UniqueConstraint("vm_id", "name", name="uq_snapshots_vm_id_name"),
        CheckConstraint("kind IN ('disk', 'memory')", name="ck_snapshots_kind"),
        CheckConstraint(
            "(kind = 'memory') = (memory_file IS NOT NULL)", name="ck_snapshots_memory_file"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vm_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("vms.id", name="fk_snapshots_vm_id_vms", ondelete="CASCADE"),
        index=True,
    )
    #: Unique within the VM.
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    #: ``disk`` (the disks only) or ``memory`` (the disks, the guest's RAM and device state).
    kind: Mapped[str] = mapped_column(String(16), default="disk")
    #: A ``memory`` snapshot's saved state (a file inside the VM's directory); else ``None``.
    memory_file: Mapped[str | None] = mapped_column(String(255), default=None)
    #: The snapshot it was taken after (its parent in the tree); ``None`` for a root.
    parent_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("snapshots.id", name="fk_snapshots_parent_id_snapshots")
    )
    #: The frozen file of each disk, as JSON: ``{<disk>: <file>}``.
    layers: Mapped[str] = mapped_column(Text)
    #: The VM's state when it was taken (``running``, ``shutoff``, ...).
    vm_state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NetworkRow(Base):
    """A virtual network (:class:`~corral.spec.net.NetworkSpec`, stored as JSON) of a project.

    Its name is unique on the host, whatever the project: it names the network's bridge and
    its guests' DNS domain.
    """

    __tablename__ = "networks"
    __table_args__ = (
        UniqueConstraint("name", name="uq_networks_name"),
        CheckConstraint("kind IN ('nat', 'isolated', 'bridged')", name="ck_networks_kind"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(String(36), _project_fk("networks"))
    #: ``nat``, ``isolated`` or ``bridged`` (also in the spec; here for queries).
    kind: Mapped[str] = mapped_column(String(16))
    #: The network's spec, as JSON.
    spec: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PortRow(Base):
    """One NIC of a VM on a network: its MAC and, on a managed network, its fixed address.

    What address management reads and writes, in the transaction that adds or removes the
    NIC: MACs are unique on the host, addresses within their network. Deleting the VM
    deletes its ports; a network with ports cannot be deleted.
    """

    __tablename__ = "ports"
    __table_args__ = (
        UniqueConstraint("mac", name="uq_ports_mac"),
        UniqueConstraint("network_id", "address", name="uq_ports_network_id_address"),
        UniqueConstraint("vm_id", "nic", name="uq_ports_vm_id_nic"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vm_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("vms.id", name="fk_ports_vm_id_vms", ondelete="CASCADE")
    )
    #: The NIC's name within its VM (``net0``).
    nic: Mapped[str] = mapped_column(String(63))
    network_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("networks.id", name="fk_ports_network_id_networks"),
        index=True,
    )
    #: ``52:54:00:xx:xx:xx``, lower-case.
    mac: Mapped[str] = mapped_column(String(17))
    #: The guest's IPv4 address on a managed network; ``None`` on a bridged one.
    address: Mapped[str | None] = mapped_column(String(15), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SecurityGroupRow(Base):
    """A security group: a named set of rules of a project, attached to ports."""

    __tablename__ = "security_groups"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_security_groups_project_id_name"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(String(36), _project_fk("security_groups"))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SgRuleRow(Base):
    """One rule of a security group: what it lets in (``in``) or out (``out``) of a port.

    ``protocol`` is ``tcp``, ``udp``, ``icmp`` or ``any``; the port range is for tcp and udp
    (``NULL``: every port); the peer is ``cidr`` or the ports of ``remote_group_id`` (neither:
    anywhere).
    """

    __tablename__ = "sg_rules"
    __table_args__ = (
        CheckConstraint("direction IN ('in', 'out')", name="ck_sg_rules_direction"),
        CheckConstraint("protocol IN ('tcp', 'udp', 'icmp', 'any')", name="ck_sg_rules_protocol"),
        CheckConstraint(
            "(port_min IS NULL AND port_max IS NULL) OR "
            "(port_min >= 1 AND port_max <= 65535 AND port_min <= port_max)",
            name="ck_sg_rules_ports",
        ),
        CheckConstraint("cidr IS NULL OR remote_group_id IS NULL", name="ck_sg_rules_one_peer"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    group_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey(
            "security_groups.id", name="fk_sg_rules_group_id_security_groups", ondelete="CASCADE"
        ),
        index=True,
    )
    direction: Mapped[str] = mapped_column(String(3))
    protocol: Mapped[str] = mapped_column(String(4))
    port_min: Mapped[int | None] = mapped_column(Integer, default=None)
    port_max: Mapped[int | None] = mapped_column(Integer, default=None)
    cidr: Mapped[str | None] = mapped_column(String(18), default=None)
    remote_group_id: Mapped[str | None] = mapped_column(
        String(36),
        ForeignKey("security_groups.id", name="fk_sg_rules_remote_group_id_security_groups"),
        default=None,
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PortGroupRow(Base):
    """A security group attached to a port (detached when the port goes)."""

    __tablename__ = "port_groups"

    port_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("ports.id", name="fk_port_groups_port_id_ports", ondelete="CASCADE"),
        primary_key=True,
    )
    group_id: Mapped[str] = mapped_column(
        String(36),
        ForeignKey("security_groups.id", name="fk_port_groups_group_id_security_groups"),
        primary_key=True,
        index=True,
    )


class FloatingIpRow(Base):
    """An address of the host's floating pool, allocated to a project and associated with at
    most one port (disassociated when the port goes)."""

    __tablename__ = "floating_ips"
    __table_args__ = (
        UniqueConstraint("address", name="uq_floating_ips_address"),
        UniqueConstraint("port_id", name="uq_floating_ips_port_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    address: Mapped[str] = mapped_column(String(15))
    project_id: Mapped[str] = mapped_column(String(36), _project_fk("floating_ips"))
    port_id: Mapped[str | None] = mapped_column(
        String(36),
        ForeignKey("ports.id", name="fk_floating_ips_port_id_ports", ondelete="SET NULL"),
        default=None,
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
