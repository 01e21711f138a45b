"""The application: ``/api/v1``, its OpenAPI document, and errors as HTTP answers.

Every :class:`~corral.errors.CorralError` is answered here, with the status its class names
and an :class:`~corral.api.schemas.ErrorRead` body; a request the schemas refuse is a 422
naming the field. Nothing else is caught: an unexpected exception is a bug and a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral import __version__
from corral.api.routers import (
    audit,
    clone,
    consoles,
    floating_ips,
    host,
    images,
    keypairs,
    launch,
    login,
    monitor,
    networks,
    nics,
    projects,
    security_groups,
    snapshots,
    ssh,
    tasks,
    tokens,
    types,
    usb,
    users,
    vms,
    volumes,
)
from corral.api.routers import events as events_router
from corral.api.schemas import ErrorRead
from corral.compute.consoles import TicketBook
from corral.compute.context import Corral
from corral.errors import CorralError, InvalidInput

PREFIX = "/api/v1"
#: Whether requests over TCP must carry a valid token (``corral serve --bind`` needs it).
TCP_AUTH = True


def create_app(ctx: Corral) -> FastAPI:
    """The API for the state directory ``ctx`` (which the app uses, and does not close).

    Its lifespan runs the task pool: on start-up it ends the tasks a previous daemon left
    unfinished (:func:`~corral.compute.tasks.recover`), at shutdown it lets running tasks
    finish.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        from corral.compute.events import Broker, Watcher
        from corral.compute.net_supervision import Supervisor
        from corral.compute.tasks import TaskPool, recover

        broker = Broker()
        broker.attach_tasks(ctx)
        pool = TaskPool(ctx)
        await run_in_threadpool(recover, ctx, pool.daemon_id)
        watcher = Watcher(ctx, broker)
        await run_in_threadpool(watcher.start)
        networking = Supervisor(ctx)
        await run_in_threadpool(networking.start)
        app.state.tasks = pool
        app.state.events = broker
        try:
            yield
        finally:
            app.state.tasks = None
            await run_in_threadpool(pool.shutdown)
            await run_in_threadpool(watcher.stop)
            await run_in_threadpool(networking.stop)
            app.state.events = None
            broker.close()

    app = FastAPI(
        lifespan=lifespan,
        title="corral",
        version=__version__,
        description="corrald: virtual machines, images, key pairs and instance types of one "
        "QEMU/KVM host.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
    )
    app.state.corral = ctx
    app.state.vnc_tickets = TicketBook()
    areas = (
        host,
        vms,
        monitor,
        consoles,
        snapshots,
        clone,
        ssh,
        launch,
        images,
        types,
        keypairs,
        volumes,
        networks,
        nics,
        floating_ips,
        security_groups,
        usb,
        tasks,
    )
    access = (projects, users, tokens, audit, login)
    for module in (*areas, *access):
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(events_router.router, prefix=PREFIX)
    app.include_router(usb.host_router, prefix=PREFIX)
    app.add_exception_handler(CorralError, _corral_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    return app


def error_body(exc: CorralError) -> dict[str, object]:
    """The JSON body that answers ``exc``."""
    field = exc.field if isinstance(exc, InvalidInput) else None
    return ErrorRead(error=type(exc).__name__, message=exc.message, field=field).model_dump()


async def _corral_error(request: Request, exc: CorralError) -> JSONResponse:
    del request
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    del request
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    field = ".".join(loc) or "request"
    reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more)"
    return JSONResponse(error_body(InvalidInput(field, reason)), status_code=422)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (no such path, method not allowed) in the shape of every error."""
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (not UTF-8, not JSON): a refused field,
        # as every other refused input is.
        reason = "not a JSON document in UTF-8"
        return JSONResponse(error_body(InvalidInput("body", reason)), status_code=422)
    kinds = {404: "NotFound", 405: "MethodNotAllowed"}
    message = f"no such path: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    body = ErrorRead(error=kinds.get(exc.status_code, "HTTPError"), message=message)
    return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=exc.headers)
