"""The console websockets with real QEMU: who may attach (operators and admins of the VM's
project; viewers 403, another project 404, no token 401), 409 naming the state of a VM that
does not run, VNC tickets (single use, short-lived, for one VM) that open the RFB stream, the
audit log of each; and the ticket book's pure rules.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.testclient import WebSocketDenialResponse

from corral.access.principal import Principal, Role
from corral.api.app import create_app
from corral.compute.consoles import TicketBook
from corral.compute.context import Corral
from corral.compute.state import VmState
from corral.compute.update import UpdateRequest, plan_update
from corral.compute.vnc import PasswordPlan, check_password, plan_password
from corral.errors import Conflict, InvalidInput, StateError, Unauthenticated
from corral.host.qemu_probe import parse_displays
from corral.qemu.monitor import Monitor
from corral.spec.validate import check_display
from corral.spec.vm import VmSpec
from corral.store.models import VmRow
from tests.api.support import API, act, admin_client, audit_entries, state_dir, user_client
from tests.unit.test_argv import make_caps

# -- the ticket book ---------------------------------------------------------------------------

OLGA = Principal(name="olga", role=Role.OPERATOR, project_ids=frozenset({"p"}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_opens_its_vm_once() -> None:
    book = TicketBook(lifetime=60, clock=Clock())
    ticket = book.issue("v1", OLGA)
    assert ticket.vm == "v1" and ticket.expires_in == 60 and len(ticket.secret) >= 40
    assert book.redeem(ticket.secret, "v1") == OLGA
    with pytest.raises(Unauthenticated) as used:
        book.redeem(ticket.secret, "v1")
    assert used.value.reason == "unknown or used VNC ticket"


def test_an_expired_ticket_or_one_of_another_vm_is_refused() -> None:
    clock = Clock()
    book = TicketBook(lifetime=60, clock=clock)
    late = book.issue("v1", OLGA)
    other = book.issue("v1", OLGA)
    clock.now += 60
    with pytest.raises(Unauthenticated) as expired:
        book.redeem(late.secret, "v1")
    assert expired.value.reason in ("expired VNC ticket", "unknown or used VNC ticket")
    fresh = book.issue("v1", OLGA)
    with pytest.raises(Unauthenticated) as elsewhere:
        book.redeem(fresh.secret, "v2")
    assert elsewhere.value.reason == "VNC ticket of vm 'v1'"
    with pytest.raises(Unauthenticated):  # taken by the failed attempt
        book.redeem(fresh.secret, "v1")
    with pytest.raises(Unauthenticated):
        book.redeem(other.secret, "v1")


# -- display modes -----------------------------------------------------------------------------

KERNEL = {"kind": "kernel", "kernel": "/boot/vmlinuz"}


def test_the_display_list_leaves_out_missing_modules() -> None:
    text = "Available display backend types:\nnone\negl-headless\ncurses\nspice-app\ndbus\n"
    assert parse_displays(text) == ["curses", "dbus", "egl-headless", "none", "spice-app"]


def test_a_vnc_section_and_the_vnc_display_imply_each_other() -> None:
    assert VmSpec(name="a", boot=KERNEL).display == "none"
    assert VmSpec.model_validate({"name": "a", "boot": KERNEL, "vnc": {}}).display == "vnc"
    spec = VmSpec.model_validate({"name": "a", "boot": KERNEL, "display": "vnc"})
    assert spec.vnc is not None and spec.vnc.listen == "unix"
    with pytest.raises(ValueError, match="vnc section needs display 'vnc'"):
        VmSpec.model_validate({"name": "a", "boot": KERNEL, "display": "gtk", "vnc": {}})


def test_a_window_needs_the_front_end_and_a_graphical_session() -> None:
    gtk = VmSpec(name="a", boot=KERNEL, display="gtk")
    with_gtk = make_caps(displays=frozenset({"none", "gtk", "curses"}))
    check_display(gtk, with_gtk, {"DISPLAY": ":0"})
    check_display(gtk, with_gtk, {"WAYLAND_DISPLAY": "wayland-0"})
    with pytest.raises(InvalidInput, match="graphical session") as headless:
        check_display(gtk, with_gtk, {})
    assert headless.value.field == "display"
    with pytest.raises(InvalidInput, match=r"no 'sdl' display; it offers curses, gtk, none, vnc"):
        check_display(VmSpec(name="a", boot=KERNEL, display="sdl"), with_gtk, {"DISPLAY": ":0"})
    # curses needs no graphical session: it draws on the terminal corral gives QEMU
    check_display(VmSpec(name="a", boot=KERNEL, display="curses"), with_gtk, {})
    with pytest.raises(InvalidInput, match=r"no 'curses' display"):
        check_display(VmSpec(name="a", boot=KERNEL, display="curses"), make_caps(), {})
    check_display(VmSpec(name="a", boot=KERNEL, display="vnc"), make_caps(), {})


# -- the endpoints, with real QEMU ---------------------------------------------------------------

USERS = {
    "olga": ("operator", ["p1"]),
    "vic": ("viewer", ["p1"]),
    "eve": ("operator", ["p2"]),
}


@pytest.fixture(scope="module")
def ctx() -> Iterator[Corral]:
    with state_dir("co-", ["p1", "p2"], USERS) as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Corral) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


@pytest.fixture(scope="module")
def running(api: TestClient) -> str:
    """VM ``c1`` of project p1 with a VNC display, refused a console while defined, then
    started."""
    made = api.post(
        f"{API}/vms",
        json={"name": "c1", "image": "reference", "memory": "128M", "project": "p1", "vnc": True},
    )
    assert made.status_code == 201, made.text
    refused = api.post(f"{API}/vms/c1/vnc/token")
    assert refused.status_code == 409, refused.text
    assert "defined" in refused.json()["message"]
    assert _denied(api, f"{API}/vms/c1/console").status_code == 409
    assert act(api, "c1", "start")["status"] == "success"
    return "c1"


def _denied(client: TestClient, path: str) -> WebSocketDenialResponse:
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect(path):
        pass
    return denied.value


@pytest.mark.tcg
def test_the_serial_console_is_for_operators_of_the_vms_project(
    ctx: Corral, api: TestClient, running: str
) -> None:
    path = f"{API}/vms/{running}/console"
    with user_client(ctx, "olga") as olga, olga.websocket_connect(path) as console:
        console.send_bytes(b"\n")  # the bridge takes keys
    with user_client(ctx, "eve") as eve:
        other = _denied(eve, path)
        assert other.status_code == 404
        assert other.json() == {
            "error": "NotFound",
            "message": f"vm {running!r} not found",
            "field": None,
        }
        assert _denied(eve, f"{API}/vms/ghost/console").json() == {
            "error": "NotFound",
            "message": "vm 'ghost' not found",
            "field": None,
        }
    with user_client(ctx, "vic") as vic:
        assert _denied(vic, path).status_code == 403
    with TestClient(create_app(ctx)) as anonymous:
        nobody = _denied(anonymous, path)
        assert nobody.status_code == 401
        assert nobody.headers["WWW-Authenticate"] == "Bearer"
    outcomes = [(e["actor"], e["outcome"]) for e in audit_entries(api, running)]
    attached = [o for o in outcomes if o[0] in ("olga", "vic")]
    assert ("olga", "ok") in attached and ("vic", "Forbidden") in attached
    actions = {e["action"] for e in audit_entries(api, running)}
    assert "vm.console" in actions


@pytest.mark.tcg
def test_a_vnc_ticket_opens_the_rfb_stream_once(ctx: Corral, api: TestClient, running: str) -> None:
    with user_client(ctx, "olga") as olga:
        answer = olga.post(f"{API}/vms/{running}/vnc/token")
        assert answer.status_code == 200, answer.text
        ticket = answer.json()
        assert ticket["vm"] == running and ticket["expires_in"] == 60
        assert ticket["path"] == f"{API}/vms/{running}/vnc?token={ticket['token']}"
        # The ticket is the credential: the websocket itself needs no Authorization header.
        browser = TestClient(olga.app)
        with browser.websocket_connect(ticket["path"], subprotocols=["binary"]) as vnc:
            assert vnc.accepted_subprotocol == "binary"
            assert vnc.receive_bytes()[:4] == b"RFB "  # QEMU's protocol version
        reused = _denied(browser, ticket["path"])
        assert reused.status_code == 401
        assert _denied(browser, f"{API}/vms/{running}/vnc?token=forged").status_code == 401
        assert _denied(browser, f"{API}/vms/{running}/vnc").status_code == 401
    with user_client(ctx, "vic") as vic:
        assert vic.post(f"{API}/vms/{running}/vnc/token").status_code == 403
    with user_client(ctx, "eve") as eve:
        assert eve.post(f"{API}/vms/{running}/vnc/token").status_code == 404
    actions = [(e["action"], e["outcome"]) for e in audit_entries(api, running)]
    assert ("vm.vnc.token", "ok") in actions
    assert ("vm.vnc", "ok") in actions and ("vm.vnc", "Unauthenticated") in actions


@pytest.mark.tcg
def test_an_expired_ticket_is_refused(ctx: Corral, running: str) -> None:
    clock = Clock()
    app = create_app(ctx)
    app.state.vnc_tickets = TicketBook(lifetime=60, clock=clock)
    with admin_app(app) as client:
        ticket = client.post(f"{API}/vms/{running}/vnc/token").json()
        clock.now += 61
        expired = _denied(client, ticket["path"])
        assert expired.status_code == 401
        assert expired.json()["error"] == "Unauthenticated"


def admin_app(app: object) -> TestClient:
    """``app`` as the local administrator sees it (on the UNIX socket)."""
    from corral.api.auth import via

    return TestClient(via(app, "unix"))  # type: ignore[arg-type]


def test_a_display_the_host_lacks_is_refused_naming_it(api: TestClient) -> None:
    """This host's QEMU (Debian's, without qemu-system-gui) has no gtk; a test host that has
    it would answer for the graphical session instead, with the same field."""
    body = {"name": "c3", "image": "reference", "memory": "128M", "display": "gtk"}
    refused = api.post(f"{API}/vms", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "display"
    assert "'gtk'" in refused.json()["message"]
    odd = api.post(f"{API}/vms", json={**body, "display": "spice"})
    assert odd.status_code == 422 and odd.json()["field"] == "display"
    assert api.get(f"{API}/vms/c3").status_code == 404  # nothing left behind


@pytest.mark.tcg
def test_a_vm_without_vnc_has_no_ticket(api: TestClient, running: str) -> None:
    made = api.post(f"{API}/vms", json={"name": "c2", "image": "reference", "memory": "128M"})
    assert made.status_code == 201, made.text
    assert act(api, "c2", "start")["status"] == "success"
    refused = api.post(f"{API}/vms/c2/vnc/token")
    assert refused.status_code == 409
    assert "no VNC display" in refused.json()["message"]
    assert act(api, "c2", "destroy")["status"] == "success"


# -- VNC enable/disable and its password -------------------------------------------------------


def _vnc_spec(password: bool = False) -> VmSpec:
    return VmSpec.model_validate(
        {"name": "d", "boot": KERNEL, "vnc": {"listen": "unix", "password": password}}
    )


def test_a_vnc_password_fits_rfb() -> None:
    check_password("12345678")
    for bad, reason in (("123456789", "1 to 8"), ("", "1 to 8"), ("pässwd", "ASCII")):
        with pytest.raises(InvalidInput) as refused:
            check_password(bad)
        assert refused.value.field == "password" and reason in refused.value.reason


def test_the_password_plan_follows_the_state() -> None:
    stopped = plan_password(_vnc_spec(), VmState.SHUTOFF, None)
    assert not stopped.live and stopped.spec is not None and stopped.spec.vnc is not None
    assert stopped.spec.vnc.password  # password auth from the next start
    assert plan_password(_vnc_spec(True), VmState.RUNNING, 30) == PasswordPlan(None, live=True)
    with pytest.raises(StateError) as no_auth:
        plan_password(_vnc_spec(), VmState.RUNNING, None)
    assert "it is running" in no_auth.value.message and "stop it first" in no_auth.value.message
    with pytest.raises(StateError) as expiry:
        plan_password(_vnc_spec(True), VmState.SHUTOFF, 30)
    assert "start it first" in expiry.value.message
    with pytest.raises(StateError):
        plan_password(_vnc_spec(True), VmState.STARTING, None)
    with pytest.raises(StateError):
        plan_password(_vnc_spec(True), VmState.PAUSED, None, clear=True)
    cleared = plan_password(_vnc_spec(True), VmState.DEFINED, None, clear=True).spec
    assert cleared is not None and cleared.vnc is not None and not cleared.vnc.password
    with pytest.raises(InvalidInput) as bad:
        plan_password(_vnc_spec(True), VmState.RUNNING, 0)
    assert bad.value.field == "expires"
    with pytest.raises(Conflict):
        plan_password(VmSpec(name="d", boot=KERNEL), VmState.SHUTOFF, None)


def test_the_display_changes_only_while_stopped() -> None:
    bare = VmSpec(name="d", boot=KERNEL)
    enabled = plan_update(bare, VmState.SHUTOFF, UpdateRequest(display="vnc"))
    assert enabled.changes == {"display": ["none", "vnc"]}
    assert enabled.spec.vnc is not None and enabled.spec.vnc.listen == "unix"
    assert plan_update(_vnc_spec(True), VmState.RUNNING, UpdateRequest(display="vnc")).changes == {}
    disabled = plan_update(_vnc_spec(True), VmState.DEFINED, UpdateRequest(display="none"))
    assert disabled.spec.vnc is None and disabled.spec.display == "none"
    for spec, display in ((bare, "vnc"), (_vnc_spec(), "none")):
        with pytest.raises(StateError) as running:
            plan_update(spec, VmState.RUNNING, UpdateRequest(display=display))  # type: ignore[arg-type]
        assert "it is running" in running.value.message
        assert "stop it first" in running.value.message


def _security_types(client: TestClient, vm: str) -> list[int]:
    """The RFB security types VM ``vm``'s display offers (RFB 3.8 handshake)."""
    path = client.post(f"{API}/vms/{vm}/vnc/token").json()["path"]
    with client.websocket_connect(path) as display:
        assert display.receive_bytes()[:4] == b"RFB "
        display.send_bytes(b"RFB 003.008\n")
        offered = display.receive_bytes()
        return list(offered[1 : 1 + offered[0]])


