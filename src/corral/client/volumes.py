"""Volume endpoints: ``/volumes``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from corral.api.schemas import Page, TaskRead
from corral.api.schemas.volumes import VolumeRead
from corral.client.transport import UPLOAD_CHUNK, Transport, segment


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

    # -- files in and out ----------------------------------------------------------------------

    def import_volume(
        self,
        name: str,
        path: Path,
        format: str | None = None,
        project: str = "default",
        description: str = "",
    ) -> TaskRead:
        """Import a file on the daemon's host (admins only): the task that converts it."""
        body: dict[str, object] = {
            "name": name,
            "path": str(path),
            "project": project,
            "description": description,
        }
        if format is not None:
            body["format"] = format
        return self._post("/volumes/import", TaskRead, body)

    def upload_volume(
        self,
        name: str,
        file: Path,
        format: str | None = None,
        project: str = "default",
        description: str = "",
        sent: Callable[[int], None] | None = None,
    ) -> TaskRead:
        """Send ``file`` (a disk image or an OVA) as volume ``name``: the task that converts it.

        :param sent: told the bytes sent so far, after each piece.
        :raise InvalidInput: ``file`` cannot be read (field ``file``).
        """
        params = {"format": format, "project": project, "description": description}
        answer = self._upload(f"/volumes/{segment(name)}/file", file, params, sent)
        return TaskRead.model_validate(answer.json())

    def export_volume(
        self,
        name: str,
        dest: Path,
        format: str,
        project: str | None = None,
        received: Callable[[int, int], None] | None = None,
    ) -> int:
        """Write volume ``name``, converted to ``format``, to ``dest``: it appears there only
        when complete (written beside it, then renamed).

        :param received: told the bytes received so far and the total, after each piece.
        :return: the bytes written.
        """
        query = {"format": format} if project is None else {"format": format, "project": project}
        path = f"/volumes/{segment(name)}/file?{urlencode(query)}"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, self._stream("GET", path) as answer:
                total = int(answer.headers.get("content-length", 0))
                for chunk in answer.iter_bytes(UPLOAD_CHUNK):
                    out.write(chunk)
                    if received is not None:
                        received(out.tell(), total)
                written = out.tell()
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o600)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return written
