"""Floating IP endpoints: ``/floating-ips``."""

from __future__ import annotations

from pydantic import TypeAdapter

from corral.api.schemas.floating import FloatingIpRead
from corral.client.transport import Transport, segment

_LIST = TypeAdapter(list[FloatingIpRead])


class FloatingApi(Transport):
    def list_floating_ips(self, project: str | None = None) -> list[FloatingIpRead]:
        """The floating IPs of the caller's projects, by address."""
        answer = self._send("GET", "/floating-ips", params={"project": project})
        return _LIST.validate_python(answer.json())

    def allocate_floating_ip(self, project: str = "default") -> FloatingIpRead:
        return self._post("/floating-ips", FloatingIpRead, {"project": project})

    def associate_floating_ip(
        self, address: str, vm: str, nic: str | None = None
    ) -> FloatingIpRead:
        body = {"vm": vm} if nic is None else {"vm": vm, "nic": nic}
        return self._post(f"/floating-ips/{segment(address)}/associate", FloatingIpRead, body)

    def disassociate_floating_ip(self, address: str) -> FloatingIpRead:
        return self._post(f"/floating-ips/{segment(address)}/disassociate", FloatingIpRead, {})

    def release_floating_ip(self, address: str) -> None:
        self._delete(f"/floating-ips/{segment(address)}")
