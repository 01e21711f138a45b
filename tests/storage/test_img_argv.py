"""The pure half of corral.qemu.img: argv builders (corral.qemu.img_argv, and
runner.limited_argv) and output parsers (corral.qemu.img_parse); no qemu-img needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.qemu import img_argv, img_parse, runner
from corral.units import GiB

# --- builders -------------------------------------------------------------------------------


def test_info_always_names_the_format_forces_share_and_prints_json() -> None:
    assert img_argv.info_argv("/images/a.qcow2", "qcow2") == [
        "qemu-img",
        "info",
        "--output=json",
        "--force-share",
        "-f",
        "qcow2",
        "/images/a.qcow2",
    ]


def test_check_is_json_read_only_with_format() -> None:
    argv = img_argv.check_argv(Path("/x/a.vmdk"), "vmdk")
    assert argv == ["qemu-img", "check", "--output=json", "-f", "vmdk", "/x/a.vmdk"]
    assert "-r" not in argv


def test_measure_names_both_formats() -> None:
    assert img_argv.measure_argv("/a.raw", "raw") == [
        "qemu-img",
        "measure",
        "--output=json",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "/a.raw",
    ]


@pytest.mark.parametrize(
    ("given", "passed"),
    [
        ("/abs/disk.qcow2", "/abs/disk.qcow2"),
        ("disk.qcow2", "./disk.qcow2"),
        ("-o", "./-o"),
        ('json:{"driver":"raw"}', './json:{"driver":"raw"}'),
        ("nbd:localhost:10809", "./nbd:localhost:10809"),
        (Path("rel/x.raw"), "./rel/x.raw"),
    ],
)
def test_file_names_cannot_be_read_as_options_or_protocols(given: str | Path, passed: str) -> None:
    assert img_argv.safe_path(given) == passed
    assert img_argv.info_argv(given, "raw")[-1] == passed


@pytest.mark.parametrize("bad", ["", "a\0b"])
def test_unusable_file_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        img_argv.safe_path(bad)


def test_create_plain() -> None:
    assert img_argv.create_argv("/d/blank.qcow2", "qcow2", 10 * GiB) == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "/d/blank.qcow2",
        str(10 * GiB),
    ]


def test_create_with_backing_names_the_backing_format() -> None:
    argv = img_argv.create_argv("/d/o.qcow2", "qcow2", None, "/i/base.qcow2", "qcow2")
    assert argv == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/i/base.qcow2",
        "-F",
        "qcow2",
        "/d/o.qcow2",
    ]


def test_create_refuses_backing_without_format() -> None:
    with pytest.raises(ValueError, match="must not guess"):
        img_argv.create_argv("/d/o.qcow2", "qcow2", None, "/i/base.qcow2")


def test_create_refuses_backing_format_without_backing() -> None:
    with pytest.raises(ValueError, match="without a backing file"):
        img_argv.create_argv("/d/o.qcow2", "qcow2", 1024, backing_fmt="qcow2")


def test_create_needs_a_size_without_backing() -> None:
    with pytest.raises(ValueError, match="needs a size"):
        img_argv.create_argv("/d/o.qcow2", "qcow2", None)


@pytest.mark.parametrize("size", [-1, True, 1.5])
def test_sizes_are_whole_non_negative_bytes(size: object) -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        img_argv.create_argv("/d/o.qcow2", "qcow2", size)  # type: ignore[arg-type]


def test_overlay_is_qcow2_on_a_named_base_format_with_optional_size() -> None:
    argv = img_argv.create_overlay_argv("/v/disk.qcow2", "/i/base.qcow2")
    assert argv[argv.index("-f") + 1] == "qcow2"
    assert argv[argv.index("-b") + 1] == "/i/base.qcow2"
    assert argv[argv.index("-F") + 1] == "qcow2"
    assert argv[-1] == "/v/disk.qcow2"
    grown = img_argv.create_overlay_argv("/v/disk.qcow2", "/i/base.qcow2", size=20 * GiB)
    assert grown[-2:] == ["/v/disk.qcow2", str(20 * GiB)]


def test_convert_with_progress_and_out_of_order_writes() -> None:
    assert img_argv.convert_argv("/u/a.vmdk", "vmdk", "/i/.a.part", "qcow2", progress=True) == [
        "qemu-img",
        "convert",
        "-p",
        "-W",
        "-f",
        "vmdk",
        "-O",
        "qcow2",
        "/u/a.vmdk",
        "/i/.a.part",
    ]


def test_convert_quiet_in_order() -> None:
    argv = img_argv.convert_argv("/a.raw", "raw", "/b.qcow2", out_of_order=False)
    assert argv == ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "/a.raw", "/b.qcow2"]


def test_resize_never_shrinks_silently() -> None:
    argv = img_argv.resize_argv("/v/d.qcow2", "qcow2", 4 * GiB)
    assert argv == ["qemu-img", "resize", "-q", "-f", "qcow2", "/v/d.qcow2", str(4 * GiB)]
    assert "--shrink" not in argv


def test_every_builder_names_the_format() -> None:
    argvs = [
        img_argv.info_argv("/a", "raw"),
        img_argv.check_argv("/a", "raw"),
        img_argv.measure_argv("/a", "raw"),
        img_argv.create_argv("/a", "raw", 512),
        img_argv.create_overlay_argv("/a", "/b"),
        img_argv.convert_argv("/a", "raw", "/b"),
        img_argv.resize_argv("/a", "raw", 512),
    ]
    for argv in argvs:
        assert "-f" in argv, argv


def test_limited_argv_puts_prlimit_in_front() -> None:
    limits = runner.Limits(address_space=GiB, cpu_seconds=30, timeout=60)
    argv = runner.limited_argv(["qemu-img", "info"], limits, "/usr/bin/prlimit")
    assert argv == [
        "/usr/bin/prlimit",
        f"--as={GiB}",
        "--cpu=30:35",
        "--core=0",
        "--",
        "qemu-img",
        "info",
    ]


# --- parsers --------------------------------------------------------------------------------

QCOW2_OVERLAY_INFO = {
    "backing-filename-format": "qcow2",
    "virtual-size": 1073741824,
    "filename": "ov.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": False,
            "refcount-bits": 16,
            "corrupt": False,
            "extended-l2": False,
        },
    },
    "full-backing-filename": "/tmp/base.qcow2",
    "backing-filename": "/tmp/base.qcow2",
    "dirty-flag": False,
}

QCOW2_DATA_FILE_INFO = {
    "virtual-size": 1073741824,
    "filename": "ext.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {"compat": "1.1", "data-file": "base.data", "corrupt": True},
    },
    "encrypted": True,
    "dirty-flag": True,
}

VMDK_FLAT_INFO = {
    "virtual-size": 1073741824,
    "filename": "flat.vmdk",
    "format": "vmdk",
    "actual-size": 8192,
    "format-specific": {
        "type": "vmdk",
        "data": {
            "cid": 3269674904,
            "parent-cid": 4294967295,
            "create-type": "monolithicFlat",
            "extents": [
                {"virtual-size": 1073741824, "filename": "flat-flat.vmdk", "format": "FLAT"}
            ],
        },
    },
    "dirty-flag": False,
}


def test_parse_info_of_an_overlay() -> None:
    info = img_parse.parse_info(json.dumps(QCOW2_OVERLAY_INFO))
    assert info == img_parse.ImageInfo(
        filename="ov.qcow2",
        format="qcow2",
        virtual_size=GiB,
        actual_size=200704,
        cluster_size=65536,
        backing_filename="/tmp/base.qcow2",
        backing_format="qcow2",
    )


def test_parse_info_data_file_encryption_flags() -> None:
    info = img_parse.parse_info(json.dumps(QCOW2_DATA_FILE_INFO))
    assert info.data_file == "base.data"
    assert info.encrypted
    assert info.dirty
    assert info.corrupt
    assert info.backing_filename is None


def test_parse_info_vmdk_extents() -> None:
    info = img_parse.parse_info(json.dumps(VMDK_FLAT_INFO))
    assert info.vmdk_create_type == "monolithicFlat"
    assert info.vmdk_extents == (
        img_parse.VmdkExtent(filename="flat-flat.vmdk", format="FLAT", virtual_size=GiB),
    )
    assert info.cluster_size is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        json.dumps({"virtual-size": "big"}),
        json.dumps({"virtual-size": True}),
        json.dumps({"virtual-size": 1, "backing-filename": 3}),
        json.dumps({"virtual-size": 1, "format-specific": []}),
        json.dumps(
            {"virtual-size": 1, "format-specific": {"type": "vmdk", "data": {"extents": {}}}}
        ),
    ],
)
def test_parse_info_refuses_unexpected_output(text: str) -> None:
    with pytest.raises(ValueError):
        img_parse.parse_info(text)


def test_parse_check_clean_corrupt_leaky_unsupported() -> None:
    clean = img_parse.parse_check(0, '{"check-errors": 0, "image-end-offset": 262144}')
    assert clean == img_parse.CheckResult(supported=True, image_end_offset=262144)
    assert clean.clean
    corrupt = img_parse.parse_check(2, '{"corruptions": 53, "check-errors": 0}')
    assert corrupt.corruptions == 53
    assert not corrupt.clean
    leaky = img_parse.parse_check(3, '{"leaks": 4, "check-errors": 0}')
    assert leaky.leaks == 4
    assert leaky.clean
    unsupported = img_parse.parse_check(63, "")
    assert not unsupported.supported


@pytest.mark.parametrize(("code", "text"), [(1, "{}"), (2, '{"corruptions": 0}'), (0, "x")])
def test_parse_check_refuses_failures_and_inconsistent_output(code: int, text: str) -> None:
    with pytest.raises(ValueError):
        img_parse.parse_check(code, text)


def test_parse_measure() -> None:
    assert img_parse.parse_measure('{"required": 67436544, "fully-allocated": 67436544}') == (
        img_parse.Measure(required=67436544, fully_allocated=67436544)
    )
    with pytest.raises(ValueError):
        img_parse.parse_measure('{"required": 1}')


# --- progress -------------------------------------------------------------------------------


def test_progress_records_in_one_chunk() -> None:
    parser = img_parse.ProgressParser()
    text = "    (0.00/100%)\r    (3.12/100%)\r    (6.25/100%)\r"
    assert parser.feed(text) == [0.0, 3.12, 6.25]
    assert parser.last == 6.25


def test_progress_records_split_anywhere() -> None:
    text = "    (0.00/100%)\r    (12.34/100%)\r    (100.00/100%)\r"
    for cut in range(len(text) + 1):
        parser = img_parse.ProgressParser()
        values = parser.feed(text[:cut]) + parser.feed(text[cut:])
        assert values == [0.0, 12.34, 100.0], cut


def test_progress_one_byte_at_a_time() -> None:
    parser = img_parse.ProgressParser()
    values: list[float] = []
    for char in "    (1.00/100%)\r    (50.00/100%)\r":
        values += parser.feed(char)
    assert values == [1.0, 50.0]


def test_progress_is_reported_once_and_never_backwards() -> None:
    parser = img_parse.ProgressParser()
    assert parser.feed("(5.00/100%)\r(5.00/100%)\r(4.00/100%)\r(7.5/100%)\r") == [5.0, 7.5]


def test_progress_ignores_noise_and_clamps() -> None:
    parser = img_parse.ProgressParser()
    assert parser.feed("garbage (x/100%) (100%)\n(250.00/100%)\r") == [100.0]


def test_progress_buffer_stays_small() -> None:
    parser = img_parse.ProgressParser()
    parser.feed("x" * 100_000)
    assert parser.feed("(1.00/100%)") == [1.0]
    assert len(parser._buffer) <= 64
