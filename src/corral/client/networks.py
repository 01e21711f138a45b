"""Network endpoints: ``/networks``."""

from __future__ import annotations

from corral.api.schemas import Page
from corral.api.schemas.networks import NetworkRead
from corral.client.transport import Transport, segment


class NetworksApi(Transport):
    def list_networks(
        self,
        project: str | None = None,
        name: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[NetworkRead]:
        """Networks, by name."""
        return self._get(
            "/networks",
            Page[NetworkRead],
            project=project,
            name=name,
            kind=kind,
            limit=limit,
            offset=offset,
        )

    def get_network(self, name: str) -> NetworkRead:
        return self._get(f"/networks/{segment(name)}", NetworkRead)

    def create_network(
        self,
        name: str,
        kind: str = "nat",
        subnet: str | None = None,
        gateway: str | None = None,
        bridge: str | None = None,
        uplink: str | None = None,
        vlan: int | None = None,
        project: str = "default",
    ) -> NetworkRead:
        body = {
            "name": name,
            "kind": kind,
            "subnet": subnet,
            "gateway": gateway,
            "bridge": bridge,
            "uplink": uplink,
            "vlan": vlan,
            "project": project,
        }
        given = {key: value for key, value in body.items() if value is not None}
        return self._post("/networks", NetworkRead, given)

    def delete_network(self, name: str) -> None:
        self._delete(f"/networks/{segment(name)}")
