"""The monitor, reset and CD-ROM endpoints with real QEMU: who may send what, what QEMU answers,
the state the record follows, 409 on a VM that does not run, 422 naming the field, the audit
log of each (refusals included); and the pure rules (the operator's allow-list, the plan of a
medium change with its undo steps).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pycdlib
import pytest
from fastapi.testclient import TestClient

from corral.access.principal import Principal, Role
from corral.compute.context import Corral
from corral.compute.monitor import (
    MonitorCommand,
    check_command,
    medium_steps,
    parse_hmp,
    parse_qmp,
    tray_medium,
)
from corral.errors import Conflict, Forbidden, InvalidInput
from tests.api.support import API, act, admin_client, audit_entries, state_dir, user_client


def make_iso(path: Path, text: str) -> Path:
    """A small ISO 9660 image holding ``HELLO.TXT`` with ``text``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="CORRALTEST")
    data = text.encode()
    iso.add_fp(io.BytesIO(data), len(data), "/HELLO.TXT;1")
    iso.write(str(path))
    iso.close()
    return path


# -- pure rules ---------------------------------------------------------------------------------


def _who(role: Role) -> Principal:
    return Principal(name=f"u-{role.value}", role=role, project_ids=frozenset({"p"}))


def test_operators_send_only_read_only_queries() -> None:
    operator = _who(Role.OPERATOR)
    check_command(operator, "vm", parse_qmp({"execute": "query-status"}))
    check_command(operator, "vm", parse_hmp("info   status"))
    for refused in (
        parse_qmp({"execute": "stop"}),
        parse_qmp({"execute": "human-monitor-command", "arguments": {"command-line": "q"}}),
        parse_hmp("info status extra"),
        parse_hmp("quit"),
    ):
        with pytest.raises(Forbidden):
            check_command(operator, "vm", refused)
    with pytest.raises(Forbidden):
        check_command(_who(Role.VIEWER), "vm", parse_qmp({"execute": "query-status"}))
    check_command(_who(Role.ADMIN), "vm", MonitorCommand(execute="quit"))


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"execute": "query-status", "id": 1}, "qmp"),
        ({"execute": "bad name"}, "qmp.execute"),
        ({"execute": "qmp_capabilities"}, "qmp.execute"),
        ({"execute": "query-status", "arguments": [1]}, "qmp.arguments"),
    ],
)
def test_qmp_messages_are_checked(message: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_qmp(message)
    assert caught.value.field == field


def test_an_hmp_line_is_one_line() -> None:
    for bad in ("", "info status\ninfo block", "x" * 1001):
        with pytest.raises(InvalidInput, match=r"^hmp"):
            parse_hmp(bad)


def test_a_medium_change_adds_first_and_removes_the_old_nodes_last() -> None:
    steps = medium_steps("cdrom", "/srv/b.iso")
    assert [s.command for s in steps] == [
        "blockdev-add",
        "blockdev-add",
        "blockdev-open-tray",
        "blockdev-remove-medium",
        "blockdev-insert-medium",
        "blockdev-close-tray",
        "blockdev-del",
        "blockdev-del",
    ]
    added = steps[1].arguments
    assert added["driver"] == "raw" and added["read-only"] is True
    assert added["node-name"] == "cdrom-1"  # not the name still in use
    assert steps[3].undo == ("blockdev-insert-medium", {"id": "cdrom0", "node-name": "cdrom"})
    assert [s.arguments["node-name"] for s in steps[-2:]] == ["cdrom", "cdrom.file"]
    assert all(s.cleanup for s in steps[-2:]) and not any(s.cleanup for s in steps[:-2])
    eject = medium_steps("cdrom-1", None)
    assert [s.command for s in eject][:3] == [
        "blockdev-open-tray",
        "blockdev-remove-medium",
        "blockdev-close-tray",
    ]
    assert medium_steps(None, "/a.iso")[1].arguments["node-name"] == "cdrom"


def test_the_tray_is_found_in_query_block() -> None:
    blocks = [
        {"qdev": "/machine/peripheral/disk-root/virtio-backend", "inserted": {"node-name": "r"}},
        {"qdev": "cdrom0", "inserted": {"node-name": "cdrom"}},
    ]
    assert tray_medium(blocks) == "cdrom"
    assert tray_medium([{"qdev": "cdrom0"}]) is None
    with pytest.raises(Conflict, match="without a CD-ROM drive"):
        tray_medium(blocks[:1])


# -- the endpoints, with real QEMU ---------------------------------------------------------------

USERS = {"olga": ("operator", ["p1"]), "vic": ("viewer", ["p1"])}


@pytest.fixture(scope="module")
def ctx() -> Iterator[Corral]:
    with state_dir("mo-", ["p1"], USERS) as corral:
        yield corral


@pytest.fixture(scope="module")
def api(ctx: Corral) -> Iterator[TestClient]:
    with admin_client(ctx) as client:
        yield client


@pytest.fixture(scope="module")
def running(api: TestClient) -> str:
    """VM ``m1`` of project p1, refused the monitor while defined, then started."""
    made = api.post(
        f"{API}/vms",
        json={"name": "m1", "image": "reference", "memory": "128M", "project": "p1"},
    )
    assert made.status_code == 201, made.text
    refused = api.post(f"{API}/vms/m1/monitor", json={"qmp": {"execute": "query-status"}})
    assert refused.status_code == 409, refused.text
    assert "defined" in refused.json()["message"]
    assert act(api, "m1", "start")["status"] == "success"
    return "m1"


def _qmp(client: TestClient, name: str, execute: str, **arguments: object) -> object:
    message: dict[str, object] = {"execute": execute}
    if arguments:
        message["arguments"] = arguments
    answer = client.post(f"{API}/vms/{name}/monitor", json={"qmp": message})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.tcg
def test_qmp_stop_and_cont_change_the_run_state_and_the_record(
    api: TestClient, running: str
) -> None:
    assert _qmp(api, running, "stop") == {"return": {}, "error": None}
    status = _qmp(api, running, "query-status")
    assert isinstance(status, dict) and status["return"]["status"] == "paused"
    assert api.get(f"{API}/vms/{running}").json()["state"] == "paused"
    _qmp(api, running, "cont")
    status = _qmp(api, running, "query-status")
    assert isinstance(status, dict) and status["return"]["status"] == "running"
    assert api.get(f"{API}/vms/{running}").json()["state"] == "running"


@pytest.mark.tcg
def test_hmp_and_qemus_own_errors(api: TestClient, running: str) -> None:
    answer = api.post(f"{API}/vms/{running}/monitor", json={"hmp": "info status"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["return"].strip() == "VM status: running"
    refused = _qmp(api, running, "no-such-command")
    assert isinstance(refused, dict) and refused["error"]["class"] == "CommandNotFound"


@pytest.mark.tcg
def test_bodies_are_checked_naming_the_field(api: TestClient, running: str) -> None:
    both = api.post(
        f"{API}/vms/{running}/monitor", json={"qmp": {"execute": "stop"}, "hmp": "stop"}
    )
    assert both.status_code == 422
    bad = api.post(f"{API}/vms/{running}/monitor", json={"hmp": "info status\nquit"})
    assert bad.status_code == 422 and bad.json()["field"] == "hmp"
    name = api.post(f"{API}/vms/{running}/monitor", json={"qmp": {"execute": 3}})
    assert name.status_code == 422 and name.json()["field"] == "qmp.execute"


@pytest.mark.tcg
def test_roles_and_the_audit_log(ctx: Corral, api: TestClient, running: str) -> None:
    with user_client(ctx, "olga") as olga:
        allowed = olga.post(f"{API}/vms/{running}/monitor", json={"hmp": "info block"})
        assert allowed.status_code == 200, allowed.text
        stop = olga.post(f"{API}/vms/{running}/monitor", json={"qmp": {"execute": "stop"}})
        assert stop.status_code == 403, stop.text
        insert = olga.post(f"{API}/vms/{running}/cdrom", json={"path": "/etc/hostname"})
        assert insert.status_code == 403, insert.text
    with user_client(ctx, "vic") as vic:
        query = vic.post(f"{API}/vms/{running}/monitor", json={"qmp": {"execute": "query-status"}})
        assert query.status_code == 403, query.text
    assert api.get(f"{API}/vms/{running}").json()["state"] == "running"  # nothing stopped it
    log = [e for e in audit_entries(api, running) if e["action"].startswith("vm.monitor")]
    mine = [
        (e["actor"], e["outcome"], e["detail"].get("qmp") or e["detail"].get("hmp")) for e in log
    ]
    assert ("olga", "ok", "info block") in mine
    assert ("olga", "Forbidden", {"execute": "stop", "arguments": {}}) in mine
    assert ("vic", "Forbidden", {"execute": "query-status", "arguments": {}}) in mine
    inserts = [e for e in audit_entries(api, running) if e["action"] == "vm.cdrom.insert"]
    assert [(e["actor"], e["outcome"]) for e in inserts] == [("olga", "Forbidden")]


@pytest.mark.tcg
def test_reset_and_cdrom_refusals(
    ctx: Corral, api: TestClient, running: str, tmp_path: Path
) -> None:
    reset = api.post(f"{API}/vms/{running}/reset")
    assert reset.status_code == 200, reset.text
    assert reset.json()["state"] == "running"
    assert [e["outcome"] for e in audit_entries(api, running) if e["action"] == "vm.reset"] == [
        "ok"
    ]
    not_iso = tmp_path / "plain.txt"
    not_iso.write_text("no ISO\n")
    answer = api.post(f"{API}/vms/{running}/cdrom", json={"path": str(not_iso)})
    assert answer.status_code == 422 and answer.json()["field"] == "path"
    iso = make_iso(tmp_path / "a.iso", "hello\n")
    # A VM gets an empty drive by default: media change while it runs.
    answer = api.post(f"{API}/vms/{running}/cdrom", json={"path": str(iso)})
    assert answer.status_code == 200, answer.text
    assert api.delete(f"{API}/vms/{running}/cdrom").status_code == 200
    # One started without a drive cannot get one (IDE has no hotplug): 409, stop it first.
    from corral.compute.define import CreateRequest, create

    bare = CreateRequest(name="m3", image="reference", memory="128M", extra={"cdrom": None})
    create(ctx, bare)
    assert act(api, "m3", "start")["status"] == "success"
    answer = api.post(f"{API}/vms/m3/cdrom", json={"path": str(iso)})
    assert answer.status_code == 409, answer.text
    assert "CD-ROM" in answer.json()["message"]
    eject = api.delete(f"{API}/vms/m3/cdrom")
    assert eject.status_code == 409, eject.text
    assert act(api, "m3", "destroy")["status"] == "success"


@pytest.mark.tcg
def test_a_defined_vm_gets_a_drive_recorded(ctx: Corral, api: TestClient, tmp_path: Path) -> None:
    from corral.compute.records import load

    made = api.post(
        f"{API}/vms",
        json={"name": "m2", "image": "reference", "memory": "128M", "project": "p1"},
    )
    assert made.status_code == 201, made.text
    iso = make_iso(tmp_path / "b.iso", "b\n")
    answer = api.post(f"{API}/vms/m2/cdrom", json={"path": str(iso), "boot": True})
    assert answer.status_code == 422 and answer.json()["field"] == "boot"  # a kernel boot
    answer = api.post(f"{API}/vms/m2/cdrom", json={"path": str(iso)})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"path": str(iso), "boot": False}
    with ctx.db.session() as session:
        spec = load(ctx, session, "m2").spec
    assert spec.cdrom is not None and spec.cdrom.path == str(iso)
    assert api.delete(f"{API}/vms/m2/cdrom").json() == {"path": None, "boot": False}
