"""Launch endpoints: ``/launch`` and what ``corral ssh`` needs to reach an instance."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from corral.api.schemas import TaskRead
from corral.api.schemas.launch import LaunchCreate, LaunchRead, SshAccessRead
from corral.client.transport import Transport, segment

if TYPE_CHECKING:
    from corral.compute.sshcmd import SshTarget

#: Seconds the daemon may hold one ``GET /launch/{task_id}`` waiting for a change.
FOLLOW_WAIT = 10.0


class LaunchApi(Transport):
    def launch(self, body: LaunchCreate) -> TaskRead:
        """Start a launch: its task (the daemon refuses what its check refuses, at once).

        ``body`` may be made with :meth:`LaunchCreate.model_construct`: the daemon validates
        it, and answers 422 naming the field.
        """
        return self._post("/launch", TaskRead, body.model_dump(exclude_unset=True))

    def get_launch(
        self, task_id: str, after: int | None = None, wait: float = FOLLOW_WAIT
    ) -> LaunchRead:
        """The launch of task ``task_id``, so far; with ``after``, once its version is past
        ``after`` (or after ``wait`` seconds)."""
        params: dict[str, object] = {}
        if after is not None:
            params = {"after": after, "wait": wait}
        answer = self._send(
            "GET", f"/launch/{segment(task_id)}", params=params, timeout=wait + 30.0
        )
        return LaunchRead.model_validate(answer.json())

    def follow_launch(self, task_id: str) -> Iterator[LaunchRead]:
        """Each new state of the launch of task ``task_id``, up to and including its last."""
        seen: int | None = None
        while True:
            now = self.get_launch(task_id, after=seen)
            if now.version != seen:
                yield now
            if now.status != "running":
                return
            seen = now.version

    def ssh_access(self, name: str) -> SshAccessRead:
        return self._get(f"/vms/{segment(name)}/ssh", SshAccessRead)

    def ssh_target(
        self, name: str, user: str | None = None, identity: str | None = None
    ) -> SshTarget:
        """How to log in to VM ``name`` from this machine (see :mod:`corral.client.ssh`).

        :param user: overrides the login user; :param identity: the private key file.
        """
        from corral.client.ssh import target

        return target(self.ssh_access(name), self.address, user, identity)
