"""NIC endpoints: ``/vms/{name}/nics``."""

from __future__ import annotations

from pydantic import TypeAdapter

from corral.api.schemas.nics import NicRead
from corral.client.transport import Transport, segment

_LIST = TypeAdapter(list[NicRead])


class NicsApi(Transport):
    def list_nics(self, name: str) -> list[NicRead]:
        """The VM's NICs, in the order the guest sees them."""
        return _LIST.validate_python(self._send("GET", f"/vms/{segment(name)}/nics").json())

    def add_nic(
        self, name: str, network: str, ip: str | None = None, model: str = "virtio-net-pci"
    ) -> NicRead:
        """Add a NIC on ``network`` (at once if the VM runs)."""
        body = {"network": network, "ip": ip, "model": model}
        return self._post(f"/vms/{segment(name)}/nics", NicRead, body)

    def remove_nic(self, name: str, nic: str, timeout: float = 10.0) -> NicRead:
        """Remove NIC ``nic``; the guest has ``timeout`` seconds to release it."""
        path = f"/vms/{segment(name)}/nics/{segment(nic)}"
        answer = self._delete(path, NicRead, timeout=timeout)
        assert answer is not None  # the endpoint always answers with the NIC
        return answer

    def set_nic_link(self, name: str, nic: str, up: bool) -> NicRead:
        """Set NIC ``nic``'s link up or down."""
        path = f"/vms/{segment(name)}/nics/{segment(nic)}"
        return self._patch(path, NicRead, {"link": up})
