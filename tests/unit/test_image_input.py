"""Image import refuses bad boot options with a field-naming error, before touching any file."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.compute.context import Corral
from corral.compute.images import import_image
from corral.config import Home
from corral.errors import InvalidInput


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"cmdline": "console=ttyS0\nroot=/dev/vda", "kernel": True}, "cmdline"),
        ({"cmdline": "quiet"}, "cmdline"),
        ({"initrd": True}, "initrd"),
    ],
)
def test_bad_boot_options_name_their_field(
    tmp_path: Path, options: dict[str, object], field: str
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    boot_file = tmp_path / "vmlinux"
    boot_file.write_bytes(b"\0")
    kwargs = {k: (boot_file if v is True else v) for k, v in options.items()}
    ctx = Corral(Home(tmp_path / "home"))
    try:
        with pytest.raises(InvalidInput) as err:
            import_image(ctx, "img", disk, **kwargs)  # type: ignore[arg-type]
        assert err.value.field == field
        assert not (tmp_path / "home" / "images" / "img").exists()
    finally:
        ctx.close()
