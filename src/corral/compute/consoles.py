"""A VM's consoles for remote users: its serial console, its text display and its VNC display.

corrald bridges them to the VM's own sockets (``serial.sock``, ``text.sock`` for a
``curses`` display, ``vnc.sock`` or VNC on loopback), which stay inside the VM's directory;
nothing of the guest's listens anywhere else. Attaching is operating the VM
(:attr:`~corral.access.principal.Action.OPERATE`): operators and admins of the VM's project
attach, viewers do not, and another project's VM is not found.

The VNC display is reached with a ticket, as a browser's noVNC reaches it: a
:class:`TicketBook` hands out a short-lived, single-use ticket for one VM
(``POST /vms/{name}/vnc/token``, where the caller is authenticated as usual) and takes it back
when the websocket opens (``GET /vms/{name}/vnc?token=...``, which a browser opens without an
``Authorization`` header). Tickets live in the daemon's memory only: a restarted daemon has
none, and a client asks again.

Every attachment and every ticket is in the audit log (``vm.console``, ``vm.vnc.token``,
``vm.vnc``), refusals included.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from corral.access.audit import audited
from corral.access.principal import Action, Principal, Role
from corral.access.scope import find_owned
from corral.compute import records
from corral.compute.context import Corral
from corral.compute.state import Op, require
from corral.errors import Conflict, Unauthenticated
from corral.store.models import ProjectRow, VmRow

#: Seconds a VNC ticket is valid.
TICKET_LIFETIME = 60.0
#: Most unredeemed tickets the daemon keeps (the oldest go first).
MAX_TICKETS = 1000
#: Who the audit log names for a VNC connection with a ticket the daemon does not know.
ANONYMOUS = Principal(name="anonymous", role=Role.VIEWER, project_ids=frozenset())


@dataclass(frozen=True)
class Endpoint:
    """Where a console listens on the host: a UNIX socket path, or a loopback TCP port."""

    #: The UNIX socket's path; ``None`` for TCP.
    path: str | None = None
    #: The loopback TCP port; ``None`` for a UNIX socket.
    port: int | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Ticket:
    """A VNC ticket as issued: the secret (shown once) and when it stops being valid."""

    secret: str
    vm: str
    expires_in: float


class TicketBook:
    """Single-use VNC tickets for VMs, each valid for :data:`TICKET_LIFETIME` seconds.

    Only a hash of each ticket is kept. Thread-safe: the API's handlers run in threads.

    :param clock: monotonic seconds (a test passes its own).
    """

    def __init__(
        self, lifetime: float = TICKET_LIFETIME, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        #: ticket hash -> (VM name, expiry, who asked for it)
        self._tickets: dict[str, tuple[str, float, Principal]] = {}

    def issue(self, vm: str, holder: Principal) -> Ticket:
        """A new ticket for VM ``vm``, asked for by ``holder``."""
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._drop_expired(now)
            while len(self._tickets) >= MAX_TICKETS:
                del self._tickets[next(iter(self._tickets))]
            self._tickets[_digest(secret)] = (vm, now + self._lifetime, holder)
        return Ticket(secret=secret, vm=vm, expires_in=self._lifetime)

    def redeem(self, secret: str, vm: str) -> Principal:
        """Take the ticket ``secret`` for VM ``vm``: it is gone afterwards, valid or not.

        :return: who asked for it.
        :raise Unauthenticated: no such ticket, used already, expired, or for another VM
            (the message does not say which; the reason does).
        """
        now = self._clock()
        with self._lock:
            found = self._tickets.pop(_digest(secret), None)
            self._drop_expired(now)
        if found is None:
            raise Unauthenticated("unknown or used VNC ticket")
        owner, expiry, holder = found
        if now >= expiry:
            raise Unauthenticated("expired VNC ticket")
        if owner != vm:
            raise Unauthenticated(f"VNC ticket of vm {owner!r}")
        return holder

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, (_, expiry, _) in self._tickets.items() if now >= expiry]:
            del self._tickets[key]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def project_of(ctx: Corral, name: str) -> str | None:
    """VM ``name``'s project name, for the audit log (``None``: no such VM)."""
    if "\x00" in name:
        return None
    with ctx.db.session() as session:
        query = select(ProjectRow.name).join(VmRow, VmRow.project_id == ProjectRow.id)
        return session.scalars(query.where(VmRow.name == name)).first()


