"""The access service layer on a temporary state directory (SQLite): users, passwords,
tokens, projects and membership, visibility, quotas (atomic), the audit log."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from corral.access import audit, projects, quotas, tokens, users
from corral.access.local import local_principal
from corral.access.principal import Action, Principal, Role
from corral.access.scope import find_owned, visible
from corral.compute.context import Corral
from corral.config import Home
from corral.errors import (
    AlreadyExists,
    CorralError,
    Forbidden,
    InUse,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    Unauthenticated,
)
from corral.spec.vm import DiskSpec, VmSpec
from corral.store.db import Database
from corral.store.models import (
    DEFAULT_PROJECT_ID,
    AuditRow,
    Base,
    ImageRow,
    KeyPairRow,
    TokenRow,
    UserRow,
    VmRow,
    utcnow,
)
from corral.units import GiB

PASSWORD = "correct horse battery staple"


try:  # the store tests' own throw-away PostgreSQL server, shared rather than started twice
    from tests.store.conftest import postgres_server  # noqa: F401  (a fixture)

    HAVE_PG_FIXTURE = True
except ImportError:  # pragma: no cover - the store tests moved
    HAVE_PG_FIXTURE = False


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the state directory's SQLite file, or a database on a real PostgreSQL."""
    if request.param == "sqlite":
        return None
    if not HAVE_PG_FIXTURE:
        pytest.skip("the PostgreSQL fixture of tests/store is not there")
    url: str = request.getfixturevalue("postgres_server").create_database()
    return url


def open_ctx(home: Home, database_url: str | None) -> Corral:
    """A :class:`Corral` on ``home`` whose database is ``database_url`` if given."""
    ctx = Corral(home)
    if database_url is not None:
        ctx.db.close()
        ctx.db = Database(database_url)
    return ctx


@pytest.fixture
def ctx(tmp_path: Path, database_url: str | None) -> Iterator[Corral]:
    c = open_ctx(Home(tmp_path / "state"), database_url)
    yield c
    c.close()


@pytest.fixture
def admin(ctx: Corral) -> Principal:
    return local_principal(ctx, os.getuid())


def project_id(ctx: Corral, admin: Principal, name: str) -> str:
    return projects.get_project(ctx, admin, name).id


def add_vm(
    ctx: Corral, name: str, project: str, vcpus: int = 1, memory: str = "512M", disk: int = GiB
) -> None:
    with ctx.db.session() as session:
        session.add(row_of(spec_of(name, vcpus, memory, disk), project))


def spec_of(name: str, vcpus: int = 1, memory: str = "512M", disk: int = GiB) -> VmSpec:
    return VmSpec(name=name, vcpus=vcpus, memory=memory, disks=(DiskSpec(name="root", size=disk),))


def row_of(spec: VmSpec, project: str) -> VmRow:
    return VmRow(
        id=str(spec.uuid),
        name=spec.name,
        spec=spec.model_dump_json(),
        state="defined",
        reason="defined",
        project_id=project,
    )


@pytest.fixture
def tenants(ctx: Corral, admin: Principal) -> dict[str, str]:
    """Projects p1 and p2; alice operates p1, bob operates p2, vic views p2."""
    for name in ("p1", "p2"):
        projects.create_project(ctx, admin, name)
    users.create_user(ctx, admin, "alice", "operator", ["p1"])
    users.create_user(ctx, admin, "bob", "operator", ["p2"])
    users.create_user(ctx, admin, "vic", "viewer", ["p2"])
    return {name: project_id(ctx, admin, name) for name in ("p1", "p2")}


def as_user(ctx: Corral, name: str) -> Principal:
    with ctx.db.session() as session:
        row = session.scalars(select(UserRow).where(UserRow.name == name)).one()
        return users.principal_of(session, row)


