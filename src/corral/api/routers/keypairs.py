"""``/keypairs``: public keys that launches install (private keys are never known here)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from corral.api.auth import PrincipalDep
from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import ERRORS, NOT_FOUND, KeyPairRead, Page
from corral.api.tenancy import require_visible, visible_names
from corral.compute.keys import KeyPairView
from corral.spec.keys import KEY_NAME_PATTERN

router = APIRouter(prefix="/keypairs", tags=["key pairs"], responses=ERRORS)

KeyName = Annotated[str, Path(pattern=KEY_NAME_PATTERN, description="The key pair's name.")]


def keypair_read(view: KeyPairView) -> KeyPairRead:
    return KeyPairRead(
        name=view.name,
        project=view.project,
        kind=view.kind,
        bits=view.bits,
        fingerprint=view.fingerprint,
        comment=view.comment,
        public_key=view.public_key,
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
