"""The host, tasks and the event stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from corral.api.schemas import HostSummary, Page, TaskRead
from corral.client.transport import Transport, segment


class TasksApi(Transport):
    def host(self) -> HostSummary:
        return self._get("/host", HostSummary)

    def list_tasks(
        self,
        status: str | None = None,
        name: str | None = None,
        target_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[TaskRead]:
        return self._get(
            "/tasks",
            Page[TaskRead],
            status=status,
            name=name,
            target_name=target_name,
            limit=limit,
            offset=offset,
        )

    def get_task(self, task_id: str) -> TaskRead:
        return self._get(f"/tasks/{segment(task_id)}", TaskRead)

    def cancel_task(self, task_id: str) -> TaskRead:
        return self._post(f"/tasks/{segment(task_id)}/cancel", TaskRead)

    def events(self, last_id: int | None = None) -> Iterator[dict[str, Any]]:
        """Follow the event stream: each event's envelope (``id``, ``at``, ``kind``,
        ``project_id``, ``data``), or ``{"kind": "lost", ...}`` when events were dropped.

        Ends when the daemon closes the stream.
        """
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        with self._stream("GET", "/events", headers=headers) as answer:
            kind, data = "", ""
            for line in answer.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    event: dict[str, Any] = json.loads(data)
                    event.setdefault("kind", kind)
                    yield event
                    kind, data = "", ""
