"""Cloud-style provisioning's vocabulary: instance types (flavors) and what a launch asks for.

Pure models; the catalogue of types (shipped defaults plus ``instance-types.toml``) lives in
:mod:`corral.compute.types`.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from corral.spec.vm import MAX_DISK, MAX_MEMORY, MAX_VCPUS, MIN_MEMORY, DiskSize, MemorySize
from corral.units import GiB, MiB

#: An instance type's name: a family, a dot, a size (``t1.micro``, ``m1.large``).
TYPE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,15}\.[a-z0-9][a-z0-9-]{0,23}$"
#: Hours in the month that monthly prices assume (365 * 24 / 12, as cloud price lists do).
HOURS_PER_MONTH = 730


class InstanceType(BaseModel):
    """A flavor: the size of an instance and what an hour of it costs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TYPE_NAME_PATTERN)
    vcpus: int = Field(ge=1, le=MAX_VCPUS)
    #: Memory in bytes (a bare number in a TOML file means MiB).
    memory: MemorySize
    #: Root disk size in bytes: the clone of the image is grown to it.
    disk: DiskSize
    #: Price of one hour of a running instance, in :attr:`currency`.
    price_per_hour: Decimal = Field(ge=0, max_digits=12, decimal_places=6)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    description: str = Field(default="", max_length=200)
    #: ``shipped`` for corral's defaults; the TOML file's path for the user's own.
    source: str = "shipped"

    @field_validator("memory")
    @classmethod
    def check_memory(cls, value: int) -> int:
        if value % MiB or value < MIN_MEMORY or value > MAX_MEMORY:
            raise ValueError("must be a whole number of MiB between 16 MiB and 4 TiB")
        return value

    @field_validator("disk")
    @classmethod
    def check_disk(cls, value: int) -> int:
        if value % MiB or value < 64 * MiB or value > MAX_DISK:
            raise ValueError("must be a whole number of MiB between 64 MiB and 64 TiB")
        return value

    @field_validator("description")
    @classmethod
    def check_description(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be one line of printable text")
        return value

    @field_serializer("price_per_hour")
    def dump_price(self, value: Decimal) -> str:
        return str(value)

    @property
    def memory_mib(self) -> int:
        return self.memory // MiB

    @property
    def disk_gib(self) -> float:
        return self.disk / GiB

    @property
    def family(self) -> str:
        """The part before the dot: ``t1`` of ``t1.micro``."""
        return self.name.partition(".")[0]

    @property
    def size(self) -> str:
        """The part after the dot: ``micro`` of ``t1.micro``."""
        return self.name.partition(".")[2]

    @property
    def price_per_month(self) -> Decimal:
        """The price of :data:`HOURS_PER_MONTH` hours, to the cent."""
        return (self.price_per_hour * HOURS_PER_MONTH).quantize(Decimal("0.01"))
