"""The catalogue of instance types: corral's shipped ladder plus the user's own.

The user's types live in ``$CORRAL_HOME/instance-types.toml``, one ``[[instance_type]]`` table
each::

    [[instance_type]]
    name = "db.large"
    vcpus = 4
    memory = "8G"          # a bare number means MiB
    disk = "100G"          # a unit is required
    price_per_hour = "0.20"
    currency = "USD"       # optional
    description = "Database server"

A user type adds a name or replaces the shipped type of the same name whole; its ``source`` is
the file's path. A missing file is no error; a bad one is an :class:`InvalidInput` naming the
file, the entry (number and name) and the field. The file is read on every call: an edit takes
effect at the next command.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral.config import Home
from corral.errors import InvalidInput, NotFound
from corral.spec import invalid_input
from corral.spec.cloud import InstanceType

#: The user's file of instance types, in the state directory.
TYPES_FILE_NAME = "instance-types.toml"
_TABLE = "instance_type"


def _shipped(
    name: str, vcpus: int, memory: str, disk: str, price: str, description: str
) -> InstanceType:
    return InstanceType(
        name=name,
        vcpus=vcpus,
        memory=memory,
        disk=disk,
        price_per_hour=Decimal(price),
        description=description,
    )


#: corral's own types: a ladder sized for a self-hosted QEMU host. Prices are notional
#: (for show-back), about 0.0116 USD per GiB-hour like small cloud instances.
SHIPPED: tuple[InstanceType, ...] = (
    _shipped("t1.nano", 1, "256M", "2G", "0.0029", "Smallest: a test guest or one tiny daemon"),
    _shipped("t1.micro", 1, "512M", "4G", "0.0058", "A small service; good for trials"),
    _shipped("t1.small", 1, "1G", "8G", "0.0116", "A light web or application server"),
    _shipped("m1.medium", 2, "2G", "20G", "0.0232", "General purpose"),
    _shipped("m1.large", 2, "4G", "40G", "0.0464", "General purpose"),
    _shipped("m1.xlarge", 4, "8G", "80G", "0.0928", "General purpose"),
    _shipped("c1.large", 4, "4G", "40G", "0.0680", "Compute: more vCPUs per GiB"),
    _shipped("c1.xlarge", 8, "8G", "80G", "0.1360", "Compute: more vCPUs per GiB"),
    _shipped("r1.large", 2, "8G", "40G", "0.0740", "Memory: more GiB per vCPU"),
)


def types_file(home: Home) -> Path:
    """Where the user's instance types are read from."""
    return home.root / TYPES_FILE_NAME


def _sort_key(itype: InstanceType) -> tuple[str, int, int, int, str]:
    """Family, then size: memory, vCPUs and disk up the ladder."""
    return (itype.family, itype.memory, itype.vcpus, itype.disk, itype.name)


def list_types(home: Home) -> list[InstanceType]:
    """Every instance type, shipped and the user's, by family and then size.

    :raise InvalidInput: the user's file is not valid (naming the file, entry and field).
    """
    merged = {itype.name: itype for itype in SHIPPED}
    for itype in load_types_file(types_file(home)):
        merged[itype.name] = itype
    return sorted(merged.values(), key=_sort_key)


def get_type(home: Home, name: str) -> InstanceType:
    """The instance type called ``name``.

    :raise NotFound: no such type (the message lists the known ones).
    :raise InvalidInput: the user's file is not valid.
    """
    types = list_types(home)
    for itype in types:
        if itype.name == name:
            return itype
    raise NotFound(
        "instance type",
        name,
        f"known types: {', '.join(t.name for t in types)} (add your own in {types_file(home)})",
    )


def load_types_file(path: Path) -> list[InstanceType]:
    """The types defined in ``path``, in file order; none if the file does not exist.

    :raise InvalidInput: the file cannot be read, is not TOML, or an entry is not a valid
        type; the field names the file and, for an entry, its number (from 1), name and field.
    """
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InvalidInput(where, f"cannot be read: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(where, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(where, f"is not valid TOML: {exc}") from None
    for key in document:
        if key != _TABLE:
            raise InvalidInput(
                where,
                f"unknown top-level key {key!r}; the file holds [[{_TABLE}]] tables only",
            )
    entries = document.get(_TABLE, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInput(
            where, f"{_TABLE} must be an array of tables: write each type as [[{_TABLE}]]"
        )
    types: list[InstanceType] = []
    first_entry: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        itype = _entry(path, number, entry)
        if itype.name in first_entry:
            raise InvalidInput(
                _label(path, number, entry) + "name",
                f"{itype.name!r} is already defined by entry {first_entry[itype.name]}",
            )
        first_entry[itype.name] = number
        types.append(itype)
    return types


def _label(path: Path, number: int, entry: dict[str, Any]) -> str:
    name = entry.get("name")
    named = f" ({name})" if isinstance(name, str) and name.isprintable() and len(name) < 64 else ""
    return f"{path}: entry {number}{named}: "


def _entry(path: Path, number: int, entry: dict[str, Any]) -> InstanceType:
    """One ``[[instance_type]]`` table as a type whose source is ``path``."""
    label = _label(path, number, entry)
    if "source" in entry:
        raise InvalidInput(label + "source", "is set by corral (the file a type comes from)")
    disk = entry.get("disk")
    if isinstance(disk, int | float) and not isinstance(disk, bool):
        raise InvalidInput(
            label + "disk", f'{disk!r} has no unit; write a size with one, such as "20G"'
        )
    for field in ("vcpus", "memory"):
        if isinstance(entry.get(field), bool):
            raise InvalidInput(label + field, "must be a number, not true or false")
    try:
        return InstanceType.model_validate({**entry, "source": str(path)})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        problem = invalid_input(exc)
        field = problem.field
        reason = problem.reason
        if first["type"] == "missing":
            reason = "is required"
        elif first["type"] == "extra_forbidden":
            allowed = ", ".join(f for f in InstanceType.model_fields if f != "source")
            reason = f"is not a field of an instance type; allowed: {allowed}"
        elif field == "name":
            reason = (
                f"{entry.get('name')!r} is not allowed; a type's name is a family, a dot and a "
                "size, in lower case (t1.micro, db.large)"
            )
        raise InvalidInput(label + field, reason) from None
