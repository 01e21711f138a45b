"""A file sent as a request body (``PUT /images/{name}/file``, ``PUT /volumes/{name}/file``).

corrald writes the body, piece by piece as it arrives, to a file of its own in the state
directory (never held in memory, at most :data:`~corral.storage.uploads.MAX_UPLOAD` bytes),
and hands it to the task that imports it; the file is removed once that task has run, or at
once when anything refuses the upload.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from corral.api.schemas import TaskRead
from corral.errors import HostError, InvalidInput

#: Bytes gathered from the request body before each write to the spooled file.
WRITE_BYTES = 1024 * 1024

#: What the checks made before the body is received hand to the submission.
Checked = TypeVar("Checked")


def content_length(request: Request) -> int | None:
    """The request's ``Content-Length``, if it says one.

    :raise InvalidInput: it is not a number.
    """
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit() or len(text) > 19:
        raise InvalidInput("content-length", f"{text[:40]!r} is not a length in bytes")
    return int(text)


async def receive(request: Request, dest: Path, limit: int) -> int:
    """Write the request's body to ``dest`` as it arrives; how many bytes it had.

    :raise InvalidInput: the body is empty, larger than ``limit``, or ended early.
    :raise HostError: the file system is full.
    """
    from corral.units import format_size

    received = 0
    pending = bytearray()
    with dest.open("wb") as file:

        async def flush() -> None:
            try:
                await anyio.to_thread.run_sync(file.write, bytes(pending))
            except OSError as exc:
                raise HostError(f"cannot write the upload: {exc.strerror or exc}") from exc
            pending.clear()

        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise InvalidInput(
                        "file", f"larger than corrald accepts ({format_size(limit)})"
                    )
                pending += chunk
                if len(pending) >= WRITE_BYTES:
                    await flush()
        except ClientDisconnect:
            raise InvalidInput("file", "the upload ended early: the client went away") from None
        await flush()
    if received == 0:
        raise InvalidInput("file", "the request body is empty: send the image file as the body")
    return received


async def spool_upload(
    request: Request,
    spool: Path,
    detail: dict[str, Any],
    check: Callable[[], Checked],
    submit: Callable[[Path, Checked, Callable[[], None]], TaskRead],
) -> TaskRead:
    """Receive the request's body into a new file of ``spool`` and queue its import.

    The announced length and ``check`` are answered before any byte is read; ``submit``
    gets the spooled file, what ``check`` returned and what removes the file, which its
    task calls once it has run. Anything that refuses the upload removes the file at once.

    :param detail: the audit log's facts; the body's length in bytes is added as ``bytes``.
    :param check: the checks that need no file (run on a worker thread).
    :param submit: checks the file and queues the task (run on a worker thread).
    :return: the queued task.
    """
    from corral.storage import uploads

    length = content_length(request)
    await run_in_threadpool(uploads.check_size, spool, length, uploads.MAX_UPLOAD)
    checked = await run_in_threadpool(check)
    spooled = await run_in_threadpool(uploads.new_upload, spool)
    try:
        detail["bytes"] = await receive(request, spooled, uploads.MAX_UPLOAD)
        return await run_in_threadpool(submit, spooled, checked, lambda: uploads.release(spooled))
    except BaseException:
        uploads.release(spooled)
        raise
