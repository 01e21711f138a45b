"""USB endpoints: ``/vms/{name}/usb``, ``/host/usb``."""

from __future__ import annotations

from pydantic import TypeAdapter

from corral.api.schemas.usb import HostUsbRead, UsbRead
from corral.client.transport import Transport, segment

_LIST = TypeAdapter(list[UsbRead])
_HOST_LIST = TypeAdapter(list[HostUsbRead])


class UsbApi(Transport):
    def list_usb(self, name: str) -> list[UsbRead]:
        """The VM's USB devices."""
        return _LIST.validate_python(self._send("GET", f"/vms/{segment(name)}/usb").json())

    def add_usb(
        self, name: str, device: str, volume: str | None = None, host: str | None = None
    ) -> UsbRead:
        """Add a USB device (``usb-storage`` with a volume of the VM's project, ``usb-host``
        with the host device as ``vendor:product``)."""
        body = {"device": device, "volume": volume, "host": host}
        return self._post(f"/vms/{segment(name)}/usb", UsbRead, body)

    def remove_usb(self, name: str, usb_id: str, timeout: float = 10.0) -> UsbRead:
        """Remove the USB device ``usb_id``."""
        path = f"/vms/{segment(name)}/usb/{segment(usb_id)}"
        answer = self._delete(path, UsbRead, timeout=timeout)
        assert answer is not None  # the endpoint always answers with the device
        return answer

    def list_host_usb(self) -> list[HostUsbRead]:
        """The host's USB devices, marked whether passthrough allows them (admins only)."""
        return _HOST_LIST.validate_python(self._send("GET", "/host/usb").json())
