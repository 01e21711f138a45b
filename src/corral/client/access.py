"""Access endpoints: projects, users, tokens, quotas, the audit log, login."""

from __future__ import annotations

from corral.client.transport import Transport


class AccessApi(Transport):
    pass
