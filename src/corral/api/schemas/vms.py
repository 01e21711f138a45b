"""Wire types of the VM verbs beyond defining and reading one: changing a VM
(``PATCH /vms/{name}``) and the options of its actions, one body per action.

An action's body may be left out: every option has its default. ``DELETE /vms/{name}``
takes its one option as a query parameter (``keep_disks``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from corral.api.schemas.base import Create

#: Longest wait an action may ask for, in seconds.
MAX_TIMEOUT = 3600.0
#: In the final detail of a delete's task, before each disk it kept (``deleted; kept disk
#: /path``): how a client finds them.
KEPT_DISK = "; kept disk "


class VmUpdate(Create):
    """What to change of a VM (``PATCH /vms/{name}``); a field left out keeps its value.

    vCPUs, memory, forwards and the display take effect at the next start, so they may change
    only while the VM does not run (409 naming its state otherwise); growth counts against the
    project's quota (403 naming the quota).
    """

    vcpus: int | None = Field(default=None, ge=1, le=1024)
    memory: str | int | None = Field(default=None, description="Guest memory: bytes, or '1G'.")
    forwards: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Host port forwards replacing the VM's own ([] removes them all): "
        "[tcp|udp:][ADDR:]HOSTPORT:GUESTPORT.",
    )
    display: Literal["vnc", "none"] | None = Field(
        default=None,
        description="'vnc': a VNC display on the VM's UNIX socket (enable); 'none': no display "
        "(disable, forgetting its VNC password). Only while the VM does not run: QEMU adds or "
        "removes a VNC server only at start.",
    )


class VmStartCreate(Create):
    """Options of ``POST /vms/{name}/start``."""

    wait: bool = Field(
        default=False,
        description="The task ends once the guest's ready marker is on its serial console, "
        "not once QEMU runs.",
    )
    timeout: float = Field(
        default=120.0,
        gt=0,
        le=MAX_TIMEOUT,
        description="With wait: seconds the guest gets to be ready (the task then ends as "
        "error, the VM left running).",
    )


class VmStopCreate(Create):
    """Options of ``POST /vms/{name}/stop``."""

    timeout: float = Field(
        default=60.0,
        gt=0,
        le=MAX_TIMEOUT,
        description="Seconds the guest gets to power off after the ACPI power button.",
    )
    force: bool = Field(
        default=True,
        description="Force the VM off after the timeout; if false, the task ends as error "
        "and the VM runs on.",
    )


class VmRebootCreate(Create):
    """Options of ``POST /vms/{name}/reboot``."""

    wait: bool = Field(
        default=False,
        description="The task ends once the guest's ready marker is on its serial console again.",
    )
    timeout: float = Field(
        default=60.0,
        gt=0,
        le=MAX_TIMEOUT,
        description="Seconds the guest gets to shut down before it is reset anyway.",
    )
