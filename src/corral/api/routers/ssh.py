"""``/vms/{name}/ssh``: what an SSH client needs to log in to a VM.

``corral ssh`` and ``corral scp`` ask here, then run the system's OpenSSH client with the
guest's host keys in a known_hosts file of their own (``StrictHostKeyChecking=yes``) and
the key pair's private key, which the client holds; nothing here is secret. Asking learns
the host keys the guest has printed on its console since the last time.
"""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.schemas import ERRORS, NOT_FOUND, ErrorRead
from corral.api.schemas.launch import SshAccessRead

router = APIRouter(prefix="/vms", tags=["vms"], responses=ERRORS)

#: ``responses=`` of ``GET /vms/{name}/ssh``.
SSH_RESPONSES: dict[int | str, dict[str, object]] = {
    **NOT_FOUND,
    409: {"model": ErrorRead, "description": "The VM is not running (the state is named)."},
    422: {
        "model": ErrorRead,
        "description": "A parameter is not valid, or the VM has no port forwarded to its "
        "port 22 (field vm).",
    },
}


@router.get("/{name}/ssh", responses=SSH_RESPONSES)
def get_ssh_access(ctx: CorralDep, principal: PrincipalDep, name: str) -> SshAccessRead:
    """How to log in to a running VM over SSH: address, port, user, key pair, host keys."""
    from corral.api.tenancy import require_visible
    from corral.compute.ssh import access
    from corral.compute.sshcmd import host_key_alias
    from corral.store.models import VmRow

    require_visible(ctx, principal, VmRow, "vm", name)
    found = access(ctx, name)
    return SshAccessRead(
        vm=found.vm,
        user=found.user,
        address=found.address,
        port=found.port,
        keypair=found.keypair,
        identity=found.identity,
        host_key_alias=host_key_alias(found.vm),
        host_keys=list(found.host_keys),
        known_hosts=found.known_hosts,
    )
