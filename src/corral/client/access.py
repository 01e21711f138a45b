"""Access endpoints: projects, their members and quotas, users, tokens, the audit log, login."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from corral.api.schemas import Page
from corral.api.schemas.access import (
    AuditEntryRead,
    MembershipRead,
    NewTokenRead,
    ProjectRead,
    QuotaRead,
    TokenRead,
    UserRead,
    WhoamiRead,
)
from corral.client.transport import Transport, segment


class Unset:
    """The type of :data:`UNSET`."""


#: A field of an update that is left out, where ``None`` means ``null``.
UNSET = Unset()


class AccessApi(Transport):
    # -- projects ------------------------------------------------------------------------------

    def list_projects(
        self,
        name: str | None = None,
        member: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[ProjectRead]:
        return self._get(
            "/projects",
            Page[ProjectRead],
            name=name,
            member=member,
            limit=limit,
            offset=offset,
        )

    def get_project(self, name: str) -> ProjectRead:
        return self._get(f"/projects/{segment(name)}", ProjectRead)

    def create_project(self, name: str, description: str = "") -> ProjectRead:
        body = {"name": name, "description": description}
        return self._post("/projects", ProjectRead, body)

    def update_project(self, name: str, description: str | None = None) -> ProjectRead:
        body = {} if description is None else {"description": description}
        return self._patch(f"/projects/{segment(name)}", ProjectRead, body)

    def delete_project(self, name: str) -> None:
        self._delete(f"/projects/{segment(name)}")

    def add_member(self, project: str, user: str) -> MembershipRead:
        path = f"/projects/{segment(project)}/members/{segment(user)}"
        return self._put(path, MembershipRead, None)

    def remove_member(self, project: str, user: str) -> MembershipRead:
        path = f"/projects/{segment(project)}/members/{segment(user)}"
        return MembershipRead.model_validate(self._send("DELETE", path).json())

    def get_quota(self, project: str) -> QuotaRead:
        return self._get(f"/projects/{segment(project)}/quota", QuotaRead)

    def set_quota(self, project: str, limits: Mapping[str, int | None]) -> QuotaRead:
        """Change the limits given (``None``: unlimited); the others stay."""
        return self._patch(f"/projects/{segment(project)}/quota", QuotaRead, dict(limits))

    def replace_quota(self, project: str, limits: Mapping[str, int | None]) -> QuotaRead:
        """Set every limit: those not given are unlimited (``{}`` lifts them all)."""
        return self._put(f"/projects/{segment(project)}/quota", QuotaRead, dict(limits))

    # -- users ---------------------------------------------------------------------------------

    def list_users(
        self,
        role: str | None = None,
        project: str | None = None,
        disabled: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[UserRead]:
        return self._get(
            "/users",
            Page[UserRead],
            role=role,
            project=project,
            disabled=None if disabled is None else str(disabled).lower(),
            limit=limit,
            offset=offset,
        )

    def get_user(self, name: str) -> UserRead:
        return self._get(f"/users/{segment(name)}", UserRead)

    def create_user(
        self,
        name: str,
        role: str,
        projects: Sequence[str] = (),
        password: str | None = None,
    ) -> UserRead:
        body = {"name": name, "role": role, "projects": list(projects), "password": password}
        return self._post("/users", UserRead, body)

    def update_user(
        self,
        name: str,
        role: str | None = None,
        disabled: bool | None = None,
        password: str | Unset | None = UNSET,
    ) -> UserRead:
        """Change what is given: ``role``, ``disabled``, ``password`` (``None`` removes it;
        :data:`UNSET` leaves it)."""
        body: dict[str, object] = {}
        if role is not None:
            body["role"] = role
        if disabled is not None:
            body["disabled"] = disabled
        if not isinstance(password, Unset):
            body["password"] = password
        return self._patch(f"/users/{segment(name)}", UserRead, body)

    def delete_user(self, name: str) -> None:
        self._delete(f"/users/{segment(name)}")

    # -- tokens --------------------------------------------------------------------------------

    def list_tokens(
        self,
        user: str | None = None,
        state: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[TokenRead]:
        return self._get(
            "/tokens", Page[TokenRead], user=user, state=state, limit=limit, offset=offset
        )

    def get_token(self, token_id: str) -> TokenRead:
        return self._get(f"/tokens/{segment(token_id)}", TokenRead)

    def create_token(
        self, user: str | None = None, name: str = "default", expires: str | None = None
    ) -> NewTokenRead:
        """A new token (``user``'s; the caller's own when ``None``), its secret this once.

        :param expires: its lifetime (``30d``); ``None``: until revoked.
        """
        body = {"user": user, "name": name, "expires": expires}
        return self._post("/tokens", NewTokenRead, body)

    def revoke_token(self, token_id: str) -> TokenRead:
        """Revoke the token of that id (or the first 4 or more digits of it)."""
        answer = self._send("DELETE", f"/tokens/{segment(token_id)}")
        return TokenRead.model_validate(answer.json())

    # -- the audit log -------------------------------------------------------------------------

    def list_audit(
        self,
        actor: str | None = None,
        action: str | None = None,
        target_kind: str | None = None,
        target: str | None = None,
        project: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[AuditEntryRead]:
        return self._get(
            "/audit",
            Page[AuditEntryRead],
            actor=actor,
            action=action,
            target_kind=target_kind,
            target=target,
            project=project,
            outcome=outcome,
            since=None if since is None else since.isoformat(),
            limit=limit,
            offset=offset,
        )

    # -- login ---------------------------------------------------------------------------------

    def login(self, user: str, password: str, expires: str | None = "30d") -> NewTokenRead:
        """A new token for ``user`` if ``password`` is its password (no token needed)."""
        body = {"user": user, "password": password, "expires": expires}
        return self._post("/login", NewTokenRead, body)

    def whoami(self) -> WhoamiRead:
        return self._get("/whoami", WhoamiRead)