def database_text(ctx: Corral) -> bytes:
    """Every row of every table as text and, for SQLite, every byte of its files too."""
    with ctx.db.engine.connect() as conn:
        rows = [
            repr(row)
            for table in Base.metadata.sorted_tables
            for row in conn.execute(select(table))
        ]
    ctx.db.engine.dispose()
    files = [path.read_bytes() for path in ctx.home.root.glob("corral.db*") if path.is_file()]
    return "\n".join(rows).encode() + b"".join(files)


# --- the local administrator -----------------------------------------------------------


def test_the_state_directory_owner_is_admin_without_bootstrap(ctx: Corral) -> None:
    owner = ctx.home.root.stat().st_uid
    principal = local_principal(ctx, owner)
    assert principal.is_admin and principal.is_local
    assert principal.name == f"local:{owner}"
    assert local_principal(ctx, 0).is_admin
    with pytest.raises(Unauthenticated, match="neither root nor the owner"):
        local_principal(ctx, owner + 4242 if owner else 4242)


# --- projects ----------------------------------------------------------------------------


def test_the_default_project_exists_and_owns_new_objects(ctx: Corral, admin: Principal) -> None:
    assert [p.name for p in projects.list_projects(ctx, admin)] == ["default"]
    add_vm(ctx, "web", DEFAULT_PROJECT_ID)
    with ctx.db.session() as session:  # the column's default, for the compute layer
        session.add(KeyPairRow(id="k", name="me", kind="x", public_key="x", fingerprint="f"))
    view = projects.get_project(ctx, admin, "default")
    assert (view.id, view.vms, view.keypairs) == (DEFAULT_PROJECT_ID, 1, 1)


def test_project_names_are_checked_and_unique(ctx: Corral, admin: Principal) -> None:
    projects.create_project(ctx, admin, "p1", "first")
    with pytest.raises(AlreadyExists, match="project 'p1' already exists"):
        projects.create_project(ctx, admin, "p1")
    with pytest.raises(InvalidInput) as caught:
        projects.create_project(ctx, admin, "Bad_Name")
    assert caught.value.field == "name"
    with pytest.raises(InvalidInput) as caught:
        projects.create_project(ctx, admin, "p2", "two\nlines")
    assert caught.value.field == "description"


