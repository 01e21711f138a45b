"""How a guest NIC appears in QEMU: its backend (``netdev``), its card (``device``) and its
link state.

Everything here is pure. The same dictionaries serve the command line (``-netdev`` and
``-device`` in JSON, see :mod:`corral.qemu.argv`) and hotplug over QMP (``netdev_add`` then
``device_add``; ``device_del`` then ``netdev_del`` to unplug), so a NIC is the same card
whichever way it arrived.

Ids come from the NIC's name: its netdev is ``net-<name>``, its device ``nic-<name>``. A
``network`` NIC's backend is the tap device :func:`corral.net.plan.nic_tap` names, which the
host side creates on the network's bridge before QEMU opens it: QEMU runs no script
(``script``/``downscript`` ``no``) and makes no device of its own. ``vhost`` moves the
virtio data path into the host kernel; it is asked for only when the host has
``/dev/vhost-net`` (:attr:`corral.host.models.HostCaps.vhost_net`) and the card is virtio
(an ``e1000`` has no vhost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corral.errors import InvalidInput
from corral.net.plan import nic_tap
from corral.spec.vm import VmSpec

#: Where devices plug in: PCI on the pc and q35 families, virtio-mmio on microvm.
Bus = Literal["pci", "mmio"]

#: The device model of each NIC model on each bus; microvm has no PCI, so no e1000.
NIC_DRIVER: dict[tuple[Bus, str], str] = {
    ("pci", "virtio-net-pci"): "virtio-net-pci",
    ("pci", "e1000"): "e1000",
    ("mmio", "virtio-net-pci"): "virtio-net-device",
}
#: The device models that can hand their data path to vhost-net.
VHOST_DRIVERS = frozenset({"virtio-net-pci", "virtio-net-device"})


def netdev_id(nic: str) -> str:
    """The id of NIC ``nic``'s backend (``netdev_add``, ``netdev_del``)."""
    return f"net-{nic}"


def device_id(nic: str) -> str:
    """The id of NIC ``nic``'s card (``device_add``, ``device_del``, ``set_link``)."""
    return f"nic-{nic}"


@dataclass(frozen=True)
class NicPlug:
    """The QMP arguments that plug one NIC in, in order: the backend, then the card."""

    #: ``netdev_add`` arguments (the ``-netdev`` JSON).
    netdev: dict[str, object]
    #: ``device_add`` arguments (the ``-device`` JSON).
    device: dict[str, object]

    @property
    def netdev_id(self) -> str:
        return str(self.netdev["id"])

    @property
    def device_id(self) -> str:
        return str(self.device["id"])


def plan_nic(spec: VmSpec, index: int, bus: Bus, *, vhost_net: bool = False) -> NicPlug:
    """The backend and card of NIC ``index`` of ``spec``.

    A ``user`` NIC is user-mode NAT with its port forwards; a ``network`` NIC is its tap
    (``ifname`` from the VM's UUID and the NIC's name), with ``vhost`` when ``vhost_net`` and
    the card is virtio. The card has the NIC's MAC (:meth:`VmSpec.nic_mac`); on PCI it loads
    no iPXE option ROM unless the NIC boots from the network (``bootindex`` 0).

    :param spec: the VM the NIC belongs to.
    :param index: the NIC's position in ``spec.nics``.
    :param bus: where the card plugs in.
    :param vhost_net: the host has a usable ``/dev/vhost-net``.
    :raise InvalidInput: the model needs PCI and ``bus`` is not PCI (naming
        ``nics.<index>.model``).
    """
    nic = spec.nics[index]
    driver = NIC_DRIVER.get((bus, nic.model))
    if driver is None:
        raise InvalidInput(
            f"nics.{index}.model", f"{nic.model!r} needs PCI; machine {spec.machine!r} has none"
        )
    netdev: dict[str, object] = {"id": netdev_id(nic.name)}
    if nic.kind == "network":
        netdev.update(type="tap", ifname=nic_tap(spec.uuid, nic.name))
        netdev.update(script="no", downscript="no")
        if vhost_net and driver in VHOST_DRIVERS:
            netdev["vhost"] = True
    else:
        netdev["type"] = "user"
        if nic.forwards:
            netdev["hostfwd"] = [
                {"str": f"{f.protocol}:{f.host_addr}:{f.host_port}-:{f.guest_port}"}
                for f in nic.forwards
            ]
        if nic.restrict:
            netdev["restrict"] = True
    device: dict[str, object] = {
        "driver": driver,
        "netdev": netdev_id(nic.name),
        "id": device_id(nic.name),
        "mac": spec.nic_mac(index),
    }
    if nic.boot:
        # QEMU's default ROM for the model, with its legacy and EFI images: only a default
        # ROM gets its PCI ids patched to the device's, and Debian's efi-virtio.rom named
        # explicitly is never run by SeaBIOS (measured on QEMU 7.2).
        device["bootindex"] = 0
    elif bus == "pci":
        # No iPXE option ROM unless the VM boots from the network: loading it is boot time.
        device["romfile"] = ""
    return NicPlug(netdev, device)


def set_link(spec: VmSpec, index: int) -> dict[str, object] | None:
    """The ``set_link`` arguments that bring NIC ``index``'s carrier to its spec's state once
    QEMU runs (a command line cannot start a card with its link down); ``None`` when the
    link is up, as every card starts.

    :param spec: the VM the NIC belongs to.
    :param index: the NIC's position in ``spec.nics``.
    """
    nic = spec.nics[index]
    if nic.link:
        return None
    return {"name": device_id(nic.name), "up": False}
