"""The pure rules of access control: roles x actions x projects, quota arithmetic, durations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from corral.access.passwords import check_password
from corral.access.principal import (
    Action,
    Principal,
    Role,
    authorize,
    can,
    parse_role,
    require_admin,
    visible_projects,
)
from corral.access.quotas import Demand, Quota, Usage, check_quota, demand_of, vm_usage
from corral.access.tokens import parse_duration
from corral.errors import Forbidden, InvalidInput, NotFound, QuotaExceeded
from corral.spec.vm import DiskSpec, VmSpec
from corral.store.models import ROLES
from corral.units import GiB, MiB

MINE = "project-mine"
OTHER = "project-other"

#: The whole matrix: (role, action) -> allowed in a project the user is a member of.
MATRIX = {
    (Role.VIEWER, Action.READ): True,
    (Role.VIEWER, Action.CREATE): False,
    (Role.VIEWER, Action.OPERATE): False,
    (Role.VIEWER, Action.DELETE): False,
    (Role.VIEWER, Action.ADMIN): False,
    (Role.OPERATOR, Action.READ): True,
    (Role.OPERATOR, Action.CREATE): True,
    (Role.OPERATOR, Action.OPERATE): True,
    (Role.OPERATOR, Action.DELETE): True,
    (Role.OPERATOR, Action.ADMIN): False,
    (Role.ADMIN, Action.READ): True,
    (Role.ADMIN, Action.CREATE): True,
    (Role.ADMIN, Action.OPERATE): True,
    (Role.ADMIN, Action.DELETE): True,
    (Role.ADMIN, Action.ADMIN): True,
}


def who(role: Role) -> Principal:
    return Principal(name=f"a-{role.value}", role=role, project_ids=frozenset({MINE}))


def test_the_matrix_covers_every_role_and_action() -> None:
    assert set(MATRIX) == {(role, action) for role in Role for action in Action}


@pytest.mark.parametrize(("role", "action"), sorted(MATRIX))
def test_role_action_in_own_project(role: Role, action: Action) -> None:
    assert can(who(role), action, MINE) is MATRIX[(role, action)]


@pytest.mark.parametrize(("role", "action"), sorted(MATRIX))
def test_only_an_admin_acts_in_another_project(role: Role, action: Action) -> None:
    assert can(who(role), action, OTHER) is (role is Role.ADMIN)


@pytest.mark.parametrize(("role", "action"), sorted(MATRIX))
def test_only_an_admin_acts_outside_projects(role: Role, action: Action) -> None:
    assert can(who(role), action, None) is (role is Role.ADMIN)


def test_visible_projects() -> None:
    assert visible_projects(who(Role.ADMIN)) is None  # every project
    assert visible_projects(who(Role.OPERATOR)) == frozenset({MINE})
    assert visible_projects(Principal("nobody", Role.VIEWER)) == frozenset()


def test_another_projects_object_is_not_found_never_forbidden() -> None:
    for role in (Role.VIEWER, Role.OPERATOR):
        for action in Action:
            with pytest.raises(NotFound) as caught:
                authorize(who(role), action, "vm", "web", OTHER)
            assert caught.value.status == 404
            assert str(caught.value) == "vm 'web' not found"


def test_a_visible_object_the_role_may_not_touch_is_forbidden() -> None:
    with pytest.raises(Forbidden) as caught:
        authorize(who(Role.VIEWER), Action.DELETE, "vm", "web", MINE)
    assert caught.value.status == 403
    assert str(caught.value) == "a-viewer (viewer) may not delete vm 'web'"
    authorize(who(Role.VIEWER), Action.READ, "vm", "web", MINE)
    authorize(who(Role.OPERATOR), Action.DELETE, "vm", "web", MINE)
    authorize(who(Role.ADMIN), Action.DELETE, "vm", "web", OTHER)


def test_require_admin() -> None:
    require_admin(who(Role.ADMIN), "users")
    with pytest.raises(Forbidden, match=r"a-operator \(operator\) may not manage users"):
        require_admin(who(Role.OPERATOR), "users")


def test_roles_agree_with_the_tables_check_constraint() -> None:
    assert tuple(role.value for role in Role) == ROLES
    assert parse_role("viewer") is Role.VIEWER
    with pytest.raises(InvalidInput) as caught:
        parse_role("root")
    assert caught.value.field == "role"
    assert "admin, operator, viewer" in caught.value.reason


def test_principals_are_frozen() -> None:
    principal = who(Role.VIEWER)
    with pytest.raises(AttributeError):
        principal.role = Role.ADMIN  # type: ignore[misc]


# --- quotas -----------------------------------------------------------------------------


def test_no_quota_allows_anything() -> None:
    check_quota(Usage(100, 400, 1000 * GiB, 10**15), Quota("p"), Demand(1, 64, GiB, GiB))


def test_quota_reached_exactly_is_allowed() -> None:
    check_quota(
        Usage(1, 2, GiB, 10 * GiB), Quota("p", 2, 4, 2 * GiB, 20 * GiB), Demand(1, 2, GiB, 10 * GiB)
    )


@pytest.mark.parametrize(
    ("quota", "named", "expected"),
    [
        (
            Quota("p1", instances=2),
            "instances",
            "2 instances in use + 1 instance asked for = 3 instances, "
            "over the quota of 2 instances",
        ),
        (
            Quota("p1", vcpus=4),
            "vcpus",
            "3 vCPUs in use + 2 vCPUs asked for = 5 vCPUs, over the quota of 4 vCPUs",
        ),
        (
            Quota("p1", memory=2 * GiB),
            "memory",
            "1.5 GiB in use + 1 GiB asked for = 2.5 GiB, over the quota of 2 GiB",
        ),
        (
            Quota("p1", disk=20 * GiB),
            "disk",
            "15 GiB in use + 10 GiB asked for = 25 GiB, over the quota of 20 GiB",
        ),
    ],
)
def test_quota_exceeded_names_the_quota(quota: Quota, named: str, expected: str) -> None:
    usage = Usage(instances=2, vcpus=3, memory=1536 * MiB, disk=15 * GiB)
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(usage, quota, Demand(1, 2, GiB, 10 * GiB))
    error = caught.value
    assert error.status == 403
    assert error.quota == named
    assert error.project == "p1"
    assert str(error) == f"quota {named} of project 'p1' exceeded: {expected}"
    assert (error.used, error.requested) == (
        getattr(usage, named),
        getattr(Demand(1, 2, GiB, 10 * GiB), named),
    )


def test_the_first_quota_exceeded_is_named() -> None:
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(Usage(5, 5, 5, 5), Quota("p", 1, 1, 1, 1), Demand(1, 1, 1, 1))
    assert caught.value.quota == "instances"


def test_a_resource_not_asked_for_is_not_checked() -> None:
    # The quota was lowered below the usage; a VM without disks still fits.
    check_quota(Usage(1, 1, GiB, 50 * GiB), Quota("p", disk=10 * GiB), Demand(1, 1, GiB, 0))


def test_a_zero_quota_refuses_everything() -> None:
    with pytest.raises(QuotaExceeded, match="quota instances"):
        check_quota(Usage(), Quota("p", instances=0), Demand())


def test_usage_of_a_vm_counts_sizes_and_image_sizes() -> None:
    spec = VmSpec(
        name="web",
        vcpus=2,
        memory="1G",
        disks=(
            DiskSpec(name="root", image="deb"),  # keeps the image's size
            DiskSpec(name="big", image="deb", size=20 * GiB),  # grown
            DiskSpec(name="data", size=5 * GiB),  # blank
        ),
    )
    usage = vm_usage(spec, {"deb": 2 * GiB})
    assert usage == Usage(instances=1, vcpus=2, memory=GiB, disk=27 * GiB)
    assert demand_of(spec, {"deb": 2 * GiB}) == Demand(1, 2, GiB, 27 * GiB)
    assert usage + usage == Usage(2, 4, 2 * GiB, 54 * GiB)


# --- durations and passwords --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("90s", timedelta(seconds=90)),
        (" 5m ", timedelta(minutes=5)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "d", "1.5d", "-1d", "30 days", ""])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(text)
    assert caught.value.field == "expires"


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short", "at least 8"), ("x" * 1025, "at most 1024"), ("tab\there!", "control characters")],
)
def test_password_rules(password: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_password(password)
    assert caught.value.field == "password"
    assert reason in caught.value.reason
    assert password not in str(caught.value)
