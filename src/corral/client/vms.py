"""VM endpoints: ``/vms`` and its actions."""

from __future__ import annotations

from corral.api.schemas import Page, TaskRead, VmRead
from corral.client.transport import Transport, segment


class VmsApi(Transport):
    def list_vms(
        self,
        state: str | None = None,
        image: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[VmRead]:
        return self._get(
            "/vms", Page[VmRead], state=state, image=image, name=name, limit=limit, offset=offset
        )

    def get_vm(self, name: str) -> VmRead:
        return self._get(f"/vms/{segment(name)}", VmRead)

    def vm_action(self, name: str, action: str, wait: bool = False) -> TaskRead:
        """``start``, ``stop``, ``destroy``, ``pause``, ``resume`` or ``reboot``: the task."""
        body = {"wait": wait} if wait else None
        return self._post(f"/vms/{segment(name)}/{segment(action)}", TaskRead, body)
