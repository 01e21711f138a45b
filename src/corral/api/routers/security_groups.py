"""``/security-groups``: security groups (virtual firewalls) of a project, their rules, and
the VM NICs they are attached to.

Every change reloads the host's nftables tables in one transaction, well under a second: the
answers are immediate (201, 200, 204), not tasks. A group name is unique in its project;
``?project=`` picks one when the caller's projects have several of that name.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.schemas import ERRORS, ErrorRead
from corral.api.schemas.security import (
    AttachmentCreate,
    GroupCreate,
    GroupRead,
    RuleCreate,
    RuleRead,
)
from corral.compute.security import GroupView, RuleView
from corral.spec.security import GROUP_NAME_PATTERN
from corral.spec.vm import NAME_PATTERN

router = APIRouter(prefix="/security-groups", tags=["security groups"], responses=ERRORS)

GroupName = Annotated[
    str, Path(pattern=GROUP_NAME_PATTERN, description="The group's name.", examples=["web"])
]
ProjectQuery = Annotated[
    str | None,
    Query(max_length=63, description="The group's project, when several have that name."),
]


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorRead, "description": description}


def rule_read(view: RuleView) -> RuleRead:
    """The wire form of a rule view."""
    return RuleRead(
        id=view.id,
        direction=view.direction,
        protocol=view.protocol,
        ports=view.ports,
        cidr=view.cidr,
        group=view.group,
    )


def group_read(view: GroupView) -> GroupRead:
    """The wire form of a group view."""
    return GroupRead(
        name=view.name,
        project=view.project,
        description=view.description,
        rules=[rule_read(r) for r in view.rules],
        attached=list(view.attached),
        created_at=view.created_at,
    )


#: ``responses=`` of an endpoint that names a group.
GROUP_RESPONSES: dict[int | str, dict[str, object]] = {
    404: _error("No such group (or not in the caller's projects)."),
    409: _error("Groups of that name are in several of the caller's projects: name one."),
}
CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: _error("The caller's role may not create."),
    404: _error("No such project (or not the caller's), or a rule's peer group."),
    409: _error("The project has a group of that name."),
}
DELETE_RESPONSES = GROUP_RESPONSES | {
    403: _error("The caller's role may not delete."),
    409: _error("Attached to NICs, or named by another group's rule (named)."),
}
CHANGE_RESPONSES = GROUP_RESPONSES | {
    403: _error("The caller's role may not operate."),
    404: _error("No such group, rule, VM or NIC, or a peer group not in the group's project."),
}
ATTACH_RESPONSES = CHANGE_RESPONSES | {
    409: _error(
        "The VM has no NIC on a network, several (none named), or the NIC is on a bridged "
        "network; the group is attached to it already."
    ),
}


@router.get("", responses={404: _error("No such project (or not the caller's).")})
def list_security_groups(
    ctx: CorralDep, principal: PrincipalDep, project: ProjectQuery = None
) -> list[GroupRead]:
    """The caller's security groups, by name, with their rules and attachments."""
    from corral.compute.security import list_groups

    return [group_read(v) for v in list_groups(ctx, principal, project)]


@router.post("", status_code=201, responses=CREATE_RESPONSES)
def create_security_group(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: GroupCreate,
) -> GroupRead:
    """Create a security group, with rules; it filters nothing until attached."""
    from corral.compute.security import create_group, make_rule

    rules = [make_rule(r.direction, r.protocol, r.ports, r.cidr, r.group) for r in body.rules]
    view = create_group(ctx, principal, body.name, rules, body.description, body.project)
    response.headers["Location"] = request.url_for("get_security_group", name=view.name).path
    return group_read(view)


@router.get("/{name}", responses=GROUP_RESPONSES)
def get_security_group(
    ctx: CorralDep, principal: PrincipalDep, name: GroupName, project: ProjectQuery = None
) -> GroupRead:
    """One security group, its rules and the NICs it is attached to."""
    from corral.compute.security import get_group

    return group_read(get_group(ctx, principal, name, project))


@router.delete("/{name}", status_code=204, response_class=Response, responses=DELETE_RESPONSES)
def delete_security_group(
    ctx: CorralDep, principal: PrincipalDep, name: GroupName, project: ProjectQuery = None
) -> None:
    """Delete a security group attached nowhere and named by no other group's rule."""
    from corral.compute.security import delete_group

    delete_group(ctx, principal, name, project)


@router.post("/{name}/rules", status_code=201, responses=CHANGE_RESPONSES)
def add_security_group_rule(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: GroupName,
    body: RuleCreate,
    project: ProjectQuery = None,
) -> RuleRead:
    """Add a rule, enforced at once on the NICs the group is attached to."""
    from corral.compute.security import add_rule, make_rule

    spec = make_rule(body.direction, body.protocol, body.ports, body.cidr, body.group)
    return rule_read(add_rule(ctx, principal, name, spec, project))


@router.delete(
    "/{name}/rules/{rule}", status_code=204, response_class=Response, responses=CHANGE_RESPONSES
)
def remove_security_group_rule(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: GroupName,
    rule: Annotated[
        str,
        Path(pattern=r"^[0-9a-f-]{4,36}$", description="The rule's id, or a unique prefix."),
    ],
    project: ProjectQuery = None,
) -> None:
    """Remove a rule, at once."""
    from corral.compute.security import remove_rule

    remove_rule(ctx, principal, name, rule, project)


@router.post("/{name}/attachments", responses=ATTACH_RESPONSES)
def attach_security_group(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: GroupName,
    body: AttachmentCreate,
    project: ProjectQuery = None,
) -> GroupRead:
    """Attach the group to a VM's NIC, enforced at once, in whatever state the VM is."""
    from corral.compute.security import attach

    return group_read(attach(ctx, principal, name, body.vm, body.nic, project))


@router.delete("/{name}/attachments/{vm}", responses=ATTACH_RESPONSES)
def detach_security_group(
    ctx: CorralDep,
    principal: PrincipalDep,
    name: GroupName,
    vm: Annotated[str, Path(pattern=NAME_PATTERN, description="The VM, by name.")],
    nic: Annotated[str | None, Query(max_length=63, description="The VM's NIC.")] = None,
    project: ProjectQuery = None,
) -> GroupRead:
    """Detach the group from a VM's NIC, at once."""
    from corral.compute.security import detach

    return group_read(detach(ctx, principal, name, vm, nic, project))
