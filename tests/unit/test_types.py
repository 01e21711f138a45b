"""Instance types: the shipped ladder, the user's TOML file and its errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from corral.compute.types import SHIPPED, get_type, list_types, load_types_file, types_file
from corral.config import Home
from corral.errors import InvalidInput, NotFound
from corral.spec.cloud import InstanceType
from corral.units import GiB, MiB

DB_LARGE = """
[[instance_type]]
name = "db.large"
vcpus = 4
memory = "8G"
disk = "100G"
price_per_hour = "0.20"
description = "Database server"
"""


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


def write(home: Home, text: str) -> Path:
    path = types_file(home)
    path.write_text(text)
    return path


def refused(home: Home, text: str) -> InvalidInput:
    write(home, text)
    with pytest.raises(InvalidInput) as err:
        list_types(home)
    return err.value


def test_shipped_ladder(home: Home) -> None:
    micro = get_type(home, "t1.micro")
    assert (micro.vcpus, micro.memory, micro.disk) == (1, 512 * MiB, 4 * GiB)
    assert micro.price_per_hour == Decimal("0.0058")
    assert micro.price_per_month == Decimal("4.23")
    assert micro.source == "shipped"
    assert micro.description
    assert len({t.name for t in SHIPPED}) == len(SHIPPED)
    assert all(t.description and t.currency == "USD" for t in SHIPPED)


def test_without_a_file_the_list_is_the_shipped_types_by_family_then_size(home: Home) -> None:
    names = [t.name for t in list_types(home)]
    assert sorted(names) == sorted(t.name for t in SHIPPED)
    assert names[-3:] == ["t1.nano", "t1.micro", "t1.small"]
    assert names.index("m1.medium") < names.index("m1.large") < names.index("m1.xlarge")
    families = [n.split(".")[0] for n in names]
    assert families == sorted(families)


def test_user_types_are_added_with_their_source(home: Home) -> None:
    path = write(
        home,
        DB_LARGE + '\n[[instance_type]]\nname = "db.small"\nvcpus = 1\n'
        'memory = 768\ndisk = "10G"\nprice_per_hour = 0.05\n',
    )
    types = {t.name: t for t in list_types(home)}
    large = types["db.large"]
    assert (large.vcpus, large.memory, large.disk) == (4, 8 * GiB, 100 * GiB)
    assert large.price_per_hour == Decimal("0.20")
    assert large.source == str(path)
    small = types["db.small"]
    assert small.memory == 768 * MiB  # a bare number means MiB
    assert small.price_per_hour == Decimal("0.05")
    assert list(types).index("db.small") < list(types).index("db.large")
    assert get_type(home, "db.large") == large


def test_user_type_overrides_a_shipped_one(home: Home) -> None:
    path = write(
        home,
        '[[instance_type]]\nname = "t1.micro"\nvcpus = 2\nmemory = "1G"\n'
        'disk = "10G"\nprice_per_hour = "0"\ncurrency = "EUR"\n',
    )
    micros = [t for t in list_types(home) if t.name == "t1.micro"]
    assert len(micros) == 1
    assert (micros[0].vcpus, micros[0].currency, micros[0].source) == (2, "EUR", str(path))
    assert get_type(home, "t1.micro").price_per_hour == 0


def test_an_empty_file_is_fine(home: Home) -> None:
    write(home, "# nothing yet\n")
    assert len(list_types(home)) == len(SHIPPED)


def test_bad_field_names_file_entry_and_field(home: Home) -> None:
    err = refused(home, DB_LARGE.replace('"8G"', '"8X"'))
    path = types_file(home)
    assert err.field == f"{path}: entry 1 (db.large): memory"
    assert "unknown unit 'X'" in err.reason
    assert str(err).startswith(f"{path}: entry 1 (db.large): memory: ")


def test_bad_toml_syntax_names_the_file_and_line(home: Home) -> None:
    err = refused(home, '[[instance_type]]\nname = "x.y\n')
    assert err.field == str(types_file(home))
    assert "not valid TOML" in err.reason
    assert "line 2" in err.reason


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        (DB_LARGE + "colour = 'red'\n", "colour", "is not a field of an instance type; allowed:"),
        (DB_LARGE.replace("vcpus = 4\n", ""), "vcpus", "is required"),
        (DB_LARGE.replace("vcpus = 4", "vcpus = 0"), "vcpus", "greater than or equal to 1"),
        (DB_LARGE.replace("vcpus = 4", "vcpus = true"), "vcpus", "not true or false"),
        (DB_LARGE.replace('"100G"', "100"), "disk", "has no unit"),
        (DB_LARGE.replace('"100G"', '"1M"'), "disk", "between 64 MiB and 64 TiB"),
        (DB_LARGE.replace('"8G"', '"8K"'), "memory", "whole number of MiB"),
        (DB_LARGE.replace('"0.20"', '"-1"'), "price_per_hour", "greater than or equal to 0"),
        (DB_LARGE.replace('"0.20"', '"0.1234567"'), "price_per_hour", "6 decimal places"),
        (DB_LARGE + "source = 'x'\n", "source", "set by corral"),
        (DB_LARGE + "currency = 'dollars'\n", "currency", "must match"),
    ],
)
def test_bad_entries(home: Home, text: str, field: str, reason: str) -> None:
    err = refused(home, text)
    assert err.field == f"{types_file(home)}: entry 1 (db.large): {field}"
    assert reason in err.reason


def test_bad_names_and_duplicates(home: Home) -> None:
    err = refused(home, DB_LARGE.replace('"db.large"', '"DB"'))
    assert err.field.endswith("entry 1 (DB): name")
    assert "family, a dot and a size" in err.reason
    err = refused(home, DB_LARGE + DB_LARGE)
    assert err.field.endswith("entry 2 (db.large): name")
    assert "already defined by entry 1" in err.reason


def test_bad_file_structure(home: Home) -> None:
    err = refused(home, "instance_type = 3\n")
    assert "array of tables" in err.reason
    err = refused(home, "[[flavor]]\nname = 'a.b'\n")
    assert "unknown top-level key 'flavor'" in err.reason


def test_undecodable_or_unreadable_file(home: Home) -> None:
    types_file(home).write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        list_types(home)
    types_file(home).unlink()
    types_file(home).mkdir()
    with pytest.raises(InvalidInput, match="cannot be read"):
        list_types(home)


def test_load_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_types_file(tmp_path / "absent.toml") == []


def test_unknown_type_lists_the_known_ones(home: Home) -> None:
    write(home, DB_LARGE)
    with pytest.raises(NotFound) as err:
        get_type(home, "t9.huge")
    message = str(err.value)
    assert message.startswith("instance type 't9.huge' not found; known types: c1.large, ")
    assert "db.large" in message
    assert "t1.micro" in message
    assert str(types_file(home)) in message
    assert (err.value.kind, err.value.name) == ("instance type", "t9.huge")


def test_not_found_without_hint_is_unchanged() -> None:
    assert str(NotFound("vm", "x")) == "vm 'x' not found"
    assert NotFound("vm", "x").hint == ""


def test_model_refuses_multiline_description() -> None:
    with pytest.raises(ValueError, match="one line"):
        InstanceType(
            name="a.b",
            vcpus=1,
            memory=512 * MiB,
            disk=GiB,
            price_per_hour=Decimal(0),
            description="two\nlines",
        )
