"""Schemathesis against the writing operations (POST, PUT, PATCH, DELETE): no input is a 500,
every answer is documented, and what the schema refuses is refused.

The app runs in-process, with its task pool, on a state directory of its own (SQLite, then
PostgreSQL) holding the reference image, a key pair and defined VMs; generated requests may
define, change and delete objects there. Names are generated, so they seldom hit an existing
VM: the few VMs a generated action starts are destroyed when the module ends.

Bounded and reproducible like :mod:`tests.api.test_schemathesis`: fixed seed, no example
database, :data:`MAX_EXAMPLES` per operation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient

from corral.api.app import PREFIX, create_app
from corral.api.auth import via
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.keys import create_key
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests.api.test_schemathesis import CHECKS, _config
from tests.store.conftest import PostgresServer, postgres_server  # noqa: F401 (a fixture)

OPENAPI = f"{PREFIX}/openapi.json"
MAX_EXAMPLES = 15
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def state(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corral]:
    home = tmp_path_factory.mktemp("writes")
    url = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    ctx = Corral(Home(home), database_url=url)
    # Generated networks stay in the database: the host's networking is left alone.
    (Path(home) / "corral.toml").write_text("[network]\nhost = false\n")
    ensure_reference(ctx)
    for name in ("web-1", "db"):
        create(ctx, CreateRequest(name=name, image="reference", memory="128M"))
    create_key(ctx, "deploy", out=Path(home) / "deploy")
    yield ctx
    _destroy_everything(ctx)
    ctx.close()


def _destroy_everything(ctx: Corral) -> None:
    """Stop whatever a generated request started."""
    from corral.compute import lifecycle
    from corral.compute.inventory import list_vms
    from corral.errors import CorralError

    for view in list_vms(ctx, include_inactive=True):
        if view.pid:
            with contextlib.suppress(CorralError):
                lifecycle.destroy(ctx, view.name)


@pytest.fixture(scope="module")
def app(state: Corral) -> Iterator[Any]:
    """The app with its lifespan running (task pool, event broker), as the local admin."""
    application = create_app(state)
    with TestClient(application):  # enters the lifespan; requests go through from_asgi
        yield via(application, "unix")


@pytest.fixture(scope="module")
def writes_schema(app: Any) -> Any:
    return schemathesis.openapi.from_asgi(
        OPENAPI, app, config=_config(MAX_EXAMPLES, "all", security=False)
    )


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    setattr(request.node, "_nodeid", request.node.nodeid)  # noqa: B010


writes = schemathesis.pytest.from_fixture("writes_schema").include(
    method_regex="^(POST|PUT|PATCH|DELETE)$"
)


@writes.parametrize()
@hypothesis.settings(
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_write_answer_is_documented(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS)
