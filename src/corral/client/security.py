"""Security group endpoints: ``/security-groups``."""

from __future__ import annotations

from pydantic import TypeAdapter

from corral.api.schemas.security import GroupRead, RuleRead
from corral.client.transport import Transport, segment

_GROUPS = TypeAdapter(list[GroupRead])


class SecurityApi(Transport):
    def list_security_groups(self, project: str | None = None) -> list[GroupRead]:
        """Security groups, by name."""
        answer = self._send("GET", "/security-groups", params={"project": project})
        return _GROUPS.validate_python(answer.json())

    def get_security_group(self, name: str, project: str | None = None) -> GroupRead:
        return self._get(f"/security-groups/{segment(name)}", GroupRead, project=project)

    def create_security_group(
        self,
        name: str,
        rules: list[dict[str, object]] | None = None,
        description: str = "",
        project: str = "default",
    ) -> GroupRead:
        """Create a group; each rule has the fields of ``RuleCreate`` (``protocol``,
        ``ports``, ``direction``, ``cidr``, ``group``)."""
        body = {
            "name": name,
            "description": description,
            "rules": rules or [],
            "project": project,
        }
        return self._post("/security-groups", GroupRead, body)

    def delete_security_group(self, name: str, project: str | None = None) -> None:
        self._delete(f"/security-groups/{segment(name)}", project=project)

    def add_security_group_rule(
        self, name: str, rule: dict[str, object], project: str | None = None
    ) -> RuleRead:
        path = f"/security-groups/{segment(name)}/rules"
        answer = self._send("POST", path, params={"project": project}, body=rule)
        return RuleRead.model_validate(answer.json())

    def remove_security_group_rule(self, name: str, rule: str, project: str | None = None) -> None:
        self._delete(f"/security-groups/{segment(name)}/rules/{segment(rule)}", project=project)

    def attach_security_group(
        self, name: str, vm: str, nic: str | None = None, project: str | None = None
    ) -> GroupRead:
        path = f"/security-groups/{segment(name)}/attachments"
        body = {"vm": vm} | ({} if nic is None else {"nic": nic})
        answer = self._send("POST", path, params={"project": project}, body=body)
        return GroupRead.model_validate(answer.json())

    def detach_security_group(
        self, name: str, vm: str, nic: str | None = None, project: str | None = None
    ) -> GroupRead:
        path = f"/security-groups/{segment(name)}/attachments/{segment(vm)}"
        answer = self._send("DELETE", path, params={"nic": nic, "project": project})
        return GroupRead.model_validate(answer.json())
