"""Parsers of qemu-img's output: pure, no I/O.

``info``, ``check`` and ``measure`` print JSON (``--output=json``); :func:`parse_info`,
:func:`parse_check` and :func:`parse_measure` turn it into frozen dataclasses and raise
``ValueError`` on anything else. :class:`ProgressParser` reads the ``-p`` records of
``convert``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

#: ``qemu-img check`` exit statuses.
CHECK_CLEAN = 0
CHECK_FAILED = 1
CHECK_CORRUPT = 2
CHECK_LEAKS = 3
CHECK_UNSUPPORTED = 63


@dataclass(frozen=True)
class VmdkExtent:
    """One extent of a VMDK image: a file that holds part of its data."""

    #: The extent's file (the image itself for monolithicSparse and streamOptimized).
    filename: str
    #: ``FLAT``, ``SPARSE``, ``VMFS``..., or ``""`` for the image's own sparse extent.
    format: str
    virtual_size: int
    compressed: bool = False


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says about an image."""

    filename: str
    format: str
    virtual_size: int
    #: Bytes allocated on the host; qemu-img omits it for some protocols.
    actual_size: int | None = None
    cluster_size: int | None = None
    #: The backing file as written in the image; ``None`` for a standalone image.
    backing_filename: str | None = None
    #: The backing file's format as written in the image.
    backing_format: str | None = None
    #: qcow2: an external data file that holds the guest data.
    data_file: str | None = None
    encrypted: bool = False
    #: qcow2 with lazy refcounts: the image was not closed cleanly.
    dirty: bool = False
    #: qcow2: QEMU marked the image corrupt.
    corrupt: bool = False
    #: vmdk: ``monolithicSparse``, ``streamOptimized``, ``monolithicFlat``...
    vmdk_create_type: str | None = None
    vmdk_extents: tuple[VmdkExtent, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CheckResult:
    """What ``qemu-img check`` found.

    Exit status 2 means corruptions (data may be lost or wrong), 3 means leaked clusters only
    (wasted space, harmless: a conversion drops them), 63 means the format has no checks.
    """

    #: False when the format has no consistency checks (raw).
    supported: bool
    corruptions: int = 0
    leaks: int = 0
    #: Checks that could not be completed.
    check_errors: int = 0
    image_end_offset: int | None = None

    @property
    def clean(self) -> bool:
        """No corruptions and no incomplete checks (leaks are allowed)."""
        return self.corruptions == 0 and self.check_errors == 0


@dataclass(frozen=True)
class Measure:
    """What ``qemu-img measure`` says a conversion needs."""

    #: Bytes the new image needs for the source's allocated data.
    required: int
    #: Bytes it would need fully allocated.
    fully_allocated: int


def _load_object(text: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _int(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} is not an integer: {value!r}")
    return value


def _required_int(data: Mapping[str, object], key: str) -> int:
    value = _int(data, key)
    if value is None:
        raise ValueError(f"no {key!r}")
    return value


def _str(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string: {value!r}")
    return value


def _bool(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} is not a boolean: {value!r}")
    return value


def _obj(data: Mapping[str, object], key: str) -> dict[str, object]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} is not an object")
    return value


def parse_info(text: str) -> ImageInfo:
    """Parse ``qemu-img info --output=json`` (one image, no ``--backing-chain``).

    :param text: qemu-img's standard output.
    :raise ValueError: it is not the JSON qemu-img prints.
    """
    data = _load_object(text)
    specific = _obj(data, "format-specific")
    spec_type = _str(specific, "type")
    spec_data = _obj(specific, "data")
    data_file = None
    corrupt = False
    create_type = None
    extents: list[VmdkExtent] = []
    if spec_type == "qcow2":
        data_file = _str(spec_data, "data-file")
        corrupt = _bool(spec_data, "corrupt")
    elif spec_type == "vmdk":
        create_type = _str(spec_data, "create-type")
        raw_extents = spec_data.get("extents", [])
        if not isinstance(raw_extents, list):
            raise ValueError("'extents' is not a list")
        for item in raw_extents:
            if not isinstance(item, dict):
                raise ValueError("an extent is not an object")
            extents.append(
                VmdkExtent(
                    filename=_str(item, "filename") or "",
                    format=_str(item, "format") or "",
                    virtual_size=_int(item, "virtual-size") or 0,
                    compressed=_bool(item, "compressed"),
                )
            )
    return ImageInfo(
        filename=_str(data, "filename") or "",
        format=_str(data, "format") or "",
        virtual_size=_required_int(data, "virtual-size"),
        actual_size=_int(data, "actual-size"),
        cluster_size=_int(data, "cluster-size"),
        backing_filename=_str(data, "backing-filename"),
        backing_format=_str(data, "backing-filename-format"),
        data_file=data_file,
        encrypted=_bool(data, "encrypted"),
        dirty=_bool(data, "dirty-flag"),
        corrupt=corrupt,
        vmdk_create_type=create_type,
        vmdk_extents=tuple(extents),
    )


def parse_check(exitcode: int, text: str) -> CheckResult:
    """Interpret ``qemu-img check --output=json``.

    :param exitcode: its exit status: 0, 2 (corruptions), 3 (leaks) or 63 (no checks).
    :param text: its standard output.
    :raise ValueError: another exit status, or output that is not qemu-img's JSON.
    """
    if exitcode == CHECK_UNSUPPORTED:
        return CheckResult(supported=False)
    if exitcode not in (CHECK_CLEAN, CHECK_CORRUPT, CHECK_LEAKS):
        raise ValueError(f"qemu-img check exited with status {exitcode}")
    data = _load_object(text)
    result = CheckResult(
        supported=True,
        corruptions=_int(data, "corruptions") or 0,
        leaks=_int(data, "leaks") or 0,
        check_errors=_int(data, "check-errors") or 0,
        image_end_offset=_int(data, "image-end-offset"),
    )
    if exitcode == CHECK_CORRUPT and result.corruptions == 0:
        raise ValueError("status 2 (corruptions) but no corruptions counted")
    return result


def parse_measure(text: str) -> Measure:
    """Parse ``qemu-img measure --output=json``.

    :param text: its standard output.
    :raise ValueError: it is not qemu-img's JSON.
    """
    data = _load_object(text)
    return Measure(
        required=_required_int(data, "required"),
        fully_allocated=_required_int(data, "fully-allocated"),
    )


class ProgressParser:
    """Turns the ``(12.34/100%)\\r`` records of ``qemu-img convert -p`` into numbers.

    Feed it the output as it arrives, in chunks of any size; it returns each new percentage
    once, in increasing order.
    """

    _RECORD = re.compile(r"\((\d{1,3}(?:\.\d+)?)/100%\)")
    #: A record is short; anything older than this in the buffer can be dropped.
    _KEEP = 64

    def __init__(self) -> None:
        self._buffer = ""
        #: The last percentage returned, -1 before the first.
        self.last = -1.0

    def feed(self, text: str) -> list[float]:
        """Parse the next chunk of output.

        :param text: output as read, possibly ending inside a record.
        :return: the new percentages it completes, increasing, each within 0..100.
        """
        self._buffer += text
        values: list[float] = []
        end = 0
        for match in self._RECORD.finditer(self._buffer):
            end = match.end()
            value = min(float(match.group(1)), 100.0)
            if value > self.last:
                self.last = value
                values.append(value)
        self._buffer = self._buffer[end:][-self._KEEP :]
        return values
