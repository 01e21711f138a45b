"""The client: one method per endpoint, wire types in and out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from corral.api.schemas import (
    ErrorRead,
    HostSummary,
    ImageRead,
    InstanceTypeRead,
    KeyPairRead,
    Page,
    TaskRead,
    VmRead,
)
from corral.errors import CorralError, HostError

M = TypeVar("M", bound=BaseModel)

PREFIX = "/api/v1"


class ApiError(CorralError):
    """An error answer of the daemon.

    :param status: the HTTP status (the daemon's error class's own).
    :param kind: the daemon's error class (``NotFound``, ``InvalidInput``, ...).
    :param message: its one-line message.
    :param field: the field an ``InvalidInput`` names.
    """

    def __init__(self, status: int, kind: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.field = field


class Client:
    """A connection to corrald.

    :param socket: the daemon's UNIX socket (``$CORRAL_HOME/corrald.sock``), or
    :param url: its TCP address (``http://127.0.0.1:8140``), with
    :param token: an API token (required over TCP).
    :param timeout: seconds per request.
    """

    def __init__(
        self,
        socket: Path | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if (socket is None) == (url is None):
            raise ValueError("give exactly one of socket and url")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if socket is not None:
            transport = httpx.HTTPTransport(uds=str(socket))
            self._http = httpx.Client(
                transport=transport, base_url="http://corrald", headers=headers, timeout=timeout
            )
        else:
            self._http = httpx.Client(base_url=str(url), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------

    def _get(self, path: str, model: type[M], **params: object) -> M:
        query = {k: v for k, v in params.items() if v is not None}
        try:
            answer = self._http.get(PREFIX + path, params=query)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise HostError(f"cannot reach corrald: {exc}") from exc
        if answer.status_code >= 400:
            raise _error(answer)
        return model.model_validate(answer.json())

    def _post(self, path: str, model: type[M], body: object = None) -> M:
        try:
            answer = self._http.post(PREFIX + path, json=body)
        except httpx.TransportError as exc:
            raise HostError(f"cannot reach corrald: {exc}") from exc
        if answer.status_code >= 400:
            raise _error(answer)
        return model.model_validate(answer.json())

    # -- resources -----------------------------------------------------------------------------

    def host(self) -> HostSummary:
        return self._get("/host", HostSummary)

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
        return self._get(f"/vms/{_segment(name)}", VmRead)

    def list_images(self, limit: int = 100, offset: int = 0) -> Page[ImageRead]:
        return self._get("/images", Page[ImageRead], limit=limit, offset=offset)

    def get_image(self, name: str) -> ImageRead:
        return self._get(f"/images/{_segment(name)}", ImageRead)

    def list_types(self, limit: int = 100, offset: int = 0) -> Page[InstanceTypeRead]:
        return self._get("/instance-types", Page[InstanceTypeRead], limit=limit, offset=offset)

    def get_type(self, name: str) -> InstanceTypeRead:
        return self._get(f"/instance-types/{_segment(name)}", InstanceTypeRead)

    def list_keypairs(self, limit: int = 100, offset: int = 0) -> Page[KeyPairRead]:
        return self._get("/keypairs", Page[KeyPairRead], limit=limit, offset=offset)

    def get_keypair(self, name: str) -> KeyPairRead:
        return self._get(f"/keypairs/{_segment(name)}", KeyPairRead)

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
        return self._get(f"/tasks/{_segment(task_id)}", TaskRead)

    def cancel_task(self, task_id: str) -> TaskRead:
        return self._post(f"/tasks/{_segment(task_id)}/cancel", TaskRead)

    def vm_action(self, name: str, action: str, wait: bool = False) -> TaskRead:
        """``start``, ``stop``, ``destroy``, ``pause``, ``resume`` or ``reboot``: the task."""
        body = {"wait": wait} if wait else None
        return self._post(f"/vms/{_segment(name)}/{_segment(action)}", TaskRead, body)

    def events(self, last_id: int | None = None) -> Iterator[dict[str, Any]]:
        """Follow the event stream: each event's envelope (``id``, ``at``, ``kind``,
        ``project_id``, ``data``), or ``{"kind": "lost", ...}`` when events were dropped.

        Ends when the daemon closes the stream.
        """
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        try:
            with self._http.stream(
                "GET", PREFIX + "/events", headers=headers, timeout=httpx.Timeout(None)
            ) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise _error(answer)
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
        except httpx.TransportError as exc:
            raise HostError(f"cannot reach corrald: {exc}") from exc


def _segment(name: str) -> str:
    """A name as one path segment (never a way to another path)."""
    from urllib.parse import quote

    return quote(name, safe="")


def _error(answer: httpx.Response) -> ApiError:
    """The error an error answer stands for: the daemon's class name, status and message."""
    try:
        body = ErrorRead.model_validate(answer.json())
    except ValueError:
        return ApiError(answer.status_code, "HTTPError", f"HTTP {answer.status_code}")
    return ApiError(answer.status_code, body.error, body.message, body.field)
