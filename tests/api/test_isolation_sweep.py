"""The tenant isolation sweep: every endpoint of the OpenAPI document, with another project's ids.

alice (operator of p1) and bob (viewer of p2) each hold a token. For every operation whose path
names an object, the request is made twice by alice, once with the name of bob's project's
object and once with a name that exists nowhere, with the same generated query and body: both
answers must be the same refusal (a 404, or a 422 that does not depend on the object), so that
nothing tells alice that the other object exists, let alone what it holds. (A 403 passes
only as the answer for the ghost too: an operation the role may do to nothing.) Every listing alice
can read must leave bob's objects out. Afterwards every one of bob's objects is as it was.

The victims are named per path prefix in :data:`VICTIMS`; a path prefix that is neither there
nor in :data:`SHARED` fails :func:`test_every_object_path_has_a_victim`, so that an endpoint
added later is swept too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient

from corral.access.local import local_principal
from corral.access.projects import create_project, get_project
from corral.access.tokens import create_token
from corral.access.users import create_user
from corral.api.app import PREFIX, create_app
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.reference import ensure_reference
from corral.config import Home
from corral.store.models import TaskRow, utcnow

#: Path prefixes whose objects belong to no project (every authenticated user may read them),
#: or that name no object.
SHARED = {"instance-types"}

#: Requests per operation, each made for the victim and for the ghost.
EXAMPLES = 4


@dataclass
class World:
    ctx: Corral
    tokens: dict[str, str]
    #: Path prefix -> path parameter -> the value naming bob's project's object.
    victims: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Strings of bob's objects that no answer to alice may contain.
    secrets: list[str] = field(default_factory=list)


def _make_world(root: Any) -> World:
    ctx = Corral(Home(root))
    ensure_reference(ctx)
    admin = local_principal(ctx, os.geteuid())
    tokens: dict[str, str] = {}
    token_ids: dict[str, str] = {}
    for project, user, role in (("p1", "alice", "operator"), ("p2", "bob", "viewer")):
        create_project(ctx, admin, project)
        create_user(ctx, admin, user, role, [project])
        token = create_token(ctx, admin, user)
        tokens[user], token_ids[user] = token.secret, token.view.id
    world = World(ctx, tokens)
    p2 = get_project(ctx, admin, "p2").id

    request = CreateRequest(name="bobs-vm", image="reference", memory="128M", project="p2")
    spec = create(ctx, request)
    with ctx.db.session() as session:
        task_id = str(uuid.uuid4())
        session.add(
            TaskRow(
                id=task_id,
                name="vm.start",
                target_kind="vm",
                target_name="bobs-vm",
                project_id=p2,
                status="success",
                progress=100,
                detail="running",
                initiated_by="bob",
                requested_at=utcnow(),
                daemon_id="sweep",
            )
        )
    world.victims = {
        "vms": {"name": "bobs-vm"},
        "tasks": {"task_id": task_id},
        "launch": {"task_id": task_id},  # a task of bob's project (no launch: 404 either way)
        "images": {"name": "bobs-image"},
        "projects": {"name": "p2", "user": "bob"},
        "users": {"name": "bob"},
        "tokens": {"token_id": token_ids["bob"]},
    }
    world.secrets = ["bobs-vm", str(spec.uuid), task_id]
    _add_optional_victims(ctx, world, admin)
    return world


def _add_optional_victims(ctx: Corral, world: World, admin: Any) -> None:
    """bob's key pair, and the objects of areas that may not exist in every build."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from corral.compute.keys import import_key

    public = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    view = import_key(ctx, "bobs-key", f"{public} bob@p2", project="p2")
    world.victims["keypairs"] = {"name": "bobs-key"}
    world.secrets += ["bobs-key", view.fingerprint]

    import subprocess

    from corral.compute.images import import_image

    disk = ctx.home.root / "bobs-image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = import_image(ctx, "bobs-image", disk, fmt="qcow2", project="p2")
    world.secrets += ["bobs-image", image.sha256]

    from corral.compute.volumes import create_volume

    volume = create_volume(ctx, admin, "bobs-volume", "16M", project="p2")
    world.victims["volumes"] = {"name": "bobs-volume"}
    world.secrets += ["bobs-volume", volume.created_at]

    from corral.compute.snapshots import create_snapshot

    create_snapshot(ctx, "bobs-vm", "bobs-snap")
    world.victims["vms"]["snap"] = "bobs-snap"
    world.secrets += ["bobs-snap"]

    from corral.compute.usb import add_usb

    usb = add_usb(ctx, admin, "bobs-vm", "usb-tablet")
    world.victims["vms"]["usb_id"] = usb.id
    world.secrets += [usb.id]

    from corral.store.models import NetworkRow

    # Networks stay in the database: no request of the sweep changes the host's networking.
    (ctx.home.root / "corral.toml").write_text("[network]\nhost = false\n")
    with ctx.db.session() as session:
        p2 = get_project(ctx, admin, "p2").id
        spec = '{"name": "bobsnet", "kind": "nat", "subnet": "10.99.0.0/24"}'
        session.add(
            NetworkRow(id=str(uuid.uuid4()), name="bobsnet", project_id=p2, kind="nat", spec=spec)
        )
    world.victims["networks"] = {"name": "bobsnet"}
    world.secrets += ["bobsnet", "10.99.0.0/24"]
    from corral.store.models import FloatingIpRow

    with ctx.db.session() as session:
        session.add(FloatingIpRow(id=str(uuid.uuid4()), address="203.0.113.77", project_id=p2))
    world.victims["floating-ips"] = {"address": "203.0.113.77"}
    world.secrets += ["203.0.113.77"]

    from corral.compute.nics import add_nic

    nic = add_nic(ctx, admin, "bobs-vm", "bobsnet")
    world.victims["vms"]["nic"] = nic.name
    world.secrets += [nic.mac]

    from corral.compute.security import attach, create_group, make_rule

    group = create_group(ctx, admin, "bobs-sg", [make_rule("in", "tcp", "22")], project="p2")
    attach(ctx, admin, "bobs-sg", "bobs-vm")
    world.victims["security-groups"] = {
        "name": "bobs-sg",
        "rule": group.rules[0].id,
        "vm": "bobs-vm",
    }
    world.secrets += ["bobs-sg", group.rules[0].id]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = _make_world(tmp_path_factory.mktemp("sweep"))
    yield w
    w.ctx.close()


