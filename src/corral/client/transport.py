"""The connection to corrald: HTTP over its UNIX socket or TCP, and error answers as errors.

:class:`Transport` is the base of :class:`~corral.client.api.Client`; each area of the API
(:mod:`~corral.client.vms`, :mod:`~corral.client.catalogue`, ...) is a mixin on top of it with
one method per endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from corral.api.schemas.base import ErrorRead
from corral.errors import CorralError, HostError, InvalidInput

M = TypeVar("M", bound=BaseModel)

PREFIX = "/api/v1"
#: Bytes per piece of an upload.
UPLOAD_CHUNK = 1024 * 1024
#: Seconds to wait for the answer to an upload once it is sent: the daemon may check the
#: file before it answers.
UPLOAD_TIMEOUT = 900.0


class ApiError(CorralError):
    """An error answer of the daemon.

    :param status: the HTTP status (the daemon's error class's own).
    :param kind: the daemon's error class (``NotFound``, ``InvalidInput``, ...).
    :param message: its one-line message.
    :param field: the field an ``InvalidInput`` names.
    :param lines: what else to show under the message (a failed task's console lines).
    """

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        field: str | None = None,
        lines: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.field = field
        self.lines = lines


class Transport:
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
        #: Where the daemon is, for messages.
        self.address = str(socket) if socket is not None else str(url)
        if socket is not None:
            transport = httpx.HTTPTransport(uds=str(socket))
            self._http = httpx.Client(
                transport=transport, base_url="http://corrald", headers=headers, timeout=timeout
            )
        else:
            self._http = httpx.Client(base_url=str(url), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, object] | None = None,
        body: object = None,
        content: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request; an error answer raises :class:`ApiError`, no answer :class:`HostError`."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        try:
            answer = self._http.request(
                method,
                PREFIX + path,
                params=query,  # type: ignore[arg-type]
                json=body if content is None else None,
                content=content,
                headers=headers,
                **extra,
            )
        except httpx.TransportError as exc:
            raise HostError(f"cannot reach corrald on {self.address}: {exc}") from exc
        if answer.status_code >= 400:
            raise error_of(answer)
        return answer

    def _get(self, path: str, model: type[M], **params: object) -> M:
        return model.model_validate(self._send("GET", path, params=params).json())

    def _post(self, path: str, model: type[M], body: object = None) -> M:
        return model.model_validate(self._send("POST", path, body=body).json())

    def _patch(self, path: str, model: type[M], body: object) -> M:
        return model.model_validate(self._send("PATCH", path, body=body).json())

    def _put(self, path: str, model: type[M], body: object) -> M:
        return model.model_validate(self._send("PUT", path, body=body).json())

    def _delete(self, path: str, model: type[M] | None = None, **params: object) -> M | None:
        """``DELETE``: the answer's body as ``model``, or ``None`` for a 204."""
        answer = self._send("DELETE", path, params=params)
        if model is None or answer.status_code == 204:
            return None
        return model.model_validate(answer.json())

    def _upload(
        self,
        path: str,
        file: Path,
        params: Mapping[str, object],
        sent: Callable[[int], None] | None = None,
    ) -> httpx.Response:
        """``PUT`` ``file`` as the request body, piece by piece (never whole in memory).

        :param sent: told the bytes sent so far, after each piece.
        :raise InvalidInput: ``file`` cannot be read (field ``file``).
        """
        try:
            size = file.stat().st_size
            file.open("rb").close()
        except OSError as exc:
            raise InvalidInput("file", f"{file}: {exc.strerror or exc}") from None
        return self._send(
            "PUT",
            path,
            params=params,
            content=_pieces(file, sent),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            timeout=UPLOAD_TIMEOUT,
        )

    @contextmanager
    def _stream(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A streamed answer (no timeout): server-sent events, downloads."""
        try:
            with self._http.stream(
                method, PREFIX + path, headers=headers, timeout=httpx.Timeout(None)
            ) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise error_of(answer)
                yield answer
        except httpx.TransportError as exc:
            raise HostError(f"cannot reach corrald on {self.address}: {exc}") from exc


_T = TypeVar("_T", bound=Transport)


def _pieces(path: Path, sent: Callable[[int], None] | None) -> Iterator[bytes]:
    with path.open("rb") as file:
        done = 0
        while chunk := file.read(UPLOAD_CHUNK):
            done += len(chunk)
            yield chunk
            if sent is not None:
                sent(done)


def segment(name: str) -> str:
    """A name as one path segment (never a way to another path)."""
    return quote(name, safe="")


def error_of(answer: httpx.Response) -> ApiError:
    """The error an error answer stands for: the daemon's class name, status and message."""
    try:
        body = ErrorRead.model_validate(answer.json())
    except ValueError:
        return ApiError(answer.status_code, "HTTPError", f"HTTP {answer.status_code}")
    return ApiError(answer.status_code, body.error, body.message, body.field)
