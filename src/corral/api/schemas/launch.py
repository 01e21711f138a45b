"""Wire types of launching and logging in: the launch request, a launch's progress and
outcome (``GET /launch/{task_id}``), and what an SSH client needs (``GET /vms/{name}/ssh``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create, ErrorRead, Read
from corral.api.schemas.core import NicCreate

PhaseName = Literal["clone", "seed", "start", "boot", "ready"]


class LaunchCreate(Create):
    """Instances to launch (``POST /launch``): what ``corral launch`` takes."""

    name: str = Field(
        max_length=63, description="The instance's name; with a count, name-1 .. name-N."
    )
    image: str = Field(max_length=255)
    instance_type: str = Field(max_length=63, description="t1.micro, ...")
    keypair: str = Field(max_length=63, description="The key pair whose public key logs in.")
    user_data: str | None = Field(
        default=None,
        description="cloud-init user-data (#cloud-config, a script...), merged with corral's.",
    )
    count: int = Field(default=1, ge=1, le=64)
    disk_size: str | int | None = Field(
        default=None, description="Root disk size; none takes the instance type's."
    )
    isolated: bool = Field(
        default=False, description="Cut the guest off from the host and the outside but SSH."
    )
    timeout: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Seconds from the instances' start until their SSH servers must answer; "
        "an instance not ready by then is left running and the task ends as error.",
    )
    project: str = Field(default="default", max_length=63, description="The project, by name.")
    networks: list[NicCreate] = Field(
        default_factory=list,
        max_length=8,
        description="The instances' NICs, in order; empty: one user-mode NIC with the SSH "
        "forward. Without a user-mode NIC, SSH reaches the first managed network's address.",
    )


class PhaseRead(Read):
    """One phase of one instance."""

    state: Literal["running", "done", "failed"]
    seconds: float | None = Field(description="How long it took; none while it runs.")


class LaunchInstanceRead(Read):
    """One instance of a launch, so far."""

    name: str
    status: Literal["pending", "running", "ready", "not ready", "removed"] = Field(
        description="pending: QEMU not started yet; running: started, SSH not answering yet; "
        "ready: SSH answers; not ready: not by the deadline (left running for inspection); "
        "removed: the launch failed before it waited and removed what it had made."
    )
    instance_id: str | None = Field(description="cloud-init's instance id, once cloned.")
    address: str = Field(description="Where its SSH forward listens, on the daemon's host.")
    port: int | None = Field(description="The forward's port, once reserved.")
    user: str = Field(description="The login user.")
    keypair: str
    phases: dict[PhaseName, PhaseRead] = Field(
        description="The phases begun so far (clone, seed, start, boot, ready), in order."
    )
    error: str | None = Field(description="Why it is not ready.")
    ssh_command: list[str] = Field(
        description="Once ready: the OpenSSH command line that logs in from the daemon's host "
        "(a client elsewhere builds its own from GET /vms/{name}/ssh)."
    )


class LaunchErrorRead(ErrorRead):
    """Why a launch failed."""

    status: int = Field(description="The HTTP status of the error's class.")
    last_lines: list[str] = Field(
        description="The guest's last console lines (or QEMU's last words), when they tell more."
    )


class LaunchRead(Read):
    """A launch, so far: each instance's phases, and how it ended.

    The task of ``POST /launch`` names it (``GET /launch/{task_id}``). Each change raises
    ``version``: a client that has seen version N asks with ``after=N&wait=S`` and is
    answered at the next change (or after S seconds), so it follows the launch as it goes.
    """

    task_id: str
    project: str
    status: Literal["running", "success", "error"] = Field(
        description="The launch's own status: success once every instance answers SSH."
    )
    version: int = Field(description="Grows with every change.")
    instances: list[LaunchInstanceRead]
    error: LaunchErrorRead | None = Field(description="Why it failed.")


class SshAccessRead(Read):
    """What an SSH client needs to log in to a VM (``corral ssh`` and ``corral scp``).

    The forward listens on the daemon's host: at ``address`` for a client there; a client
    elsewhere reaches a loopback address through that host, or a wildcard one at the host's
    own address. The host keys were printed by the guest on its serial console, which the
    guest cannot forge for another machine: check the server against them, and nothing else.
    """

    vm: str
    user: str = Field(description="The login user (the image's, or root).")
    address: str = Field(description="Where the forward listens, as the daemon's host sees it.")
    port: int
    keypair: str | None = Field(description="The key pair installed in the guest, if any.")
    identity: str | None = Field(
        description="The private key file recorded for the key pair, if one was: a path on "
        "the machine that made or imported it."
    )
    host_key_alias: str = Field(description="The name the host keys are filed under.")
    host_keys: list[str] = Field(
        description="'<type> <base64>' host keys; empty until the console has shown them."
    )
    known_hosts: str = Field(description="The VM's known_hosts file, on the daemon's host.")
