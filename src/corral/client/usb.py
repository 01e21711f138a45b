"""USB endpoints: ``/vms/{name}/usb``."""

from __future__ import annotations

from pydantic import TypeAdapter

from corral.api.schemas.usb import UsbRead
from corral.client.transport import Transport, segment

_LIST = TypeAdapter(list[UsbRead])


class UsbApi(Transport):
    def list_usb(self, name: str) -> list[UsbRead]:
        """The VM's USB devices."""
        return _LIST.validate_python(self._send("GET", f"/vms/{segment(name)}/usb").json())

    def add_usb(self, name: str, device: str, volume: str | None = None) -> UsbRead:
        """Add a USB device (``usb-storage`` with a volume of the VM's project)."""
        body = {"device": device, "volume": volume}
        return self._post(f"/vms/{segment(name)}/usb", UsbRead, body)

    def remove_usb(self, name: str, usb_id: str, timeout: float = 10.0) -> UsbRead:
        """Remove the USB device ``usb_id``."""
        path = f"/vms/{segment(name)}/usb/{segment(usb_id)}"
        answer = self._delete(path, UsbRead, timeout=timeout)
        assert answer is not None  # the endpoint always answers with the device
        return answer
