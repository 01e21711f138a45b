"""The client: one method per endpoint, wire types in and out, one mixin per area."""

from __future__ import annotations

from corral.client.access import AccessApi
from corral.client.catalogue import CatalogueApi
from corral.client.clone import CloneApi
from corral.client.consoles import ConsolesApi
from corral.client.floating import FloatingApi
from corral.client.launch import LaunchApi
from corral.client.monitor import MonitorApi
from corral.client.networks import NetworksApi
from corral.client.nics import NicsApi
from corral.client.security import SecurityApi
from corral.client.snapshots import SnapshotsApi
from corral.client.tasks import TasksApi
from corral.client.transport import ApiError, Transport
from corral.client.usb import UsbApi
from corral.client.vms import VmsApi
from corral.client.volumes import VolumesApi

__all__ = ["ApiError", "Client"]


class Client(
    VmsApi,
    MonitorApi,
    ConsolesApi,
    SnapshotsApi,
    CloneApi,
    CatalogueApi,
    TasksApi,
    LaunchApi,
    VolumesApi,
    NetworksApi,
    FloatingApi,
    SecurityApi,
    NicsApi,
    UsbApi,
    AccessApi,
    Transport,
):
    """A connection to corrald with every area's endpoints (see :class:`Transport` for the
    arguments)."""
