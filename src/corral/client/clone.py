"""Clone endpoint: ``POST /vms/{name}/clone``."""

from __future__ import annotations

from corral.api.schemas import TaskRead
from corral.client.transport import Transport, segment


class CloneApi(Transport):
    def clone_vm(
        self,
        source: str,
        name: str,
        mode: str = "linked",
        snapshot: str | None = None,
        project: str | None = None,
        start: bool = False,
    ) -> TaskRead:
        """The task that makes VM ``name`` from ``source`` (now, or at ``snapshot``)."""
        body = {"name": name, "mode": mode, "snapshot": snapshot, "project": project}
        return self._post(f"/vms/{segment(source)}/clone", TaskRead, {**body, "start": start})
