"""The OpenAPI document is the API's contract: a snapshot in git, compared on every run.

A change to the API shows up as a diff of ``tests/golden/openapi.json``; regenerate it with
``pytest --regen-golden tests/api`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from corral.api.app import create_app
from corral.compute.context import Corral
from corral.config import Home

SNAPSHOT = Path(__file__).parent.parent / "golden" / "openapi.json"


def test_openapi_matches_the_snapshot(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ctx = Corral(Home(tmp_path))
    with TestClient(create_app(ctx)) as client:
        served = client.get("/api/v1/openapi.json")
    ctx.close()
    assert served.status_code == 200
    text = json.dumps(served.json(), indent=2, sort_keys=True) + "\n"
    if request.config.getoption("--regen-golden"):
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), "no snapshot yet: run pytest --regen-golden tests/api"
    assert text == SNAPSHOT.read_text(), "the API changed: review, then pytest --regen-golden"


def test_every_operation_documents_its_errors() -> None:
    document = json.loads(SNAPSHOT.read_text())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary") or operation.get("description"), (method, path)
            if "{name}" in path:
                assert "404" in operation["responses"], f"{method} {path} documents no 404"
