"""``corral sg``: security groups (virtual firewalls), through corrald's API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from corral.api.schemas.security import GroupRead, RuleRead

sg_app = typer.Typer(
    help="Security groups: named firewall rules attached to VMs' NICs (a root corral only).",
    no_args_is_help=True,
)
rule_app = typer.Typer(help="Add and remove a group's rules (enforced at once).")
sg_app.add_typer(rule_app, name="rule")

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Group = Annotated[str, typer.Argument(metavar="GROUP", help="The security group's name.")]
Vm = Annotated[str, typer.Argument(metavar="VM", help="The VM's name.")]
Project = Annotated[
    str | None,
    typer.Option("--project", metavar="NAME", help="The group's project (when ambiguous)."),
]
Nic = Annotated[
    str | None,
    typer.Option("--nic", metavar="NIC", help="The VM's NIC (default: its only one)."),
]
FromCidr = Annotated[
    str | None,
    typer.Option("--from", metavar="CIDR", help="Only from (out rules: to) this IPv4 CIDR."),
]
FromGroup = Annotated[
    str | None,
    typer.Option("--from-group", metavar="GROUP", help="Only from (out: to) this group's NICs."),
]
Out = Annotated[
    bool, typer.Option("--out", help="An outbound rule (from the guest) instead of inbound.")
]


def rule_body(
    allow: str, out: bool = False, cidr: str | None = None, group: str | None = None
) -> dict[str, object]:
    """The wire form of the shorthand ``allow`` (``tcp/80``, ``udp/53``, ``icmp``, ``any``).

    :raise InvalidInput: the shorthand is not valid (field ``allow``).
    """
    from corral.errors import InvalidInput
    from corral.spec.security import parse_allow

    try:
        spec = parse_allow(allow, "out" if out else "in", cidr=cidr, group=group)
    except ValueError as exc:
        raise InvalidInput("allow", str(exc).removeprefix("Value error, ")) from None
    body: dict[str, object] = {"direction": spec.direction, "protocol": spec.protocol}
    optional = {
        "ports": spec.ports,
        "cidr": None if spec.cidr is None else str(spec.cidr),
        "group": spec.group,
    }
    return body | {k: v for k, v in optional.items() if v is not None}


def _peer(rule: RuleRead) -> str:
    if rule.group is not None:
        return f"group {rule.group}"
    return rule.cidr or "anywhere"


def _what(rule: RuleRead) -> str:
    return rule.protocol if rule.ports is None else f"{rule.protocol}/{rule.ports}"


@sg_app.command("create")
def create_cmd(
    name: Group,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow", metavar="RULE", help="Let in tcp/80, udp/53, tcp/8000-8100, icmp or any."
        ),
    ] = None,
    cidr: FromCidr = None,
    group: FromGroup = None,
    description: Annotated[str, typer.Option(help="What the group is for.")] = "",
    project: Annotated[
        str, typer.Option("--project", metavar="NAME", help="The project it goes into.")
    ] = "default",
) -> None:
    """Create a security group; --from/--from-group apply to every --allow."""
    rules = [rule_body(a, cidr=cidr, group=group) for a in allow or []]
    with open_client() as api:
        g = api.create_security_group(name, rules, description, project)
    render.out.print(
        f"security group {g.name} created in project {g.project} with {len(g.rules)} "
        f"rule{'' if len(g.rules) == 1 else 's'}",
        markup=False,
    )


@sg_app.command("list")
def list_cmd(
    project: Annotated[
        str | None, typer.Option("--project", metavar="NAME", help="Only this project's.")
    ] = None,
    json_: Json = False,
) -> None:
    """Security groups, by name."""
    with open_client() as api:
        groups = api.list_security_groups(project)
    if json_:
        render.print_json([g.model_dump() for g in groups])
        return
    render.table(
        None,
        ["Name", "Project", "Rules", "Attached", "Description"],
        (
            [g.name, g.project, str(len(g.rules)), ", ".join(g.attached) or "-", g.description]
            for g in groups
        ),
    )


def _show(g: GroupRead) -> None:
    render.fields(
        [
            ("Name", g.name),
            ("Project", g.project),
            ("Description", g.description or "-"),
            ("Attached", ", ".join(g.attached) or "-"),
            ("Created", g.created_at[:19].replace("T", " ")),
        ]
    )
    if g.rules:
        render.table(
            None,
            ["Rule", "Direction", "Allow", "Peer"],
            ([r.id[:8], r.direction, _what(r), _peer(r)] for r in g.rules),
        )


@sg_app.command("info")
def info_cmd(name: Group, project: Project = None, json_: Json = False) -> None:
    """One security group: its rules and the NICs it is attached to."""
    with open_client() as api:
        g = api.get_security_group(name, project)
    if json_:
        render.print_json(g.model_dump())
        return
    _show(g)


@sg_app.command("delete")
def delete_cmd(name: Group, project: Project = None) -> None:
    """Delete a security group attached nowhere and named by no other group's rule."""
    with open_client() as api:
        api.delete_security_group(name, project)
    render.out.print(f"security group {name} deleted", markup=False)


@sg_app.command("attach")
def attach_cmd(name: Group, vm: Vm, nic: Nic = None, project: Project = None) -> None:
    """Attach a group to a VM's NIC: enforced at once, in whatever state the VM is."""
    with open_client() as api:
        g = api.attach_security_group(name, vm, nic, project)
    render.out.print(f"security group {g.name} attached ({', '.join(g.attached)})", markup=False)


@sg_app.command("detach")
def detach_cmd(name: Group, vm: Vm, nic: Nic = None, project: Project = None) -> None:
    """Detach a group from a VM's NIC, at once."""
    with open_client() as api:
        api.detach_security_group(name, vm, nic, project)
    render.out.print(f"security group {name} detached from {vm}", markup=False)


@rule_app.command("add")
def rule_add_cmd(
    name: Group,
    allow: Annotated[
        str, typer.Argument(metavar="RULE", help="tcp/80, udp/53, tcp/8000-8100, icmp, any.")
    ],
    out: Out = False,
    cidr: FromCidr = None,
    group: FromGroup = None,
    project: Project = None,
) -> None:
    """Add a rule to a group, enforced at once."""
    body = rule_body(allow, out, cidr, group)
    with open_client() as api:
        r = api.add_security_group_rule(name, body, project)
    render.out.print(
        f"rule {r.id[:8]} added to {name}: {r.direction} {_what(r)} {_peer(r)}", markup=False
    )


@rule_app.command("remove")
def rule_remove_cmd(
    name: Group,
    rule: Annotated[str, typer.Argument(metavar="RULE_ID", help="The rule's id (or prefix).")],
    project: Project = None,
) -> None:
    """Remove a rule from a group, at once."""
    with open_client() as api:
        api.remove_security_group_rule(name, rule, project)
    render.out.print(f"rule {rule} removed from {name}", markup=False)
