"""corral's nftables table, loaded with ``nft -f -`` in one transaction.

:func:`corral.qemu.runner.run` is made for qemu-img (it runs its command under ``prlimit``
with no standard input); a script for nft travels on standard input, so nft has this small
runner of its own, with a timeout and the same :class:`~corral.errors.ToolError` on failure.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from corral.errors import HostError, ToolError

#: How long one nft transaction may take (1,000 rules load in well under a second).
TIMEOUT = 60.0


def load(script: str) -> None:
    """Run ``script`` as one nft transaction: all of it applies, or none of it.

    :param script: an nft script (:func:`corral.net.plan.ruleset`).
    :raise ToolError: nft refused the script or did not finish in time.
    :raise HostError: nft is not installed.
    """
    nft = shutil.which("nft")
    if nft is None:
        raise HostError("nft not found: install nftables")
    argv = [nft, "-f", "-"]
    try:
        done = subprocess.run(
            argv, input=script.encode(), capture_output=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(argv, -9, f"no result within {TIMEOUT:g} s: killed") from exc
    if done.returncode != 0:
        raise ToolError(argv, done.returncode, done.stderr.decode(errors="replace"))


def table(name: str) -> str | None:
    """The listing of table ``inet <name>``, or ``None`` if there is none.

    :raise HostError: nft is not installed.
    """
    nft = shutil.which("nft")
    if nft is None:
        raise HostError("nft not found: install nftables")
    done = subprocess.run(
        [nft, "list", "table", "inet", name], capture_output=True, timeout=TIMEOUT, check=False
    )
    return done.stdout.decode() if done.returncode == 0 else None


def listing() -> str:
    """What the kernel holds of corral's tables now (``inet corral`` and ``bridge corral``,
    as ``nft list`` prints them; empty for a missing one).

    :raise HostError: nft is not installed.
    """
    nft = shutil.which("nft")
    if nft is None:
        raise HostError("nft not found: install nftables")
    parts = []
    for family in ("inet", "bridge"):
        done = subprocess.run(
            [nft, "list", "table", family, "corral"],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        parts.append(done.stdout.decode() if done.returncode == 0 else "")
    return "\n".join(parts)


def ensure(script: str, record: Path) -> bool:
    """Load ``script`` unless it is the one loaded last and the kernel's tables are still
    what that load left (``record`` keeps both); whether it loaded.

    A periodic apply of an unchanged plan so leaves the firewall alone (no reload every few
    seconds), yet a table someone changed or removed is put back.

    :raise ToolError: nft refused the script.
    :raise HostError: nft is not installed.
    """
    digest = hashlib.sha256(script.encode()).hexdigest()
    try:
        last = json.loads(record.read_text())
    except (OSError, ValueError):
        last = {}
    if last.get("script") == digest and last.get("listing") == listing():
        return False
    record.unlink(missing_ok=True)
    load(script)
    record.parent.mkdir(parents=True, exist_ok=True)
    temporary = record.with_suffix(".tmp")
    temporary.write_text(json.dumps({"script": digest, "listing": listing()}))
    temporary.replace(record)
    return True
