"""Schemathesis against the OpenAPI document: no input is a 500, every answer is documented.

The app runs in-process on a real state directory holding VMs, the reference image and a key
pair. Every GET operation of the document is exercised (new ones are covered as they are
added); operations of other methods change state or start QEMU and are left out here.

Bounded and reproducible for CI: a fixed seed, no example database, at most
:data:`MAX_EXAMPLES` generated requests per operation and a deadline per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import checks

from corral.api.app import PREFIX, create_app
from corral.api.auth import via
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.keys import create_key
from corral.compute.reference import ensure_reference
from corral.config import Home
from tests.store.conftest import PostgresServer, postgres_server  # noqa: F401 (a fixture)

OPENAPI = f"{PREFIX}/openapi.json"
#: Generated requests per operation (the coverage phase adds its boundary cases).
MAX_EXAMPLES = 25
SEED = 20240601

#: What every answer is checked for.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


def _config(max_examples: int, modes: str, *, security: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": modes,
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
                "with-security-parameters": security,
            },
        }
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def state(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corral]:
    """A state directory with three defined VMs, the reference image and a key pair, its
    database SQLite and then PostgreSQL (which refuses NUL characters in text)."""
    home = tmp_path_factory.mktemp("schemathesis")
    url = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    ctx = Corral(Home(home), database_url=url)
    ensure_reference(ctx)
    for name in ("web-1", "web-2", "db"):
        create(ctx, CreateRequest(name=name, image="reference", memory="128M"))
    create_key(ctx, "deploy", out=Path(home) / "deploy")
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def admin_schema(state: Corral) -> Any:
    """The document, served over the UNIX-socket marking: the local administrator."""
    return schemathesis.openapi.from_asgi(
        OPENAPI, via(create_app(state), "unix"), config=_config(MAX_EXAMPLES, "all", security=False)
    )


@pytest.fixture(scope="module")
def anonymous_schema(state: Corral) -> Any:
    """The document, served as over TCP: requests carry no token or a generated one."""
    return schemathesis.openapi.from_asgi(
        OPENAPI, create_app(state), config=_config(5, "positive", security=True)
    )


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read ``Item._nodeid``, which pytest 9.2 no longer
    has (it keeps a structured id behind ``nodeid``): give the test its id under that name."""
    setattr(request.node, "_nodeid", request.node.nodeid)  # noqa: B010


admin = schemathesis.pytest.from_fixture("admin_schema").include(method="GET")
anonymous = schemathesis.pytest.from_fixture("anonymous_schema").include(method="GET")

SETTINGS = hypothesis.settings(
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


@admin.parametrize()
@SETTINGS
def test_every_answer_is_documented(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS)


@anonymous.parametrize()
@SETTINGS
def test_without_a_token_every_read_is_401(case: schemathesis.Case[Any]) -> None:
    answer = case.call_and_validate(checks=CHECKS)
    assert answer.status_code == 401, (case.method, case.formatted_path, answer.text)


#: Values the generator seldom tries: a slash, NUL (which PostgreSQL refuses in text), very
#: long, dot segments, percent signs, non-ASCII.
ODD_VALUES = ["a/b", "a\x00b", "\x00", "x" * 5000, "..", "%00", " ", "é\u2028"]
RESPONSE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def test_odd_values_are_404_or_422(admin_schema: Any, subtests: pytest.Subtests) -> None:
    """Every string parameter of every GET, given each of :data:`ODD_VALUES`: a documented
    404 or 422, never a 500."""
    for result in admin_schema.include(method="GET").get_all_operations():
        operation = result.ok()
        for parameter in operation.iter_parameters():
            if parameter.location not in ("path", "query"):
                continue
            # The other path parameters name something plausible, so the odd one is judged.
            others = {p.name: "x" for p in operation.path_parameters if p.name != parameter.name}
            for value in ODD_VALUES:
                if parameter.location == "path":
                    case = operation.Case(path_parameters={**others, parameter.name: value})
                else:
                    case = operation.Case(query={parameter.name: value})
                if parameter.location == "query" and operation.path_parameters:
                    continue  # the generated runs cover the query of a lookup by name
                with subtests.test(operation=operation.label, **{parameter.name: value[:20]}):
                    answer = case.call_and_validate(checks=RESPONSE_CHECKS)
                    assert answer.status_code in {200, 404, 422}, answer.text


def test_error_answers_are_documented(admin_schema: Any) -> None:
    """Every operation documents its 401 (behind a token), 422 (with parameters) and 404 (a
    lookup by name), each as an ``ErrorRead``: the shape the app answers errors in."""
    error_read = "#/components/schemas/ErrorRead"
    for path, operations in admin_schema.raw_schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            wanted = {"401"} if operation.get("security") else set()
            if operation.get("parameters") or operation.get("requestBody"):
                wanted.add("422")
            if "{" in path:
                wanted.add("404")
            missing = wanted - set(responses)
            assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
            for status, response in responses.items():
                if status.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": error_read}, (method, path, status, schema)
