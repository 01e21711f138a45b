"""``/keypairs``: public keys that launches install (private keys are never known here).

A key pair is made where its private key is to live: ``corral key create`` generates it on
the caller's machine, writes the private key there, and registers only the public key
(``POST /keypairs``), with the private key's path on that machine as a hint for
``corral ssh``. Registrations and deletions are recorded in the audit log, refusals included.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from corral.access.principal import Action
from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.images import recorded
from corral.api.routers.paging import Limit, Offset, page
from corral.api.routers.vms import require_creatable
from corral.api.schemas import ERRORS, NOT_FOUND, ErrorRead, KeyPairRead, Page
from corral.api.schemas.catalogue import KeyPairCreate
from corral.api.tenancy import require_visible, visible_names
from corral.compute.keys import KeyPairView
from corral.spec.keys import KEY_NAME_PATTERN

router = APIRouter(prefix="/keypairs", tags=["key pairs"], responses=ERRORS)

KeyName = Annotated[str, Path(pattern=KEY_NAME_PATTERN, description="The key pair's name.")]

#: ``responses=`` of ``POST /keypairs``.
CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {"model": ErrorRead, "description": "The caller's role may not create in the project."},
    404: {"model": ErrorRead, "description": "No such project (or not the caller's)."},
    409: {"model": ErrorRead, "description": "The name is taken."},
}
#: ``responses=`` of ``DELETE /keypairs/{name}``.
DELETE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {"model": ErrorRead, "description": "The caller's role may not delete it."},
    404: {"model": ErrorRead, "description": "No such key pair (or not the caller's)."},
}


def keypair_read(view: KeyPairView) -> KeyPairRead:
    """The wire form of a key pair view."""
    return KeyPairRead(
        name=view.name,
        project=view.project,
        kind=view.kind,
        bits=view.bits,
        fingerprint=view.fingerprint,
        comment=view.comment,
        public_key=view.public_key,
        private_key_path=view.private_key_path,
        created_at=view.created_at,
    )


@router.get("")
def list_keypairs(
    ctx: CorralDep, principal: PrincipalDep, limit: Limit = 100, offset: Offset = 0
) -> Page[KeyPairRead]:
    """Key pairs by name."""
    from corral.compute.keys import list_keys
    from corral.store.models import KeyPairRow

    mine = visible_names(ctx, principal, KeyPairRow)
    return page([keypair_read(v) for v in list_keys(ctx) if v.name in mine], limit, offset)


@router.get("/{name}", responses=NOT_FOUND)
def get_keypair(ctx: CorralDep, principal: PrincipalDep, name: KeyName) -> KeyPairRead:
    """One key pair."""
    from corral.compute.keys import get_key
    from corral.store.models import KeyPairRow

    require_visible(ctx, principal, KeyPairRow, "key pair", name)
    return keypair_read(get_key(ctx, name))


@router.post("", status_code=201, responses=CREATE_RESPONSES)
def create_keypair(
    ctx: CorralDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    body: KeyPairCreate,
) -> KeyPairRead:
    """Register a public key (validated: type, size, key material) in a project."""
    from corral.compute.keys import register_key

    with recorded(ctx, principal, "keypair.create", "key pair", body.name) as note:
        note.project = body.project
        require_creatable(ctx, principal, body.project)
        view = register_key(
            ctx, body.name, body.public_key, body.private_key_path, project=body.project
        )
        note.detail["fingerprint"] = view.fingerprint
    response.headers["Location"] = request.url_for("get_keypair", name=view.name).path
    return keypair_read(view)


@router.delete("/{name}", responses=DELETE_RESPONSES)
def delete_keypair(ctx: CorralDep, principal: PrincipalDep, name: KeyName) -> KeyPairRead:
    """Forget a key pair; answers it as it was. Its private key file, wherever it is, and the
    instances launched with it keep the key."""
    from corral.access.scope import find_owned
    from corral.compute.keys import delete_key
    from corral.compute.ownership import project_name
    from corral.store.models import KeyPairRow

    with recorded(ctx, principal, "keypair.delete", "key pair", name) as note:
        with ctx.db.session() as session:
            row = find_owned(session, principal, KeyPairRow, "key pair", name, Action.DELETE)
            note.project = project_name(session, row.project_id)
        view = delete_key(ctx, name)
        note.detail["fingerprint"] = view.fingerprint
    return keypair_read(view)
