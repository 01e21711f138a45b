"""How an attached volume appears in QEMU: its node names, its device, and the plug plan.

Everything here is pure. The same options serve the command line (a volume attached while
the VM was stopped, see :mod:`corral.qemu.argv`) and hotplug over QMP (``blockdev-add``
then ``device_add``; the reverse to unplug), so a volume is the same device whichever way
it arrived.

A volume's device id is derived from the volume's id, never from a counter or the order
of attachment: ``vol-`` and the first 16 hex digits of its UUID. It names the device, its
two block nodes (``<id>.file`` and ``<id>.fmt``) and is the disk's serial number, which
the guest reads in ``/sys/block/<disk>/serial`` to tell volumes apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from uuid import UUID

from corral.qemu.paths import ImageLayer

#: The prefix of volumes' device ids; no disk (``disk-``), NIC (``nic-``) or seed id has it.
PREFIX: Final = "vol-"
#: What a volume's device id looks like.
DEVICE_ID = re.compile(r"^vol-[0-9a-f]{16}$")


def device_id(volume_id: str) -> str:
    """The device id of the volume ``volume_id`` (a UUID): ``vol-`` and 16 hex digits, 20
    characters, which fits QEMU's node names (31) and virtio-blk's serial number (20).

    :raise ValueError: ``volume_id`` is not a UUID.
    """
    return PREFIX + UUID(volume_id).hex[:16]


def file_node(dev: str) -> str:
    """The ``file`` node of the volume whose device id is ``dev``."""
    return f"{dev}.file"


def format_node(dev: str) -> str:
    """The format node (the one the device and ``block_resize`` name)."""
    return f"{dev}.fmt"


@dataclass(frozen=True)
class Plug:
    """The QMP arguments that plug one volume in, in order, and what unplugs it."""

    #: ``blockdev-add`` arguments: the file node, then the format node on it.
    blockdevs: tuple[dict[str, object], ...]
    #: ``device_add`` arguments.
    device: dict[str, object]

    @property
    def device_id(self) -> str:
        return str(self.device["id"])

    @property
    def node_names(self) -> tuple[str, ...]:
        """The nodes, in the order ``blockdev-del`` removes them (the format node first)."""
        return tuple(str(node["node-name"]) for node in reversed(self.blockdevs))


def plan_plug(dev: str, layer: ImageLayer, driver: str = "virtio-blk-pci") -> Plug:
    """The nodes and device of volume ``dev`` whose file is ``layer``.

    The format is always named (never probed), the volume has no backing (``backing``
    null on qcow2), and the guest's discards reach the file.

    :param driver: the device model: ``virtio-blk-pci``, or ``virtio-blk-device`` on a
        machine without PCI.
    :raise ValueError: ``dev`` is not a volume's device id.
    """
    if not DEVICE_ID.match(dev):
        raise ValueError(f"not a volume device id: {dev!r}")
    common: dict[str, object] = {"discard": "unmap", "read-only": False}
    file: dict[str, object] = {
        "driver": "file",
        "filename": layer.path,
        "node-name": file_node(dev),
        **common,
    }
    fmt: dict[str, object] = {
        "driver": layer.format,
        "file": file_node(dev),
        "node-name": format_node(dev),
        **common,
    }
    if layer.format == "qcow2":
        fmt["backing"] = None
    device: dict[str, object] = {
        "driver": driver,
        "drive": format_node(dev),
        "id": dev,
        "serial": dev,
    }
    return Plug((file, fmt), device)
