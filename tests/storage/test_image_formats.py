"""Reading image headers ourselves: magic detection and the qcow2 header parser."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.errors import ImageError, InvalidInput
from corral.storage import formats, verify
from corral.storage.formats import parse_qcow2_header, sniff_format
from corral.units import GiB

Tool = Callable[..., str]


def qcow2_header(
    *,
    version: int = 3,
    backing: tuple[int, int] = (0, 0),
    cluster_bits: int = 16,
    size: int = GiB,
    crypt: int = 0,
    incompatible: int = 0,
) -> bytes:
    """A qcow2 header built field by field from the specification."""
    head = struct.pack(
        ">4sIQIIQIIQQIIQ",
        b"QFI\xfb",
        version,
        backing[0],
        backing[1],
        cluster_bits,
        size,
        crypt,
        2,
        0x30000,
        0x10000,
        1,
        0,
        0,
    )
    if version == 3:
        head += struct.pack(">QQQII", incompatible, 0, 0, 4, 104)
    return head


# --- magic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"QFI\xfb\x00\x00\x00\x03" + bytes(100), "qcow2"),
        (b"KDMV\x01\x00\x00\x00" + bytes(100), "vmdk"),
        (b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n', "vmdk"),
        (
            b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(0x40, b"\0") + b"\x7f\x10\xda\xbe",
            "vdi",
        ),
        (bytes(0x40) + b"\x7f\x10\xda\xbe", "vdi"),
        (bytes(512), "raw"),
        (b"\xeb\x63\x90" + bytes(509), "raw"),
        (b"", "raw"),
        (b"QFI", "raw"),
        (b"LUKS\xba\xbe\x00\x01", "raw"),
        (bytes(0x40) + b"\xbe\xda\x10\x7f", "raw"),
        (b"  # Disk DescriptorFile", "raw"),
    ],
)
def test_sniff_format(head: bytes, expected: str) -> None:
    assert sniff_format(head) == expected


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"vhdxfile" + bytes(100), "VHDX"),
        (b"conectix" + bytes(100), "VHD"),
        (b"QFI\x00" + bytes(100), "QED"),
        (b"COWD" + bytes(100), "COWD"),
        (b"WithoutFreeSpace" + bytes(100), "Parallels"),
    ],
)
def test_foreign_formats_are_named(tmp_path: Path, head: bytes, name: str) -> None:
    assert name in (formats.foreign_format(head) or "")
    path = tmp_path / "foreign.img"
    path.write_bytes(head)
    with pytest.raises(ImageError, match=f"{name}.*convert it to qcow2 first"):
        verify.detect_format(path)


def test_detect_format_of_files_made_by_qemu_img(tmp_path: Path, qemu_img: Tool) -> None:
    raw = tmp_path / "a.raw"
    qemu_img("create", "-f", "raw", raw, "8M")
    for fmt, options in [
        ("qcow2", []),
        ("vdi", []),
        ("vmdk", ["-o", "subformat=monolithicSparse"]),
        ("vmdk", ["-o", "subformat=streamOptimized"]),
        ("vmdk", ["-o", "subformat=monolithicFlat"]),
    ]:
        out = tmp_path / f"out-{fmt}-{len(options)}-{options[-1:]}.img".replace("/", "_")
        qemu_img("convert", "-f", "raw", "-O", fmt, *options, raw, out)
        assert verify.detect_format(out) == fmt, (fmt, options)
    assert verify.detect_format(raw) == "raw"


def test_detect_format_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read it"):
        verify.detect_format(tmp_path / "nope")


def test_validate_format() -> None:
    assert formats.validate_format(None) is None
    for fmt in ("raw", "qcow2", "vmdk", "vdi"):
        assert formats.validate_format(fmt) == fmt
    with pytest.raises(InvalidInput) as caught:
        formats.validate_format("vhdx")
    assert caught.value.field == "format"
    assert "raw, qcow2, vmdk, vdi" in caught.value.reason


# --- the qcow2 header -----------------------------------------------------------------------


def test_parse_plain_v3_header() -> None:
    header = parse_qcow2_header(qcow2_header(size=10 * GiB))
    assert header.version == 3
    assert header.size == 10 * GiB
    assert header.cluster_size == 65536
    assert header.l1_table_offset == 0x30000
    assert not header.has_backing_file
    assert not header.has_data_file
    assert not header.encrypted
    assert not header.dirty
    assert not header.corrupt


def test_parse_v2_header_needs_only_72_bytes() -> None:
    data = qcow2_header(version=2, size=5 * GiB)
    assert len(data) == 72
    header = parse_qcow2_header(data)
    assert (header.version, header.size, header.incompatible_features) == (2, 5 * GiB, 0)


def test_parse_header_flags() -> None:
    header = parse_qcow2_header(qcow2_header(backing=(0x1000, 14), crypt=2, incompatible=0b111))
    assert header.has_backing_file
    assert header.backing_file_size == 14
    assert header.encrypted
    assert header.dirty
    assert header.corrupt
    assert header.has_data_file


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"QFI\xfb", "truncated"),
        (qcow2_header()[:80], "version 3 header truncated"),
        (b"QFI\xfa" + qcow2_header()[4:], "no qcow2 magic"),
        (qcow2_header(version=4), "version 4"),
        (qcow2_header(cluster_bits=8), "cluster bits"),
        (qcow2_header(cluster_bits=22), "cluster bits"),
        (qcow2_header(backing=(0x1000, 0)), "backing file name length"),
        (qcow2_header(backing=(0x1000, 5000)), "backing file name length"),
    ],
)
def test_parse_header_refuses_bad_headers(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_qcow2_header(data)


def test_parse_header_of_real_images(tmp_path: Path, qemu_img: Tool) -> None:
    for version, compat in [(2, "0.10"), (3, "1.1")]:
        path = tmp_path / f"v{version}.qcow2"
        qemu_img("create", "-f", "qcow2", "-o", f"compat={compat}", path, "100G")
        header = verify.read_qcow2_header(path)
        assert (header.version, header.size) == (version, 100 * GiB)
    base = tmp_path / "v3.qcow2"
    overlay = tmp_path / "o.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
    header = verify.read_qcow2_header(overlay)
    assert header.has_backing_file
    assert header.size == 100 * GiB
    with overlay.open("rb") as file:
        file.seek(header.backing_file_offset)
        assert file.read(header.backing_file_size) == str(base).encode()
    ext = tmp_path / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'ext.data'}", ext, "1G")
    assert verify.read_qcow2_header(ext).has_data_file
