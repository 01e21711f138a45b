"""Catalogue endpoints: images, instance types, key pairs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from corral.api.schemas import ImageRead, InstanceTypeRead, KeyPairRead, Page, TaskRead
from corral.api.schemas.catalogue import ImageCreate, ImageUpdate, ImageUploadCreate, KeyPairCreate
from corral.client.transport import Transport, segment

T = TypeVar("T")

#: Items per request when a whole listing is read.
PAGE = 1000


def every(fetch: Callable[[int, int], Page[T]]) -> list[T]:
    """All items of a listing, page by page: ``fetch(limit, offset)`` reads one page."""
    items: list[T] = []
    while True:
        got = fetch(PAGE, len(items))
        items.extend(got.items)
        if not got.items or len(items) >= got.total:
            return items


class CatalogueApi(Transport):
    @property
    def on_host(self) -> bool:
        """Whether the daemon is reached over its UNIX socket, so runs on this machine (the
        address of a TCP daemon is its URL)."""
        return not self.address.startswith(("http://", "https://"))

    # -- images ------------------------------------------------------------------------------

    def list_images(self, limit: int = 100, offset: int = 0) -> Page[ImageRead]:
        return self._get("/images", Page[ImageRead], limit=limit, offset=offset)

    def all_images(self) -> list[ImageRead]:
        return every(self.list_images)

    def get_image(self, name: str) -> ImageRead:
        return self._get(f"/images/{segment(name)}", ImageRead)

    def import_image(self, body: ImageCreate) -> TaskRead:
        """Import a file on the daemon's host (admins only): the task that converts it."""
        return self._post("/images", TaskRead, body.model_dump(exclude_none=True))

    def upload_image(
        self,
        name: str,
        file: Path,
        options: ImageUploadCreate,
        sent: Callable[[int], None] | None = None,
    ) -> TaskRead:
        """Send ``file`` as image ``name``: the task that converts it.

        :param sent: told the bytes sent so far, after each piece.
        :raise InvalidInput: ``file`` cannot be read (field ``file``).
        """
        params: dict[str, Any] = options.model_dump(exclude_none=True)
        answer = self._upload(f"/images/{segment(name)}/file", file, params, sent)
        return TaskRead.model_validate(answer.json())

    def update_image(self, name: str, body: ImageUpdate) -> ImageRead:
        return self._patch(
            f"/images/{segment(name)}", ImageRead, body.model_dump(exclude_unset=True)
        )

    def delete_image(self, name: str) -> ImageRead:
        """Delete an image no VM uses: the image as it was."""
        deleted = self._delete(f"/images/{segment(name)}", ImageRead)
        assert deleted is not None
        return deleted

    # -- instance types ----------------------------------------------------------------------

    def list_types(self, limit: int = 100, offset: int = 0) -> Page[InstanceTypeRead]:
        return self._get("/instance-types", Page[InstanceTypeRead], limit=limit, offset=offset)

    def all_types(self) -> list[InstanceTypeRead]:
        return every(self.list_types)

    def get_type(self, name: str) -> InstanceTypeRead:
        return self._get(f"/instance-types/{segment(name)}", InstanceTypeRead)

    # -- key pairs ---------------------------------------------------------------------------

    def list_keypairs(self, limit: int = 100, offset: int = 0) -> Page[KeyPairRead]:
        return self._get("/keypairs", Page[KeyPairRead], limit=limit, offset=offset)

    def all_keypairs(self) -> list[KeyPairRead]:
        return every(self.list_keypairs)

    def get_keypair(self, name: str) -> KeyPairRead:
        return self._get(f"/keypairs/{segment(name)}", KeyPairRead)

    def create_keypair(self, body: KeyPairCreate) -> KeyPairRead:
        """Register a public key (the private key never leaves this machine)."""
        return self._post("/keypairs", KeyPairRead, body.model_dump(exclude_none=True))

    def delete_keypair(self, name: str) -> KeyPairRead:
        """Forget a key pair: the key pair as it was."""
        deleted = self._delete(f"/keypairs/{segment(name)}", KeyPairRead)
        assert deleted is not None
        return deleted