@pytest.mark.tcg
def test_vnc_is_enabled_and_given_a_password_kept_only_in_the_vms_directory(
    ctx: Corral, api: TestClient
) -> None:
    body = {"name": "pw", "image": "reference", "memory": "128M", "project": "p1"}
    made = api.post(f"{API}/vms", json=body)
    assert made.status_code == 201, made.text
    password_path = f"{API}/vms/pw/vnc/password"
    with user_client(ctx, "olga") as olga:
        none = olga.post(password_path, json={"password": "s3cret"})
        assert none.status_code == 409 and "no VNC display" in none.json()["message"]
        enabled = olga.patch(f"{API}/vms/pw", json={"display": "vnc"})
        assert enabled.status_code == 200, enabled.text
        long = olga.post(password_path, json={"password": "s3cret-too-long"})
        assert long.status_code == 422 and long.json()["field"] == "password"
        set_ = olga.post(password_path, json={"password": "s3cret"})
        assert set_.status_code == 200, set_.text
        assert set_.json() == {"vm": "pw", "password_auth": True, "live": False}
    with user_client(ctx, "vic") as vic:
        assert vic.post(password_path, json={"password": "x"}).status_code == 403
    with user_client(ctx, "eve") as eve:
        assert eve.post(password_path, json={"password": "x"}).status_code == 404
        assert eve.patch(f"{API}/vms/pw", json={"display": "none"}).status_code == 404
    secret = Path(ctx.home.root) / "vms" / "pw" / "vnc-password"
    assert secret.read_text() == "s3cret" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    with ctx.db.session() as session:
        spec = session.scalars(select(VmRow.spec).where(VmRow.name == "pw")).one()
    assert "s3cret" not in spec and json.loads(spec)["vnc"]["password"] is True

    assert act(api, "pw", "start")["status"] == "success"
    with Monitor(str(secret.parent / "qmp.sock")) as mon:  # QEMU's own view of the display
        assert mon.execute("query-vnc")["auth"] == "vnc"
    assert _security_types(api, "pw") == [2]  # VNC authentication, nothing without
    live = api.post(password_path, json={"password": "n3w", "expires": 600})
    assert live.status_code == 200 and live.json()["live"] is True
    assert secret.read_text() == "n3w"
    off = api.patch(f"{API}/vms/pw", json={"display": "none"})
    assert off.status_code == 409 and "running" in off.json()["message"]
    assert "stop it first" in off.json()["message"]
    kept = api.delete(password_path)
    assert kept.status_code == 409 and "running" in kept.json()["message"]
    assert act(api, "pw", "destroy")["status"] == "success"

    cleared = api.delete(password_path)
    assert cleared.status_code == 200 and cleared.json()["password_auth"] is False
    assert not secret.exists()
    assert api.post(password_path, json={"password": "again"}).status_code == 200
    disabled = api.patch(f"{API}/vms/pw", json={"display": "none"})
    assert disabled.status_code == 200 and not secret.exists()
    entries = audit_entries(api, "pw")
    assert "s3cret" not in json.dumps(entries)
    outcomes = {(e["actor"], e["action"], e["outcome"]) for e in entries}
    assert ("olga", "vm.vnc.password", "ok") in outcomes
    assert ("vic", "vm.vnc.password", "Forbidden") in outcomes
    cleared_outcomes = {o for _, a, o in outcomes if a == "vm.vnc.password.clear"}
    assert cleared_outcomes == {"StateError", "ok"} or cleared_outcomes == {"Conflict", "ok"}
