"""``python -m corral.guest [--force] [--cache DIR]``: build the reference guest, show its files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from corral.config import default_cache
from corral.errors import GuestBuildError
from corral.guest.build import build_reference_guest


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the reference guest and print where its files are.

    :param argv: the arguments (default: the command line).
    :return: the exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m corral.guest", description=__doc__)
    parser.add_argument("--cache", type=Path, default=None, help="cache directory")
    parser.add_argument(
        "--force", action="store_true", help="resolve the Debian packages anew and rebuild"
    )
    args = parser.parse_args(argv)
    cache: Path = args.cache if args.cache is not None else default_cache()
    last = [""]

    def progress(phase: str, fraction: float) -> None:
        if phase != last[0]:
            last[0] = phase
            print(f"[{fraction * 100:3.0f}%] {phase}", file=sys.stderr)

    started = time.monotonic()
    try:
        guest = build_reference_guest(cache, progress=progress, force=args.force)
    except GuestBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"key:            {guest.key}")
    print(f"kernel:         {guest.kernel_version}")
    print(f"vmlinux:        {guest.vmlinux}")
    print(f"bzImage:        {guest.bzimage}")
    print(f"initrd:         {guest.initrd}")
    print(f"root disk:      {guest.rootdisk}")
    print(f"cmdline:        {guest.cmdline}")
    print(f"ready marker:   {guest.ready_marker}")
    print(f"took:           {time.monotonic() - started:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
