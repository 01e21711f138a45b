"""Volume endpoints: ``/volumes``."""

from __future__ import annotations

from corral.api.schemas import Page
from corral.api.schemas.volumes import VolumeRead
from corral.client.transport import Transport, segment


class VolumesApi(Transport):
    def list_volumes(
        self,
        project: str | None = None,
        name: str | None = None,
        attached: bool | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[VolumeRead]:
        """Volumes and VMs' disks (kind ``vm-disk``), by name."""
        flag = None if attached is None else str(attached).lower()
        return self._get(
            "/volumes",
            Page[VolumeRead],
            project=project,
            name=name,
            attached=flag,
            kind=kind,
            limit=limit,
            offset=offset,
        )

    def get_volume(self, name: str, project: str | None = None) -> VolumeRead:
        return self._get(f"/volumes/{segment(name)}", VolumeRead, project=project)

    def create_volume(
        self,
        name: str,
        size: str | int,
        format: str = "qcow2",
        project: str = "default",
        description: str = "",
    ) -> VolumeRead:
        body = {
            "name": name,
            "size": size,
            "format": format,
            "project": project,
            "description": description,
        }
        return self._post("/volumes", VolumeRead, body)

    def update_volume(
        self,
        name: str,
        project: str | None = None,
        new_name: str | None = None,
        description: str | None = None,
    ) -> VolumeRead:
        """Rename a volume or change its description; ``None`` keeps each."""
        body: dict[str, str] = {}
        if new_name is not None:
            body["name"] = new_name
        if description is not None:
            body["description"] = description
        answer = self._send(
            "PATCH", f"/volumes/{segment(name)}", params={"project": project}, body=body
        )
        return VolumeRead.model_validate(answer.json())

    def delete_volume(self, name: str, project: str | None = None) -> None:
        self._delete(f"/volumes/{segment(name)}", project=project)

    def attach_volume(self, name: str, vm: str, project: str | None = None) -> VolumeRead:
        """Attach a volume to a VM (hot-plugged if it runs)."""
        return self._volume_action(name, "attach", {"vm": vm}, project)

    def detach_volume(
        self, name: str, project: str | None = None, timeout: float = 10.0
    ) -> VolumeRead:
        """Detach a volume; a running guest has ``timeout`` seconds to release it."""
        body: dict[str, object] = {"timeout": timeout}
        return self._volume_action(name, "detach", body, project, wait=timeout + 30)

    def resize_volume(self, name: str, size: str | int, project: str | None = None) -> VolumeRead:
        """Grow a volume to ``size``."""
        return self._volume_action(name, "resize", {"size": size}, project)

    def _volume_action(
        self,
        name: str,
        action: str,
        body: dict[str, object],
        project: str | None,
        wait: float | None = None,
    ) -> VolumeRead:
        path = f"/volumes/{segment(name)}/{action}"
        answer = self._send("POST", path, params={"project": project}, body=body, timeout=wait)
        return VolumeRead.model_validate(answer.json())
