"""Volume endpoints: ``/volumes``."""

from __future__ import annotations

from corral.client.transport import Transport


class VolumesApi(Transport):
    pass
