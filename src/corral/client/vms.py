"""VM endpoints: ``/vms``, changing a VM, and its actions (each a task), with a way to wait
for a task to end."""

from __future__ import annotations

import time
from collections.abc import Iterator

from corral.api.schemas import Page, TaskRead, VmCreate, VmRead
from corral.api.schemas.vms import VmRebootCreate, VmStartCreate, VmStopCreate, VmUpdate
from corral.client.transport import Transport, segment

#: Task statuses that are final.
FINAL = frozenset({"success", "error", "cancelled"})
#: Most VMs one page of :meth:`VmsApi.iter_vms` asks for.
PAGE = 1000


class VmsApi(Transport):
    def list_vms(
        self,
        state: str | None = None,
        image: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
        project: str | None = None,
        active: bool | None = None,
    ) -> Page[VmRead]:
        return self._get(
            "/vms",
            Page[VmRead],
            state=state,
            image=image,
            name=name,
            project=project,
            active=None if active is None else str(active).lower(),
            limit=limit,
            offset=offset,
        )

    def iter_vms(
        self,
        state: str | None = None,
        image: str | None = None,
        name: str | None = None,
        project: str | None = None,
        active: bool | None = None,
    ) -> Iterator[VmRead]:
        """Every VM that matches, page after page, by name."""
        offset = 0
        while True:
            page = self.list_vms(state, image, name, PAGE, offset, project, active)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def get_vm(self, name: str) -> VmRead:
        return self._get(f"/vms/{segment(name)}", VmRead)

    def create_vm(self, vm: VmCreate) -> VmRead:
        return self._post("/vms", VmRead, vm.model_dump(exclude_defaults=True))

    def update_vm(self, name: str, change: VmUpdate) -> VmRead:
        return self._patch(f"/vms/{segment(name)}", VmRead, change.model_dump(exclude_none=True))

    def vm_action(self, name: str, action: str, wait: bool = False) -> TaskRead:
        """``start``, ``stop``, ``destroy``, ``pause``, ``resume`` or ``reboot`` with its
        default options (``wait``: for start and reboot): the task."""
        body = {"wait": wait} if wait else None
        return self._post(f"/vms/{segment(name)}/{segment(action)}", TaskRead, body)

    def start_vm(self, name: str, options: VmStartCreate | None = None) -> TaskRead:
        body = options.model_dump(exclude_defaults=True) if options else None
        return self._post(f"/vms/{segment(name)}/start", TaskRead, body or None)

    def stop_vm(self, name: str, options: VmStopCreate | None = None) -> TaskRead:
        body = options.model_dump(exclude_defaults=True) if options else None
        return self._post(f"/vms/{segment(name)}/stop", TaskRead, body or None)

    def reboot_vm(self, name: str, options: VmRebootCreate | None = None) -> TaskRead:
        body = options.model_dump(exclude_defaults=True) if options else None
        return self._post(f"/vms/{segment(name)}/reboot", TaskRead, body or None)

    def delete_vm(self, name: str, keep_disks: bool = False) -> TaskRead:
        """The delete's task; with ``keep_disks`` its detail names each disk kept."""
        answer = self._delete(
            f"/vms/{segment(name)}", TaskRead, keep_disks="true" if keep_disks else None
        )
        assert answer is not None  # a 202 with the task
        return answer

    def wait_task(self, task_id: str, interval: float = 0.25) -> TaskRead:
        """Poll the task until its status is final (success, error or cancelled).

        :param interval: most seconds between two polls (the first ones come sooner).
        """
        delay = 0.02
        while True:
            task = self._get(f"/tasks/{segment(task_id)}", TaskRead)
            if task.status in FINAL:
                return task
            time.sleep(delay)
            delay = min(delay * 2, interval)
