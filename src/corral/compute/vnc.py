"""A VM's VNC password: RFB's VNC authentication on its display.

The password lives in one place, ``vnc-password`` (mode 0600) in the VM's directory (mode
0700): the database holds only whether the display asks for it
(:attr:`~corral.spec.vm.VncSpec.password`), never the secret. QEMU reads the file at start
through a ``secret`` object (see :mod:`corral.qemu.argv`); a VM that runs with password auth
gets a new password at once too, through its monitor (``set_password``), optionally with an
expiry (``expire_password``). An expiry is the running display's only: the next start reads
the file again, without one.

QEMU adds password auth to a display only at start, so a VM that runs without it refuses a
password (409, stop it first); one that is stopped gets password auth in its spec, for its
next start. Clearing the password (stopped VMs only) removes both the file and the auth.

RFB's DES challenge uses at most 8 characters of a password: a longer one is refused rather
than cut short (422 naming ``password``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update as sql_update

from corral.access.audit import audited
from corral.access.principal import Action, Principal
from corral.access.scope import find_owned
from corral.compute import records
from corral.compute.consoles import project_of
from corral.compute.context import Corral
from corral.compute.lifecycle import vm_lock
from corral.compute.state import ALLOWED, Op, VmState, require
from corral.errors import Conflict, InvalidInput, StateError
from corral.qemu.monitor import Monitor
from corral.spec.vm import VmSpec
from corral.store.models import VmRow

#: Longest VNC password (RFB's DES key).
MAX_PASSWORD = 8
#: Longest expiry, in seconds (a year).
MAX_EXPIRES = 365 * 24 * 3600
#: Seconds a change waits for an operation that holds the VM (a start, a stop).
LOCK_WAIT = 10.0
#: States in which QEMU runs and its monitor answers.
_LIVE = frozenset({VmState.RUNNING, VmState.PAUSED})


@dataclass(frozen=True)
class PasswordPlan:
    """What setting or clearing a VM's VNC password does."""

    #: The VM's spec afterwards; ``None``: unchanged.
    spec: VmSpec | None
    #: The running display gets the change at once, through the monitor.
    live: bool


def check_password(password: str) -> None:
    """Check ``password`` fits RFB's VNC authentication (pure).

    :raise InvalidInput: empty, longer than :data:`MAX_PASSWORD`, or not printable ASCII
        (naming ``password``).
    """
    if not 1 <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(
            "password", f"a VNC password has 1 to {MAX_PASSWORD} characters, not {len(password)}"
        )
    if not all(" " <= c <= "~" for c in password):
        raise InvalidInput("password", "a VNC password has printable ASCII characters only")


def plan_password(
    spec: VmSpec, state: VmState, expires: int | None, clear: bool = False
) -> PasswordPlan:
    """What setting (or, with ``clear``, removing) the VNC password of VM ``spec`` in state
    ``state`` does (pure).

    :param expires: seconds the password stays valid on the running display; ``None``: it
        does not expire.
    :raise InvalidInput: ``expires`` is out of range (naming ``expires``).
    :raise Conflict: the VM has no VNC display.
    :raise StateError: the state forbids it: starting or stopping; running without password
        auth, or clearing it while running (stop it first); an expiry while not running
        (start it first).
    """
    name = spec.name
    if expires is not None and not 1 <= expires <= MAX_EXPIRES:
        raise InvalidInput("expires", f"seconds from 1 to {MAX_EXPIRES}, not {expires}")
    if spec.vnc is None:
        raise Conflict(
            f"vm {name!r} has no VNC display (enable it with: corral vnc {name} --enable)"
        )
    require(name, Op.VNC_AUTH, state)
    stopped = sorted(ALLOWED[Op.UPDATE])
    if clear:
        if state in _LIVE:
            raise StateError(
                name,
                "clear the VNC password of",
                state,
                stopped,
                "QEMU drops password auth only at start: stop it first",
            )
        changed = spec.model_copy(update={"vnc": spec.vnc.model_copy(update={"password": False})})
        return PasswordPlan(spec=changed if spec.vnc.password else None, live=False)
    if state in _LIVE:
        if not spec.vnc.password:
            raise StateError(
                name,
                "set a VNC password on",
                state,
                stopped,
                "the display runs without password auth, which QEMU adds only at start: "
                "stop it first",
            )
        return PasswordPlan(spec=None, live=True)
    if expires is not None:
        raise StateError(
            name,
            "set an expiring VNC password on",
            state,
            sorted(_LIVE),
            "an expiry applies to the running display: start it first",
        )
    if spec.vnc.password:
        return PasswordPlan(spec=None, live=False)
    changed = spec.model_copy(update={"vnc": spec.vnc.model_copy(update={"password": True})})
    return PasswordPlan(spec=changed, live=False)