def test_a_project_that_owns_a_vm_is_not_deleted(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    add_vm(ctx, "web", tenants["p1"])
    with pytest.raises(InUse) as caught:
        projects.delete_project(ctx, admin, "p1")
    assert str(caught.value) == "project 'p1' is in use by vm web"
    with ctx.db.session() as session:
        session.execute(text("DELETE FROM vms"))
    quotas.set_quota(ctx, admin, "p1", {"instances": 3})  # goes with the project
    projects.delete_project(ctx, admin, "p1")
    assert [p.name for p in projects.list_projects(ctx, admin)] == ["default", "p2"]
    assert users.get_user(ctx, admin, "alice").projects == ()


def test_the_default_project_is_never_deleted(ctx: Corral, admin: Principal) -> None:
    with pytest.raises(InvalidInput) as caught:
        projects.delete_project(ctx, admin, "default")
    assert caught.value.field == "name"


def test_membership(ctx: Corral, admin: Principal, tenants: dict[str, str]) -> None:
    assert projects.add_member(ctx, admin, "p2", "alice") is True
    assert projects.add_member(ctx, admin, "p2", "alice") is False
    assert as_user(ctx, "alice").project_ids == {tenants["p1"], tenants["p2"]}
    assert projects.remove_member(ctx, admin, "p2", "alice") is True
    assert projects.remove_member(ctx, admin, "p2", "alice") is False
    with pytest.raises(NotFound, match="user 'zed'"):
        projects.add_member(ctx, admin, "p1", "zed")


# --- visibility: another project's objects do not exist --------------------------------


def test_a_user_sees_only_its_projects(ctx: Corral, tenants: dict[str, str]) -> None:
    alice = as_user(ctx, "alice")
    assert [p.name for p in projects.list_projects(ctx, alice)] == ["p1"]
    with pytest.raises(NotFound, match="project 'p2' not found"):
        projects.get_project(ctx, alice, "p2")
    with pytest.raises(NotFound, match="project 'p2' not found"):
        quotas.get_quota(ctx, alice, "p2")
    assert [u.name for u in users.list_users(ctx, alice)] == ["alice"]
    with pytest.raises(NotFound, match="user 'bob' not found"):
        users.get_user(ctx, alice, "bob")


def test_another_projects_vm_answers_not_found(ctx: Corral, tenants: dict[str, str]) -> None:
    add_vm(ctx, "web1", tenants["p1"])
    add_vm(ctx, "web2", tenants["p2"])
    alice, bob, vic = (as_user(ctx, name) for name in ("alice", "bob", "vic"))
    with ctx.db.session() as session:
        names = session.scalars(select(VmRow.name).where(visible(alice, VmRow.project_id)))
        assert list(names) == ["web1"]
        for action in Action:
            with pytest.raises(NotFound) as caught:
                find_owned(session, alice, VmRow, "vm", "web2", action)
            assert str(caught.value) == "vm 'web2' not found"
        assert find_owned(session, bob, VmRow, "vm", "web2", Action.DELETE).name == "web2"
        assert find_owned(session, vic, VmRow, "vm", "web2").name == "web2"
        with pytest.raises(Forbidden, match=r"vic \(viewer\) may not delete vm 'web2'"):
            find_owned(session, vic, VmRow, "vm", "web2", Action.DELETE)
        with pytest.raises(NotFound):
            find_owned(session, bob, ImageRow, "image", "web2")


def test_only_admins_manage(ctx: Corral, tenants: dict[str, str]) -> None:
    alice = as_user(ctx, "alice")
    attempts: list[Callable[[], object]] = [
        lambda: projects.create_project(ctx, alice, "p3"),
        lambda: projects.delete_project(ctx, alice, "p1"),
        lambda: projects.add_member(ctx, alice, "p1", "bob"),
        lambda: users.create_user(ctx, alice, "eve", "admin"),
        lambda: users.set_role(ctx, alice, "alice", "admin"),
        lambda: users.set_disabled(ctx, alice, "bob", True),
        lambda: quotas.set_quota(ctx, alice, "p1", {"vcpus": 100}),
        lambda: audit.list_entries(ctx, alice),
    ]
    for attempt in attempts:
        with pytest.raises(Forbidden):
            attempt()
    assert as_user(ctx, "alice").role is Role.OPERATOR


# --- users and passwords ---------------------------------------------------------------


def test_passwords_are_argon2id_hashes_never_clear_text(ctx: Corral, admin: Principal) -> None:
    view = users.create_user(ctx, admin, "carol", "viewer", password=PASSWORD)
    assert view.has_password
    with ctx.db.session() as session:
        stored = session.scalars(select(UserRow.password_hash)).one()
    assert stored is not None
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PASSWORD.encode() not in database_text(ctx)
    principal = users.authenticate_password(ctx, "carol", PASSWORD)
    assert (principal.name, principal.role, principal.is_local) == ("carol", Role.VIEWER, False)
    for name, password in (("carol", "wrong password"), ("nobody", PASSWORD)):
        with pytest.raises(Unauthenticated) as caught:
            users.authenticate_password(ctx, name, password)
        assert str(caught.value) == "authentication failed: the credentials are not valid"
    users.set_disabled(ctx, admin, "carol", True)
    with pytest.raises(Unauthenticated, match="not valid"):
        users.authenticate_password(ctx, "carol", PASSWORD)


def test_a_user_changes_its_own_password_only(ctx: Corral, tenants: dict[str, str]) -> None:
    alice = as_user(ctx, "alice")
    users.set_password(ctx, alice, "alice", PASSWORD)
    assert users.authenticate_password(ctx, "alice", PASSWORD).name == "alice"
    with pytest.raises(NotFound):
        users.set_password(ctx, alice, "bob", PASSWORD)
    with pytest.raises(InvalidInput) as caught:
        users.set_password(ctx, alice, "alice", "short")
    assert caught.value.field == "password"


def test_user_creation_is_checked(ctx: Corral, admin: Principal) -> None:
    cases = [
        ({"name": "local:0", "role": "admin"}, "name"),
        ({"name": "Alice", "role": "admin"}, "name"),
        ({"name": "alice", "role": "root"}, "role"),
        ({"name": "alice", "role": "viewer", "password": "short"}, "password"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as caught:
            users.create_user(ctx, admin, **kwargs)
        assert caught.value.field == field
    with pytest.raises(NotFound, match="project 'nope'"):
        users.create_user(ctx, admin, "alice", "viewer", ["nope"])
    users.create_user(ctx, admin, "alice", "viewer")
    with pytest.raises(AlreadyExists, match="user 'alice' already exists"):
        users.create_user(ctx, admin, "alice", "operator")
    assert [u.name for u in users.list_users(ctx, admin)] == ["alice"]


# --- tokens ------------------------------------------------------------------------------


def test_a_token_is_shown_once_and_only_its_hash_is_kept(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    new = tokens.create_token(ctx, admin, "alice", "laptop")
    assert tokens.TOKEN_PATTERN.fullmatch(new.secret)
    assert new.secret.startswith(f"crl_{new.view.id}_")
    assert new.view.prefix == new.secret[:12]
    assert new.secret.encode() not in database_text(ctx)
    assert new.secret.split("_", 2)[2].encode() not in database_text(ctx)
    with ctx.db.session() as session:
        row = session.get(TokenRow, new.view.id)
        assert row is not None
        assert row.secret_hash == tokens.hash_token(new.secret)
    principal = tokens.authenticate_token(ctx, new.secret)
    assert principal == Principal(
        "alice", Role.OPERATOR, frozenset({tenants["p1"]}), user_id=principal.user_id
    )
    assert not principal.is_local
    listed = tokens.list_tokens(ctx, admin, "alice")
    assert [(t.id, t.name, t.state) for t in listed] == [(new.view.id, "laptop", "active")]
    assert new.secret not in repr(listed)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"),  # a wrong secret
        lambda s: "crl_0000000000000000_" + s.split("_", 2)[2],  # an unknown id
        lambda s: s.replace("crl_", "xyz_"),  # not a corral token
        lambda s: "",
        lambda s: s + "x",
        lambda s: s + "\n",
    ],
)
def test_a_wrong_token_is_refused(
    ctx: Corral, admin: Principal, tenants: dict[str, str], mangle: Callable[[str], str]
) -> None:
    new = tokens.create_token(ctx, admin, "alice")
    with pytest.raises(Unauthenticated) as caught:
        tokens.authenticate_token(ctx, mangle(new.secret))
    assert caught.value.status == 401
    assert str(caught.value) == "authentication failed: the credentials are not valid"


def test_revoked_expired_and_disabled_tokens_are_refused(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    revoked = tokens.create_token(ctx, admin, "alice")
    tokens.revoke_token(ctx, admin, revoked.view.id)
    assert tokens.revoke_token(ctx, admin, revoked.view.id).state == "revoked"  # idempotent
    with pytest.raises(Unauthenticated) as caught:
        tokens.authenticate_token(ctx, revoked.secret)
    assert caught.value.reason == f"token {revoked.view.id} is revoked"

    expiring = tokens.create_token(ctx, admin, "alice", expires_in=timedelta(hours=1))
    assert tokens.authenticate_token(ctx, expiring.secret).name == "alice"
    with ctx.db.session() as session:
        row = session.get(TokenRow, expiring.view.id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    with pytest.raises(Unauthenticated) as caught:
        tokens.authenticate_token(ctx, expiring.secret)
    assert caught.value.reason == f"token {expiring.view.id} is expired"

    good = tokens.create_token(ctx, admin, "alice")
    users.set_disabled(ctx, admin, "alice", True)
    with pytest.raises(Unauthenticated) as caught:
        tokens.authenticate_token(ctx, good.secret)
    assert caught.value.reason == "user 'alice' is disabled"
    users.set_disabled(ctx, admin, "alice", False)
    assert tokens.authenticate_token(ctx, good.secret).name == "alice"

    users.delete_user(ctx, admin, "alice")
    with pytest.raises(Unauthenticated):
        tokens.authenticate_token(ctx, good.secret)
    with ctx.db.session() as session:
        assert session.scalars(select(TokenRow)).all() == []


def test_last_used_is_written_at_most_once_a_minute(
    ctx: Corral, admin: Principal, tenants: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new = tokens.create_token(ctx, admin, "alice")
    start = utcnow()

    def last_used() -> datetime | None:
        with ctx.db.session() as session:
            row = session.get(TokenRow, new.view.id)
            assert row is not None
            return row.last_used_at

    for offset, expected in ((0, 0), (30, 0), (59, 0), (61, 61), (100, 61), (125, 125)):
        monkeypatch.setattr(tokens, "utcnow", lambda o=offset: start + timedelta(seconds=o))
        tokens.authenticate_token(ctx, new.secret)
        stamp = last_used()
        assert stamp is not None
        assert stamp.replace(tzinfo=None) == (start + timedelta(seconds=expected)).replace(
            tzinfo=None
        )


def test_users_manage_their_own_tokens_only(ctx: Corral, tenants: dict[str, str]) -> None:
    alice, bob = as_user(ctx, "alice"), as_user(ctx, "bob")
    mine = tokens.create_token(ctx, alice, "alice", "mine")
    theirs = tokens.create_token(ctx, bob, "bob", "theirs")
    assert [t.name for t in tokens.list_tokens(ctx, alice)] == ["mine"]
    with pytest.raises(NotFound, match="user 'bob'"):
        tokens.create_token(ctx, alice, "bob")
    with pytest.raises(NotFound, match="user 'bob'"):
        tokens.list_tokens(ctx, alice, "bob")
    with pytest.raises(NotFound, match=f"token '{theirs.view.id}' not found"):
        tokens.revoke_token(ctx, alice, theirs.view.id)
    # By its display prefix, or the whole (leaked) token; never echoed back.
    assert tokens.revoke_token(ctx, alice, mine.view.prefix).state == "revoked"
    assert tokens.revoke_token(ctx, bob, theirs.secret).state == "revoked"
    with pytest.raises(InvalidInput) as caught:
        tokens.revoke_token(ctx, alice, "not-a-token-id")
    assert caught.value.field == "id"


def test_token_names_and_lifetimes_are_checked(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    with pytest.raises(InvalidInput) as caught:
        tokens.create_token(ctx, admin, "alice", "has space")
    assert caught.value.field == "name"
    for lifetime in (timedelta(seconds=5), timedelta(days=4000)):
        with pytest.raises(InvalidInput) as caught:
            tokens.create_token(ctx, admin, "alice", expires_in=lifetime)
        assert caught.value.field == "expires"


# --- quotas ------------------------------------------------------------------------------


def test_usage_is_computed_from_the_vms(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    add_vm(ctx, "a", tenants["p1"], vcpus=2, memory="1G", disk=10 * GiB)
    add_vm(ctx, "b", tenants["p1"], vcpus=1, memory="512M", disk=5 * GiB)
    add_vm(ctx, "c", tenants["p2"], vcpus=8, memory="8G", disk=50 * GiB)
    with ctx.db.session() as session:  # a clone that keeps its image's size
        session.add(
            ImageRow(
                id="i",
                name="deb",
                path="/x",
                source_format="qcow2",
                virtual_size=3 * GiB,
                actual_size=GiB,
                sha256="s",
                project_id=tenants["p1"],
            )
        )
        clone = VmSpec(name="d", memory="256M", disks=(DiskSpec(name="root", image="deb"),))
        session.add(row_of(clone, tenants["p1"]))
    view = quotas.get_quota(ctx, admin, "p1")
    assert view.usage == {"instances": 3, "vcpus": 4, "memory": 1792 * 2**20, "disk": 18 * GiB}
    assert view.limits == dict.fromkeys(quotas.RESOURCES)


def test_quotas_are_set_partially_and_cleared(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    quotas.set_quota(ctx, admin, "p1", {"vcpus": 4, "memory": 8 * GiB})
    view = quotas.set_quota(ctx, admin, "p1", {"instances": 2, "memory": None})
    assert view.limits == {"instances": 2, "vcpus": 4, "memory": None, "disk": None}
    assert quotas.clear_quota(ctx, admin, "p1").limits == dict.fromkeys(quotas.RESOURCES)
    for limits, field in (({"vcpus": -1}, "vcpus"), ({"gpus": 1}, "gpus")):
        with pytest.raises(InvalidInput) as caught:
            quotas.set_quota(ctx, admin, "p1", limits)
        assert caught.value.field == field


def test_a_create_past_the_quota_is_refused_and_inserts_nothing(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    quotas.set_quota(ctx, admin, "p1", {"instances": 2, "vcpus": 3})
    spec = spec_of("a", vcpus=2)
    with quotas.reserving(ctx, tenants["p1"], quotas.demand_of(spec, {})) as session:
        session.add(row_of(spec, tenants["p1"]))
    big = spec_of("b", vcpus=2)
    with pytest.raises(QuotaExceeded) as caught:
        quotas.check_project_quota(ctx, tenants["p1"], quotas.demand_of(big, {}))
    assert caught.value.quota == "vcpus"
    with (
        pytest.raises(QuotaExceeded) as caught,
        quotas.reserving(ctx, tenants["p1"], quotas.demand_of(big, {})) as session,
    ):
        session.add(row_of(big, tenants["p1"]))
    assert str(caught.value) == (
        "quota vcpus of project 'p1' exceeded: 2 vCPUs in use + 2 vCPUs asked for = 4 vCPUs, "
        "over the quota of 3 vCPUs"
    )
    assert caught.value.status == 403
    with ctx.db.session() as session:
        assert session.scalars(select(VmRow.name)).all() == ["a"]
    # Another project's quota is its own.
    with quotas.reserving(ctx, tenants["p2"], quotas.demand_of(big, {})) as session:
        session.add(row_of(big, tenants["p2"]))


def test_concurrent_creates_never_exceed_the_quota(
    ctx: Corral, admin: Principal, tenants: dict[str, str], database_url: str | None
) -> None:
    """Each creator reads the usage, waits, then inserts: without the lock both would fit."""
    quotas.set_quota(ctx, admin, "p1", {"instances": 1})
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def create(name: str) -> None:
        # A connection of its own, as another process would have.
        mine = open_ctx(ctx.home, database_url)
        spec = spec_of(name)
        barrier.wait()
        try:
            with quotas.reserving(mine, tenants["p1"], quotas.demand_of(spec, {})) as session:
                time.sleep(0.3)
                session.add(row_of(spec, tenants["p1"]))
            outcomes.append("created")
        except CorralError as exc:
            outcomes.append(type(exc).__name__)
        except Exception as exc:  # a database error is the failure tested for
            outcomes.append(repr(exc))
        finally:
            mine.close()

    threads = [threading.Thread(target=create, args=(f"vm-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["QuotaExceeded", "created"]
    with ctx.db.session() as session:
        assert len(session.scalars(select(VmRow.id)).all()) == 1


# --- the audit log -----------------------------------------------------------------------


def test_changes_and_refusals_are_audited_without_secrets(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    new = tokens.create_token(ctx, admin, "alice", "ci")
    with pytest.raises(AlreadyExists):
        users.create_user(ctx, admin, "bob", "viewer", password=PASSWORD)
    alice = as_user(ctx, "alice")
    with pytest.raises(Forbidden):
        projects.create_project(ctx, alice, "mine")
    entries = audit.list_entries(ctx, admin, limit=1000)
    seen = [(e.actor, e.action, e.target_name, e.outcome) for e in reversed(entries)]
    assert seen == [
        (admin.name, "project.create", "p1", "ok"),
        (admin.name, "project.create", "p2", "ok"),
        (admin.name, "user.create", "alice", "ok"),
        (admin.name, "user.create", "bob", "ok"),
        (admin.name, "user.create", "vic", "ok"),
        (admin.name, "token.create", "alice", "ok"),
        (admin.name, "user.create", "bob", "AlreadyExists"),
        ("alice", "project.create", "mine", "Forbidden"),
    ]
    assert entries[0].detail["error"] == "alice (operator) may not manage projects"
    assert entries[2].detail["token_id"] == new.view.id
    with ctx.db.session() as session:
        details = " ".join(session.scalars(select(AuditRow.detail)))
    assert new.secret not in details
    assert PASSWORD not in details
    only = audit.list_entries(ctx, admin, audit.AuditFilter(action="token."))
    assert [e.action for e in only] == ["token.create"]
    assert [e.target_name for e in audit.list_entries(ctx, admin, limit=2, offset=1)] == [
        "bob",
        "alice",
    ]
    with pytest.raises(InvalidInput) as caught:
        audit.list_entries(ctx, admin, limit=0)
    assert caught.value.field == "limit"


def test_a_failed_change_leaves_no_trace_but_its_entry(ctx: Corral, admin: Principal) -> None:
    before = {p.name for p in projects.list_projects(ctx, admin)}
    with pytest.raises(InvalidInput), audit.audited(ctx, admin, "test.fail", "x", "y") as op:
        op.session.add(
            AuditRow(actor="x", action="x", target_kind="x", target_name="x", outcome="x")
        )
        raise InvalidInput("field", "reason")
    assert {p.name for p in projects.list_projects(ctx, admin)} == before
    with ctx.db.session() as session:
        actions = session.scalars(select(AuditRow.action)).all()
    assert actions == ["test.fail"]


def test_unique_names_stay_global(ctx: Corral, admin: Principal, tenants: dict[str, str]) -> None:
    add_vm(ctx, "web", tenants["p1"])
    with pytest.raises(IntegrityError):
        add_vm(ctx, "web", tenants["p2"])


def test_hostile_names_are_refused_and_recorded_cleanly(
    ctx: Corral, admin: Principal, tenants: dict[str, str]
) -> None:
    """Too long for a column, or with a NUL that PostgreSQL refuses: a clean refusal, still
    recorded (cut to the column), never a database error."""
    for bad in ("p" * 300, "a\x00b"):
        with pytest.raises(InvalidInput):
            projects.create_project(ctx, admin, bad)
        with pytest.raises(InvalidInput):
            users.create_user(ctx, admin, bad, "viewer")
        with pytest.raises(NotFound):
            projects.get_project(ctx, admin, bad)
        with pytest.raises(NotFound):
            projects.add_member(ctx, admin, "p1", bad)
        with pytest.raises(NotFound):
            users.get_user(ctx, admin, bad)
        with pytest.raises(Unauthenticated):
            users.authenticate_password(ctx, bad, PASSWORD)
        with ctx.db.session() as session, pytest.raises(NotFound):
            find_owned(session, admin, VmRow, "vm", bad)
    recorded = [e.target_name for e in audit.list_entries(ctx, admin, limit=6)]
    assert recorded == ["a\\0b"] * 3 + ["p" * 255] * 3
