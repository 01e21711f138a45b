"""Wire types of the API, one module per area; the names of the first areas are re-exported
here.

- :mod:`~corral.api.schemas.base`: :class:`Page`, :class:`ErrorRead`, the ``responses=``
  tables, and the bases :class:`Read` (answers) and :class:`Create` (request bodies).
- :mod:`~corral.api.schemas.core`: VMs, images, instance types, key pairs, host, tasks.
- :mod:`~corral.api.schemas.launch`: launches and SSH access (``LaunchCreate`` re-exported).

Each further area (access, volumes...) has its module, imported from there.
"""

from corral.api.schemas.base import (
    CONFLICT,
    ERRORS,
    INVALID,
    NOT_FOUND,
    UNAUTHENTICATED,
    Create,
    ErrorRead,
    Page,
    Read,
)
from corral.api.schemas.core import (
    DiskRead,
    HostSummary,
    ImageRead,
    InstanceTypeRead,
    KeyPairRead,
    TaskRead,
    VmCreate,
    VmRead,
)
from corral.api.schemas.launch import LaunchCreate

__all__ = [
    "CONFLICT",
    "ERRORS",
    "INVALID",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "Create",
    "DiskRead",
    "ErrorRead",
    "HostSummary",
    "ImageRead",
    "InstanceTypeRead",
    "KeyPairRead",
    "LaunchCreate",
    "Page",
    "Read",
    "TaskRead",
    "VmCreate",
    "VmRead",
]
