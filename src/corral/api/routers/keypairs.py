"""``/keypairs``: public keys that launches install (private keys are never known here)."""

from __future__ import annotations

from fastapi import APIRouter

from corral.api.deps import CorralDep
from corral.api.routers.paging import Limit, Offset, page
from corral.api.schemas import NOT_FOUND, KeyPairRead, Page
from corral.compute.keys import KeyPairView

router = APIRouter(prefix="/keypairs", tags=["key pairs"])


def keypair_read(view: KeyPairView) -> KeyPairRead:
    return KeyPairRead(
        name=view.name,
        kind=view.kind,
        bits=view.bits,
        fingerprint=view.fingerprint,
        comment=view.comment,
        public_key=view.public_key,
        created_at=view.created_at,
    )


@router.get("")
def list_keypairs(ctx: CorralDep, limit: Limit = 100, offset: Offset = 0) -> Page[KeyPairRead]:
    """Key pairs by name."""
    from corral.compute.keys import list_keys

    return page([keypair_read(v) for v in list_keys(ctx)], limit, offset)


@router.get("/{name}", responses=NOT_FOUND)
def get_keypair(ctx: CorralDep, name: str) -> KeyPairRead:
    """One key pair."""
    from corral.compute.keys import get_key

    return keypair_read(get_key(ctx, name))
