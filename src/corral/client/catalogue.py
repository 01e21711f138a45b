"""Catalogue endpoints: images, instance types, key pairs."""

from __future__ import annotations

from corral.api.schemas import ImageRead, InstanceTypeRead, KeyPairRead, Page
from corral.client.transport import Transport, segment


class CatalogueApi(Transport):
    def list_images(self, limit: int = 100, offset: int = 0) -> Page[ImageRead]:
        return self._get("/images", Page[ImageRead], limit=limit, offset=offset)

    def get_image(self, name: str) -> ImageRead:
        return self._get(f"/images/{segment(name)}", ImageRead)

    def list_types(self, limit: int = 100, offset: int = 0) -> Page[InstanceTypeRead]:
        return self._get("/instance-types", Page[InstanceTypeRead], limit=limit, offset=offset)

    def get_type(self, name: str) -> InstanceTypeRead:
        return self._get(f"/instance-types/{segment(name)}", InstanceTypeRead)

    def list_keypairs(self, limit: int = 100, offset: int = 0) -> Page[KeyPairRead]:
        return self._get("/keypairs", Page[KeyPairRead], limit=limit, offset=offset)

    def get_keypair(self, name: str) -> KeyPairRead:
        return self._get(f"/keypairs/{segment(name)}", KeyPairRead)
