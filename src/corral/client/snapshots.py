"""Snapshot endpoints: ``/vms/{name}/snapshots``."""

from __future__ import annotations

from corral.api.schemas import Page, TaskRead
from corral.api.schemas.snapshots import SnapshotPreview, SnapshotRead
from corral.client.transport import Transport, segment


class SnapshotsApi(Transport):
    def list_snapshots(self, vm: str, limit: int = 1000, offset: int = 0) -> Page[SnapshotRead]:
        """A VM's snapshots, oldest first, with their parents (the tree)."""
        path = f"/vms/{segment(vm)}/snapshots"
        return self._get(path, Page[SnapshotRead], limit=limit, offset=offset)

    def get_snapshot(self, vm: str, snap: str) -> SnapshotRead:
        return self._get(f"/vms/{segment(vm)}/snapshots/{segment(snap)}", SnapshotRead)

    def create_snapshot(
        self, vm: str, name: str, description: str = "", memory: bool = False
    ) -> TaskRead:
        """The task that takes the snapshot (with ``memory``: RAM and device state too)."""
        body = {"name": name, "description": description, "memory": memory}
        return self._post(f"/vms/{segment(vm)}/snapshots", TaskRead, body)

    def revert_plan(self, vm: str, snap: str) -> SnapshotPreview:
        """What reverting to ``snap`` would lose and keep."""
        path = f"/vms/{segment(vm)}/snapshots/{segment(snap)}/revert-plan"
        return self._get(path, SnapshotPreview)

    def revert_snapshot(self, vm: str, snap: str) -> TaskRead:
        """The task that reverts the VM to ``snap`` (stopped, unless a memory snapshot)."""
        path = f"/vms/{segment(vm)}/snapshots/{segment(snap)}/revert"
        return self._post(path, TaskRead, None)

    def delete_plan(self, vm: str, snap: str) -> SnapshotPreview:
        """What deleting ``snap`` would merge into what."""
        path = f"/vms/{segment(vm)}/snapshots/{segment(snap)}/delete-plan"
        return self._get(path, SnapshotPreview)

    def delete_snapshot(self, vm: str, snap: str) -> TaskRead:
        """The task that deletes ``snap``, merging its layer."""
        answer = self._delete(f"/vms/{segment(vm)}/snapshots/{segment(snap)}", TaskRead)
        assert answer is not None
        return answer
