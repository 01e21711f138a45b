"""The network service on a real host (inside a namespace the test makes): a network made
through :func:`corral.compute.networks.create_network` is on the host; a change the host
refuses part-way is not recorded, and the host is brought back to what the records say,
another network's bridge, dnsmasq and rules included."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from corral.access.local import local_principal
from corral.compute.context import Corral
from corral.compute.networks import create_network, delete_network, get_network
from corral.config import Home
from corral.errors import CorralError
from corral.net import apply as net_apply
from corral.net import dnsmasq
from tests.netns import namespace, run_in, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _create(home: Path, name: str, subnet: str, vlan: int | None = None) -> str | None:
    """In the namespace: create network ``name``; the error's class name if refused."""
    ctx = Corral(Home(home))
    try:
        admin = local_principal(ctx, os.geteuid())
        create_network(ctx, admin, name, "isolated", subnet=subnet, vlan=vlan)
        return None
    except CorralError as exc:
        return f"{type(exc).__name__}: {exc.message}"
    finally:
        ctx.close()


def _known(home: Path, name: str) -> bool:
    """In the namespace: whether network ``name`` is recorded."""
    ctx = Corral(Home(home))
    try:
        get_network(ctx, local_principal(ctx, os.geteuid()), name)
        return True
    except CorralError:
        return False
    finally:
        ctx.close()


def _delete(home: Path, name: str) -> None:
    ctx = Corral(Home(home))
    try:
        delete_network(ctx, local_principal(ctx, os.geteuid()), name)
    finally:
        ctx.close()


def _links(ns: str) -> set[str]:
    return {
        line.split(":")[1].strip().split("@")[0]
        for line in sh(ns, "ip -o link").stdout.splitlines()
    }


def test_a_change_the_host_refuses_is_not_recorded_and_the_host_is_put_back() -> None:
    home = Path(tempfile.mkdtemp(prefix="crsv-", dir="/tmp"))
    try:
        with namespace("s") as ns:
            assert run_in(ns, _create, home, "lan", "10.77.0.0/24") is None
            assert "crb-lan" in _links(ns)
            rules = sh(ns, "nft list table inet corral").stdout
            daemon = dnsmasq.running(net_apply.dnsmasq_files(home, "lan"))
            assert daemon is not None and "crb-lan" in rules
            # A VLAN the kernel's bridges cannot filter (this kernel's) fails in the host,
            # after the checks: nothing is recorded, and lan is as it was.
            refused = run_in(ns, _create, home, "vl", "10.79.0.0/24", 42)
            if refused is None:  # a kernel whose bridges filter VLANs: it is made
                assert "crb-vl" in _links(ns)
                run_in(ns, _delete, home, "vl")
            else:
                assert "VLAN" in refused
                assert not run_in(ns, _known, home, "vl")
                assert run_in(ns, _known, home, "lan")
                assert "crb-vl" not in _links(ns)
            assert sh(ns, "nft list table inet corral").stdout == rules
            again = dnsmasq.running(net_apply.dnsmasq_files(home, "lan"))
            assert again is not None and again.pid == daemon.pid
            run_in(ns, _delete, home, "lan")
            assert not any(name.startswith("crb-") for name in _links(ns))
            assert sh(ns, "nft list tables").stdout.strip() == ""
    finally:
        shutil.rmtree(home, ignore_errors=True)
