"""Launch endpoints: ``/launch`` and what ``corral ssh`` needs to reach an instance."""

from __future__ import annotations

from corral.client.transport import Transport


class LaunchApi(Transport):
    pass