def set_vnc_password(
    ctx: Corral, principal: Principal, name: str, password: str, expires: int | None = None
) -> PasswordPlan:
    """Make ``password`` VM ``name``'s VNC password (see :func:`plan_password`).

    The file is written first under a temporary name and takes its place only once the
    running display (if any) has the password, so a failure leaves the old one everywhere.

    :return: what was done.
    :raise NotFound: no such VM (or not the caller's).
    :raise Forbidden: the caller may not operate it (viewers).
    :raise InvalidInput: the password or the expiry is not valid.
    :raise Conflict: the VM has no VNC display; :class:`~corral.errors.StateError` as
        :func:`plan_password` says; :class:`~corral.errors.Busy` when another operation
        held the VM for :data:`LOCK_WAIT` seconds.
    :raise MonitorError: the running display could not be given the password.
    """
    asked = {} if expires is None else {"expires": expires}
    with audited(ctx, principal, "vm.vnc.password", "vm", name, project_of(ctx, name), asked):
        check_password(password)
        with vm_lock(ctx, name, wait=LOCK_WAIT):
            vm = _load(ctx, principal, name)
            plan = plan_password(vm.spec, vm.state, expires)
            target = vm.paths.vnc_password
            staged = f"{target}.new"
            _write_secret(staged, password)
            try:
                if plan.live:
                    with Monitor(vm.paths.qmp_socket) as mon:
                        mon.set_vnc_password(password)
                        mon.expire_vnc_password(expires)
                Path(staged).replace(target)
            finally:
                Path(staged).unlink(missing_ok=True)
            if plan.spec is not None:
                _save(ctx, vm.row.id, plan.spec)
        return plan


def clear_vnc_password(ctx: Corral, principal: Principal, name: str) -> PasswordPlan:
    """Remove VM ``name``'s VNC password and password auth, from its next start on.

    :return: what was done.
    :raise NotFound: no such VM (or not the caller's).
    :raise Forbidden: the caller may not operate it (viewers).
    :raise Conflict: the VM has no VNC display, or runs (stop it first).
    """
    with audited(ctx, principal, "vm.vnc.password.clear", "vm", name, project_of(ctx, name)):
        with vm_lock(ctx, name, wait=LOCK_WAIT):
            vm = _load(ctx, principal, name)
            plan = plan_password(vm.spec, vm.state, None, clear=True)
            if plan.spec is not None:
                _save(ctx, vm.row.id, plan.spec)
            forget_vnc_password(vm.paths.vnc_password)
        return plan


def forget_vnc_password(path: str) -> None:
    """Remove the VNC password file ``path``, if there is one."""
    Path(path).unlink(missing_ok=True)


def _load(ctx: Corral, principal: Principal, name: str) -> records.Vm:
    with ctx.db.session() as session:
        find_owned(session, principal, VmRow, "vm", name, Action.OPERATE)
        vm = records.load(ctx, session, name)
        records.reconcile(vm)
        return vm


def _save(ctx: Corral, vm_id: str, spec: VmSpec) -> None:
    with ctx.db.session() as session:
        session.execute(
            sql_update(VmRow).where(VmRow.id == vm_id).values(spec=spec.model_dump_json())
        )


def _write_secret(path: str, secret: str) -> None:
    """Write ``secret`` to a new file ``path`` that only its owner may read (0600)."""
    Path(path).unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret)
