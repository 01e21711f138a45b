"""Wire types of access: projects and their members and quotas, users, tokens, the audit
log, login.

Request bodies refuse unknown fields and check names, passwords and lifetimes by the rules
of :mod:`corral.access.checks` (the same messages the service layer gives), so that a bad
value is a 422 naming its field before anything is looked up. Passwords are only ever
received, never answered; a token's secret is answered once, by :class:`NewTokenRead`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from corral.access import checks
from corral.access.passwords import MAX_PASSWORD, MIN_PASSWORD, check_password
from corral.access.principal import parse_role
from corral.api.schemas.base import Create, ErrorRead, Read
from corral.errors import InvalidInput

#: ``responses=`` of an operation only some roles may take, on an object the caller sees.
FORBIDDEN: dict[int | str, dict[str, object]] = {
    403: {"model": ErrorRead, "description": "The caller's role does not allow it."}
}

Role = Literal["admin", "operator", "viewer"]


def _checked(check: Callable[[str], object]) -> BeforeValidator:
    """A validator that runs ``check`` on a text and refuses it with ``check``'s reason."""

    def validate(value: Any) -> Any:
        if isinstance(value, str):
            try:
                check(value)
            except InvalidInput as exc:
                raise ValueError(exc.reason) from None
        return value

    return BeforeValidator(validate)


UserName = Annotated[
    str,
    _checked(checks.check_user_name),
    Field(pattern=checks.USER_NAME_PATTERN, description="A user's name."),
]
ProjectName = Annotated[
    str,
    _checked(checks.check_project_name),
    Field(pattern=checks.PROJECT_NAME_PATTERN, description="A project's name."),
]
Password = Annotated[
    str,
    _checked(check_password),
    Field(
        min_length=MIN_PASSWORD,
        max_length=MAX_PASSWORD,
        description="Never answered, never recorded; kept as an argon2id hash.",
    ),
]
RoleName = Annotated[Role, _checked(parse_role)]
Lifetime = Annotated[
    str,
    _checked(checks.lifetime),
    Field(
        max_length=32,
        description="A lifetime: a whole number and s, m, h, d or w (30d); 1 minute to 3660 days.",
    ),
]
Description = Annotated[
    str,
    _checked(checks.check_description),
    Field(
        max_length=checks.MAX_DESCRIPTION,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="One line that says what it is for.",
    ),
]
TokenName = Annotated[
    str, _checked(checks.check_token_name), Field(pattern=checks.TOKEN_NAME_PATTERN)
]

# --- projects ---------------------------------------------------------------------------


class ProjectRead(Read):
    """A project, with its members and how many objects it owns."""

    id: str
    name: str
    description: str
    created_at: str
    members: list[str] = Field(description="Names of its member users.")
    vms: int
    images: int
    keypairs: int
    volumes: int


class ProjectCreate(Create):
    """A project to create (``POST /projects``): empty, without members or quotas."""

    name: ProjectName
    description: Description = ""


class ProjectUpdate(Create):
    """What to change of a project (``PATCH /projects/{name}``); what is left out stays."""

    description: Description | None = None


class MembershipRead(Read):
    """A user's membership of a project, after it was added or removed."""

    project: str
    user: str
    role: Role = Field(description="The user's role: it holds in every project it is in.")
    member: bool = Field(description="Whether the user is a member now.")
    changed: bool = Field(description="Whether the request changed that.")


# --- quotas -----------------------------------------------------------------------------

Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Bytes = Annotated[int, Field(ge=0, le=2**63 - 1)]


class QuotaLimits(Read):
    """A project's limits; ``null`` is unlimited."""

    instances: int | None
    vcpus: int | None
    memory: int | None = Field(description="Bytes of guest memory of all its VMs.")
    disk: int | None = Field(description="Bytes of provisioned disk of all its VMs.")


class QuotaUsage(Read):
    """What a project holds now."""

    instances: int
    vcpus: int
    memory: int
    disk: int


class QuotaRead(Read):
    """A project's quota beside its usage."""

    project: str
    limits: QuotaLimits
    usage: QuotaUsage


class QuotaPut(Create):
    """Every limit of a project (``PUT``): one left out or ``null`` is unlimited."""

    instances: Count | None = None
    vcpus: Count | None = None
    memory: Bytes | None = None
    disk: Bytes | None = None


class QuotaUpdate(Create):
    """Some limits of a project (``PATCH``): those given change (``null``: unlimited), the
    others stay."""

    instances: Count | None = None
    vcpus: Count | None = None
    memory: Bytes | None = None
    disk: Bytes | None = None


# --- users ------------------------------------------------------------------------------


class UserRead(Read):
    """A user (never its password: only whether it has one)."""

    id: str
    name: str
    role: Role
    disabled: bool
    has_password: bool
    projects: list[str] = Field(description="Names of the projects it is a member of.")
    created_at: str


class UserCreate(Create):
    """A user to create (``POST /users``)."""

    name: UserName
    role: RoleName
    projects: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=1000, description="Projects it is a member of."
    )
    password: Password | None = Field(
        default=None, description="Its password; none: it authenticates by token only."
    )


class UserUpdate(Create):
    """What to change of a user (``PATCH /users/{name}``); what is left out stays.

    A user may change its own password; the role and ``disabled`` are an admin's to change.
    """

    role: RoleName | None = None
    disabled: bool | None = Field(
        default=None, description="A disabled user's tokens and password are refused."
    )
    password: Password | None = Field(
        default=None, description="A new password; ``null`` removes it (tokens only)."
    )


# --- tokens -----------------------------------------------------------------------------


class TokenRead(Read):
    """A token as listings show it: never the token, only its first characters."""

    id: str
    user: str
    name: str
    prefix: str = Field(description="`crl_` and the id's first digits.")
    created_at: str
    last_used_at: str | None
    expires_at: str | None
    revoked_at: str | None
    state: Literal["active", "expired", "revoked"]


class NewTokenRead(TokenRead):
    """A token just made, with the token itself: answered this once, kept by nobody."""

    token: str = Field(description="The bearer token, `crl_<id>_<secret>`.")


class TokenCreate(Create):
    """A token to make (``POST /tokens``)."""

    user: UserName | None = Field(
        default=None, description="Whose token; the caller's own when left out."
    )
    name: TokenName = Field(default="default", description="What it is for (ci, laptop).")
    expires: Lifetime | None = Field(default=None, description="Its lifetime; none: until revoked.")


# --- the audit log ----------------------------------------------------------------------


class AuditEntryRead(Read):
    """One entry of the audit log."""

    id: int
    at: str
    actor: str = Field(description="A user's name, or `local:<uid>`.")
    action: str = Field(description="`<kind>.<verb>`: project.create, token.revoke...")
    target_kind: str
    target_name: str
    project: str | None
    outcome: str = Field(description="`ok`, or the class of the error that refused it.")
    detail: dict[str, Any]


# --- login ------------------------------------------------------------------------------


class LoginCreate(Create):
    """A user name and password to exchange for a token (``POST /login``)."""

    user: Annotated[str, Field(max_length=255)]
    password: Annotated[str, Field(max_length=MAX_PASSWORD)]
    expires: Lifetime | None = Field(
        default="30d", description="The token's lifetime; none: until revoked."
    )


class WhoamiRead(Read):
    """Who the caller is: a user by its token, or the local administrator."""

    name: str = Field(description="A user's name, or `local:<uid>`.")
    role: Role
    local: bool = Field(description="The local administrator, trusted on the UNIX socket.")
    projects: list[str] = Field(description="The projects it sees (every one, for an admin).")