def _running(ctx: Corral, principal: Principal, name: str) -> records.Vm:
    """VM ``name``, once ``principal`` may operate it and it runs (or is paused).

    :raise NotFound: no such VM, or not in the caller's projects.
    :raise Forbidden: the caller's role may not operate it (viewers).
    :raise StateError: it is not starting, running, paused or stopping.
    """
    with ctx.db.session() as session:
        find_owned(session, principal, VmRow, "vm", name, Action.OPERATE)
        vm = records.load(ctx, session, name)
        require(name, Op.CONSOLE, vm.state)
        return vm


def serial_endpoint(ctx: Corral, principal: Principal, name: str) -> Endpoint:
    """Where VM ``name``'s serial console listens, once ``principal`` may attach to it.

    :raise NotFound: no such VM (or not the caller's).
    :raise Forbidden: the caller may not operate it.
    :raise StateError: it does not run.
    :raise Conflict: it has no serial console.
    """
    with audited(ctx, principal, "vm.console", "vm", name, project_of(ctx, name)):
        vm = _running(ctx, principal, name)
        if not vm.spec.serial.enabled:
            raise Conflict(f"vm {name!r} has no serial console")
        return Endpoint(path=vm.paths.serial_socket)


def text_endpoint(ctx: Corral, principal: Principal, name: str) -> Endpoint:
    """Where the terminal of VM ``name``'s ``curses`` display is served, once ``principal``
    may attach to it (:mod:`corral.qemu.ptyholder`).

    :raise NotFound: no such VM (or not the caller's).
    :raise Forbidden: the caller may not operate it.
    :raise StateError: it does not run.
    :raise Conflict: its display is not ``curses``.
    """
    with audited(ctx, principal, "vm.console.text", "vm", name, project_of(ctx, name)):
        vm = _running(ctx, principal, name)
        if vm.spec.display != "curses":
            raise Conflict(
                f"vm {name!r} has no text display (its display is {vm.spec.display!r}; "
                "define it with display 'curses')"
            )
        return Endpoint(path=vm.paths.text_socket)


def vnc_endpoint(vm: records.Vm) -> Endpoint:
    """Where ``vm``'s VNC display listens (pure: its spec and paths).

    :raise Conflict: it has no VNC display.
    """
    vnc = vm.spec.vnc
    if vnc is None:
        raise Conflict(f"vm {vm.name!r} has no VNC display (define it with vnc)")
    if vnc.listen == "unix":
        return Endpoint(path=vm.paths.vnc_socket)
    assert vnc.display is not None  # the spec's own check
    return Endpoint(port=5900 + vnc.display)


def vnc_ticket(ctx: Corral, principal: Principal, book: TicketBook, name: str) -> Ticket:
    """A single-use ticket to VM ``name``'s VNC display, for ``principal``.

    :raise NotFound: no such VM (or not the caller's).
    :raise Forbidden: the caller may not operate it.
    :raise StateError: it does not run.
    :raise Conflict: it has no VNC display.
    """
    with audited(ctx, principal, "vm.vnc.token", "vm", name, project_of(ctx, name)):
        vnc_endpoint(_running(ctx, principal, name))
        return book.issue(name, principal)


def redeem_vnc(ctx: Corral, book: TicketBook, name: str, secret: str) -> Endpoint:
    """Where VM ``name``'s VNC display listens, for the holder of ticket ``secret``.

    The ticket is what admits the connection; the audit log names who asked for it (an
    unknown ticket: :data:`ANONYMOUS`).

    :raise Unauthenticated: the ticket is not valid for this VM (any more).
    :raise StateError: the VM stopped meanwhile.
    :raise Conflict: it has no VNC display.
    """
    try:
        holder = book.redeem(secret, name)
    except Unauthenticated as exc:
        with audited(ctx, ANONYMOUS, "vm.vnc", "vm", name, project_of(ctx, name)):
            raise exc from None
    with audited(ctx, holder, "vm.vnc", "vm", name, project_of(ctx, name)):
        with ctx.db.session() as session:
            vm = records.load(ctx, session, name)
            require(name, Op.CONSOLE, vm.state)
        return vnc_endpoint(vm)
