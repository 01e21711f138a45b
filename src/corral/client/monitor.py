"""Monitor endpoints: ``/vms/{name}/monitor``, ``/vms/{name}/reset``, ``/vms/{name}/cdrom``."""

from __future__ import annotations

from typing import Any

from corral.api.schemas import VmRead
from corral.api.schemas.monitor import CdromRead, MonitorRead
from corral.client.transport import Transport, segment


class MonitorApi(Transport):
    def monitor_qmp(self, name: str, message: dict[str, Any]) -> MonitorRead:
        """Send a QMP message (``{"execute": ..., "arguments": ...}``); QEMU's answer."""
        return self._post(f"/vms/{segment(name)}/monitor", MonitorRead, {"qmp": message})

    def monitor_hmp(self, name: str, command_line: str) -> MonitorRead:
        """Run an HMP command line; its output is the answer's ``return_``."""
        return self._post(f"/vms/{segment(name)}/monitor", MonitorRead, {"hmp": command_line})

    def reset_vm(self, name: str) -> VmRead:
        """Reset a running VM at once (the reset button)."""
        return self._post(f"/vms/{segment(name)}/reset", VmRead)

    def insert_cdrom(self, name: str, path: str, boot: bool = False) -> CdromRead:
        """Insert the daemon host's ISO ``path`` into the VM's CD-ROM drive."""
        body = {"path": path, "boot": boot}
        return self._post(f"/vms/{segment(name)}/cdrom", CdromRead, body)

    def eject_cdrom(self, name: str) -> CdromRead:
        """Eject the VM's CD-ROM medium."""
        answer = self._delete(f"/vms/{segment(name)}/cdrom", CdromRead)
        assert answer is not None  # the endpoint always answers with the drive
        return answer
