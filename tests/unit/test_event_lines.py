"""How ``corral events`` prints each kind of event: one line, the fields a reader looks for."""

from __future__ import annotations

from corral.cli.tasks import _event_line


def test_each_kind_is_one_readable_line() -> None:
    at = "2026-11-26T04:10:11.123+00:00"
    task = {"name": "vm.start", "target_name": "web", "status": "running", "progress": 10}
    vm = {"name": "web", "previous": "running", "state": "paused"}
    qmp = {"name": "web", "event": "RESET", "details": {"guest": True, "reason": "guest-reset"}}
    lines = [
        _event_line({"at": at, "kind": kind, "data": data})
        for kind, data in (("task", task), ("vm", vm), ("vm.qmp", qmp))
    ]
    assert lines == [
        "04:10:11 task vm.start web: running 10%",
        "04:10:11 vm web: running -> paused",
        "04:10:11 vm web: QMP RESET guest=True reason=guest-reset",
    ]
    bare = _event_line({"at": at, "kind": "vm.qmp", "data": {"name": "web", "event": "STOP"}})
    assert bare == "04:10:11 vm web: QMP STOP"
