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
