"""Access control: who is asking (principals), what they may do (roles), where (projects),
within which limits (quotas), and the record of what they did (the audit log).

The service functions take the :class:`Principal` that acts, check it may, and record the
change in the audit log in the same transaction; the API authenticates a principal with
:func:`authenticate_token`, the CLI and the daemon's UNIX socket with
:func:`local_principal`.
"""

from corral.access.audit import AuditEntry, AuditFilter, audited, list_entries, record
from corral.access.local import local_principal
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
from corral.access.projects import (
    ProjectView,
    add_member,
    create_project,
    delete_project,
    get_project,
    list_projects,
    remove_member,
)
from corral.access.quotas import (
    Demand,
    Quota,
    QuotaView,
    Usage,
    check_project_quota,
    check_quota,
    clear_quota,
    demand_of,
    get_quota,
    reserving,
    set_quota,
)
from corral.access.scope import find_owned, visible
from corral.access.tokens import (
    NewToken,
    TokenView,
    authenticate_token,
    create_token,
    list_tokens,
    revoke_token,
)
from corral.access.users import (
    UserView,
    authenticate_password,
    create_user,
    delete_user,
    get_user,
    list_users,
    principal_of,
    set_disabled,
    set_password,
    set_role,
)

__all__ = [
    "Action",
    "AuditEntry",
    "AuditFilter",
    "Demand",
    "NewToken",
    "Principal",
    "ProjectView",
    "Quota",
    "QuotaView",
    "Role",
    "TokenView",
    "Usage",
    "UserView",
    "add_member",
    "audited",
    "authenticate_password",
    "authenticate_token",
    "authorize",
    "can",
    "check_project_quota",
    "check_quota",
    "clear_quota",
    "create_project",
    "create_token",
    "create_user",
    "delete_project",
    "delete_user",
    "demand_of",
    "find_owned",
    "get_project",
    "get_quota",
    "get_user",
    "list_entries",
    "list_projects",
    "list_tokens",
    "list_users",
    "local_principal",
    "parse_role",
    "principal_of",
    "record",
    "remove_member",
    "require_admin",
    "reserving",
    "revoke_token",
    "set_disabled",
    "set_password",
    "set_quota",
    "set_role",
    "visible",
    "visible_projects",
]
