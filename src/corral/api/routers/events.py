"""``/events``: task updates and VM state changes, as a Server-Sent Events stream.

A client that asks for ``text/event-stream`` (as ``EventSource`` does) gets a stream that
lasts until it disconnects or the daemon stops: each message has the event's ``id``, its kind
as ``event`` (``task``, ``vm`` or ``vm.qmp``) and the event as JSON ``data``; a comment every
:data:`KEEPALIVE` seconds keeps proxies from closing a quiet stream; a ``lost`` message (no
id) says the client fell behind and missed events, which reconnecting with ``Last-Event-ID``
replays while the daemon still holds them (its last :data:`~corral.compute.events.HISTORY`).
Any other client gets at once, as JSON, the held events after ``Last-Event-ID``: a poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.access.principal import Principal, visible_projects
from corral.api.auth import PrincipalDep
from corral.api.schemas import ERRORS, ErrorRead
from corral.compute.events import Broker, Event, Lost, Subscription, sse
from corral.errors import HostError

router = APIRouter(prefix="/events", tags=["events"], responses=ERRORS)

#: Seconds between two keep-alive comments on a quiet stream.
KEEPALIVE = 15.0
STREAM = "text/event-stream"


class EventRead(BaseModel):
    """One change: a task's update or a VM's new state."""

    model_config = ConfigDict(frozen=True)

    id: int = Field(description="Greater than every earlier event's; resume after it.")
    at: str = Field(description="When it happened (ISO 8601, UTC).")
    kind: Literal["task", "vm", "vm.qmp"]
    project_id: str | None
    data: dict[str, Any] = Field(
        description="`task`: the task as `/tasks/{id}` shows it; `vm`: its `name`, `state` "
        "(`deleted` once it is gone), `previous` state and `reason`; `vm.qmp`: an event QEMU "
        "sent about VM `name` (`STOP`, `RESUME`, `RESET`, `SHUTDOWN`, `POWERDOWN`, ...) as "
        "`event`, with QEMU's `timestamp` and its `details`."
    )


class EventsRead(BaseModel):
    """The held events after ``Last-Event-ID``, oldest first."""

    model_config = ConfigDict(frozen=True)

    items: list[EventRead]
    #: The id to send as ``Last-Event-ID`` next time.
    last_id: int | None
    #: Whether events after ``Last-Event-ID`` are no longer held (some were missed).
    lost: bool


LastEventId = Annotated[
    int | None,
    Header(
        alias="Last-Event-ID",
        ge=0,
        description="The last event id received: start after it.",
    ),
]


def get_broker(request: Request) -> Broker:
    """The daemon's event broker (started by the app's lifespan).

    :raise HostError: the app runs without its lifespan, or is stopping.
    """
    broker: Broker | None = getattr(request.app.state, "events", None)
    if broker is None or broker.closed:
        raise HostError("corrald's event broker is not running")
    return broker


def _accept(principal: Principal) -> Any:
    projects = visible_projects(principal)

    def accept(event: Event) -> bool:
        return projects is None or (event.project_id is not None and event.project_id in projects)

    return accept


@router.get(
    "",
    response_model=EventsRead,
    responses={
        200: {
            "description": "With `Accept: text/event-stream`, a stream of events (`id`, "
            "`event`: the kind or `lost`, `data`: the event as JSON) until the client or the "
            "daemon ends it; otherwise, at once, the held events after `Last-Event-ID`.",
            "content": {STREAM: {"schema": {"type": "string"}}},
        },
        503: {"model": ErrorRead, "description": "The daemon's event broker is not running."},
    },
)
async def events(
    request: Request, principal: PrincipalDep, last_event_id: LastEventId = None
) -> Response:
    """Task updates and VM state changes of the caller's projects (an admin's: all)."""
    broker = get_broker(request)
    accept = _accept(principal)
    if STREAM not in request.headers.get("accept", ""):
        held = broker.since(accept, last_event_id)
        items = [e for e in held if isinstance(e, Event)]
        page = EventsRead(
            items=[EventRead.model_validate(e.as_dict()) for e in items],
            last_id=items[-1].id if items else last_event_id,
            lost=any(isinstance(e, Lost) for e in held),
        )
        return JSONResponse(page.model_dump())
    subscription, replay = broker.subscribe(accept, last_event_id)
    return StreamingResponse(
        _stream(request, broker, subscription, replay),
        media_type=STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    request: Request,
    broker: Broker,
    subscription: Subscription,
    replay: list[Event | Lost],
) -> AsyncIterator[str]:
    try:
        yield ": corral events\n\n"  # the headers and a first byte go out at once
        for item in replay:
            yield sse(item)
        while True:
            try:
                got = await subscription.next(KEEPALIVE)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            if got is None:
                return  # the daemon stops
            yield sse(got)
    finally:
        broker.unsubscribe(subscription)
