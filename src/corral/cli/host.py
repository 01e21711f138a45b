"""``corral host``: what this host can do."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import render

host_app = typer.Typer(help="Inspect this host.", no_args_is_help=True)

_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


@host_app.command("check")
def check_cmd(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    refresh: Annotated[
        bool, typer.Option(help="Probe QEMU and KVM again instead of using the cache.")
    ] = False,
) -> None:
    """Validate the host for running VMs (like virt-host-validate)."""
    from corral.config import default_cache, default_home
    from corral.errors import HostError
    from corral.host.caps import probe
    from corral.host.check import exit_status, run_checks

    try:
        caps = probe(cache_dir=default_cache(), refresh=refresh)
    except HostError as exc:
        render.err.print(f"[yellow]warning:[/] {exc.message}")
        caps = None
    checks = run_checks(caps, default_home())
    if json_:
        render.print_json(
            [{"name": c.name, "status": c.status, "detail": c.detail} for c in checks]
        )
    else:
        render.table(
            None,
            ["Check", "Result", "Detail"],
            ([c.name, f"[{_STYLE.get(c.status, '')}]{c.status}[/]", c.detail] for c in checks),
        )
        if caps is not None and caps.accel == "tcg":
            render.err.print(f"[yellow]warning:[/] guests run under TCG (slow): {caps.kvm_reason}")
    raise typer.Exit(exit_status(checks))
