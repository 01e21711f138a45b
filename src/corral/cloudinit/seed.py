"""The NoCloud seed: an ISO 9660 volume labelled ``cidata`` that carries the instance's data.

cloud-init's NoCloud data source looks for a filesystem labelled ``cidata`` (or ``CIDATA``)
and reads ``meta-data``, ``user-data``, ``vendor-data`` and ``network-config`` from its root.
:func:`write_seed` makes that volume with pycdlib, the way ``cloud-localds`` does with
``genisoimage -volid cidata -joliet -rock``: ISO 9660 (interchange level 3) names
(``META_DATA.;1``), with Rock Ridge and Joliet names that are the exact NoCloud names, so
Linux's isofs (Rock Ridge first, Joliet without it), blkid and cloud-init all see
``meta-data`` and the label ``cidata``.

The image is deterministic: every date in it is :data:`SEED_EPOCH` in UTC, so the same files
give the same bytes, whatever the clock and the time zone.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pycdlib
from pycdlib import dates

from corral.errors import InvalidInput
from corral.guest.tools import write_atomic

#: The volume identifier NoCloud looks for.
VOLUME_ID = "cidata"
#: The files a NoCloud seed may carry, with their ISO 9660 (level 3) names.
SEED_FILES: Mapping[str, str] = {
    "meta-data": "META_DATA.;1",
    "user-data": "USER_DATA.;1",
    "vendor-data": "VENDOR_DATA.;1",
    "network-config": "NETWORK_CONFIG.;1",
}
#: The files a seed must carry.
REQUIRED_FILES = ("meta-data", "user-data")
#: The largest total size of the files in a seed.
MAX_SEED_BYTES = 16 * 1024 * 1024
#: Every date in a seed (2024-01-01T00:00:00Z), for reproducible images.
SEED_EPOCH = 1_704_067_200
#: The Rock Ridge mode of the files (read-only media).
_FILE_MODE = 0o100444
#: ISO 9660 sector size.
_SECTOR = 2048
#: Offset of the volume modification date in a volume descriptor.
_VD_MODIFIED = 830


def write_seed(path: Path, files: Mapping[str, bytes]) -> None:
    """Write a NoCloud seed ISO holding ``files``, atomically (mode 0644).

    The image is first written to a temporary file next to ``path``, synced, then renamed over
    ``path``; on failure nothing is left behind and an existing ``path`` is untouched.

    :param path: the image to write; its directory must exist.
    :param files: file name -> content; names from :data:`SEED_FILES`, ``meta-data`` and
        ``user-data`` required (cloud-init needs both, even if empty).
    :raise InvalidInput: a name that NoCloud does not read, a required file missing, or more
        than :data:`MAX_SEED_BYTES` in all (field ``seed``).
    :raise OSError: the image could not be written.
    """
    write_atomic(path, build_seed(files))
    _fsync_dir(path.parent)


def build_seed(files: Mapping[str, bytes]) -> bytes:
    """The bytes of a NoCloud seed ISO holding ``files`` (see :func:`write_seed`).

    :param files: file name -> content, as for :func:`write_seed`.
    :raise InvalidInput: as for :func:`write_seed`.
    """
    _check_files(files)
    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=3,
        sys_ident="LINUX",
        vol_ident=VOLUME_ID,
        app_ident_str="corral",
        joliet=3,
        rock_ridge="1.09",
    )
    try:
        for name in sorted(files, key=list(SEED_FILES).index):
            content = files[name]
            iso.add_fp(
                io.BytesIO(content),
                len(content),
                iso_path=f"/{SEED_FILES[name]}",
                rr_name=name,
                joliet_path=f"/{name}",
                file_mode=_FILE_MODE,
            )
        _pin_dates(iso)
        out = io.BytesIO()
        iso.write_fp(out)
        return _pin_modification_dates(out.getbuffer())
    finally:
        iso.close()


def _check_files(files: Mapping[str, bytes]) -> None:
    unknown = sorted(set(files) - set(SEED_FILES))
    if unknown:
        raise InvalidInput(
            "seed",
            f"NoCloud reads no file named {', '.join(unknown)}; allowed: {', '.join(SEED_FILES)}",
        )
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise InvalidInput("seed", f"a NoCloud seed needs {' and '.join(missing)}")
    total = sum(len(content) for content in files.values())
    if total > MAX_SEED_BYTES:
        raise InvalidInput(
            "seed", f"the files hold {total} bytes; a seed holds at most {MAX_SEED_BYTES}"
        )


def _pin_dates(iso: pycdlib.PyCdlib) -> None:
    """Set every date pycdlib recorded (volume descriptors, directory records, Rock Ridge TF
    entries) to :data:`SEED_EPOCH` in UTC.

    pycdlib stamps the current local time everywhere and has no option for a fixed date, so
    its object graph is walked for the two date classes of :mod:`pycdlib.dates`.
    """
    seen: set[int] = set()
    stack: list[object] = [iso]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dates.DirectoryRecordDate):
            _pin_dr_date(obj)
            continue
        if isinstance(obj, dates.VolumeDescriptorDate):
            _pin_vd_date(obj)
            continue
        if isinstance(obj, list | tuple | set):
            stack.extend(obj)
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
            continue
        if not type(obj).__module__.startswith("pycdlib"):
            continue
        for attr in _attributes(obj):
            stack.append(getattr(obj, attr, None))


def _pin_modification_dates(image: memoryview) -> bytes:
    """Set the volume modification date of every volume descriptor to :data:`SEED_EPOCH`.

    pycdlib stamps it with the current time while writing, so it is rewritten in the image:
    the descriptors start at sector 16, one per 2048-byte sector, up to the terminator (type
    255); the date is the 17 bytes at offset 830 (ECMA-119 8.4.27).
    """
    out = bytearray(image)
    stamp = _vd_date_str()
    sector = 16
    while (sector + 1) * _SECTOR <= len(out):
        start = sector * _SECTOR
        if out[start + 1 : start + 6] != b"CD001" or out[start] == 255:
            break
        if out[start] in (1, 2):
            out[start + _VD_MODIFIED : start + _VD_MODIFIED + len(stamp)] = stamp
        sector += 1
    return bytes(out)


def _attributes(obj: object) -> list[str]:
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return names


def _pin_dr_date(date: dates.DirectoryRecordDate) -> None:
    # An uninitialised date is never written; leave it so.
    if not getattr(date, "_initialized", False):
        return
    fields = _utc_fields()
    date.years_since_1900 = fields[0] - 1900
    date.month, date.day_of_month, date.hour, date.minute, date.second = fields[1:]
    date.gmtoffset = 0


def _pin_vd_date(date: dates.VolumeDescriptorDate) -> None:
    # An unset date (all zeros: the expiration and effective dates) stays unset.
    if not getattr(date, "_initialized", False) or date.year == 0:
        return
    year, month, day, hour, minute, second = _utc_fields()
    date.year, date.month, date.dayofmonth = year, month, day
    date.hour, date.minute, date.second = hour, minute, second
    date.hundredthsofsecond = 0
    date.gmtoffset = 0
    date.date_str = _vd_date_str()


def _vd_date_str() -> bytes:
    """:data:`SEED_EPOCH` as a volume descriptor date (ECMA-119 8.4.26.1), in UTC."""
    year, month, day, hour, minute, second = _utc_fields()
    return f"{year:04}{month:02}{day:02}{hour:02}{minute:02}{second:02}00".encode() + b"\x00"


def _utc_fields() -> tuple[int, int, int, int, int, int]:
    tm = time.gmtime(SEED_EPOCH)
    return tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: some filesystems refuse to sync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