@pytest.fixture(scope="module")
def schema(world: World) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": 20261126,
            "generation": {
                "mode": "positive",
                "max-examples": EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
        }
    )
    return schemathesis.openapi.from_asgi(
        f"{PREFIX}/openapi.json", create_app(world.ctx), config=config
    )


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _prefix(path: str) -> str:
    return path.removeprefix(PREFIX).strip("/").split("/")[0]


def _ghost(value: str) -> str:
    """A value of the same shape as ``value`` that names nothing."""
    try:
        uuid.UUID(value)
    except ValueError:
        return "ghost-" + uuid.uuid4().hex[:8]
    return str(uuid.uuid4())


def test_every_object_path_has_a_victim(world: World, schema: Any) -> None:
    missing = set()
    for operation in _operations(schema):
        params = [p.name for p in operation.iter_parameters() if p.location == "path"]
        prefix = _prefix(operation.path)
        if not params or prefix in SHARED:
            continue
        victims = world.victims.get(prefix, {})
        missing |= {f"{operation.label} {{{p}}}" for p in params if p not in victims}
    assert not missing, f"no victim for: {sorted(missing)}"


def _snapshot(world: World) -> dict[str, Any]:
    """What bob's objects look like to an administrator."""
    from corral.api.auth import via

    seen: dict[str, Any] = {}
    with TestClient(via(create_app(world.ctx), "unix")) as admin:  # type: ignore[arg-type]
        for prefix, params in world.victims.items():
            if prefix == "projects":
                continue
            name = next(iter(params.values()))
            answer = admin.get(f"{PREFIX}/{prefix}/{name}")
            body = answer.json()
            for volatile in ("host_cpu", "host_memory", "used", "cpu_usage"):
                body.pop(volatile, None)
            seen[prefix] = (answer.status_code, body)
    return seen


def test_other_projects_objects_answer_as_if_absent(world: World, schema: Any) -> None:
    before = _snapshot(world)
    headers = {"Authorization": f"Bearer {world.tokens['alice']}"}
    swept = 0
    with TestClient(create_app(world.ctx), headers=headers) as alice:
        for operation in _operations(schema):
            params = [p.name for p in operation.iter_parameters() if p.location == "path"]
            prefix = _prefix(operation.path)
            if not params or prefix in SHARED:
                continue
            victim = {p: world.victims[prefix][p] for p in params}
            ghost = {p: _ghost(v) for p, v in victim.items()}
            _sweep(alice, operation, victim, ghost, world.secrets)
            swept += 1
    assert swept >= 10
    assert _snapshot(world) == before


def _sweep(
    client: TestClient,
    operation: Any,
    victim: dict[str, str],
    ghost: dict[str, str],
    secrets: list[str],
) -> None:
    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def run(case: Any) -> None:
        answers = []
        for values in (victim, ghost):
            path = operation.path
            for name, value in values.items():
                path = path.replace(f"{{{name}}}", value)
            answers.append(
                client.request(
                    operation.method.upper(),
                    path,
                    params=case.query,
                    json=case.body if not _no_body(case) else None,
                )
            )
        seen, absent = answers
        label = f"{operation.label} with {victim}"
        assert seen.status_code == absent.status_code, (label, seen.text, absent.text)
        # 403 only when a ghost gets it too: the role may not do this to anything.
        assert seen.status_code in (403, 404, 405, 422), (label, seen.status_code, seen.text)
        assert seen.json()["error"] == absent.json()["error"], label
        for secret in secrets:
            if secret not in victim.values():
                assert secret not in seen.text, (label, secret)

    run()


def _no_body(case: Any) -> bool:
    from schemathesis.core import NOT_SET

    return case.body is NOT_SET


def test_listings_leave_other_projects_out(world: World, schema: Any) -> None:
    headers = {"Authorization": f"Bearer {world.tokens['alice']}"}
    listed = 0
    with TestClient(create_app(world.ctx), headers=headers) as alice:
        for operation in _operations(schema):
            if operation.method.upper() != "GET" or "{" in operation.path:
                continue
            answer = alice.get(operation.path)
            if answer.status_code != 200:
                assert answer.status_code in (403, 404), (operation.label, answer.text)
                continue
            listed += 1
            for secret in world.secrets:
                assert secret not in answer.text, (operation.label, secret)
    assert listed >= 5
