"""The one error hierarchy of corral.

Every failure that corral reports to a user is a :class:`CorralError`. Each class carries the
context a user needs (what, which field, which state) as attributes, a one-line message, and the
HTTP status an API maps it to::

    CorralError                      500  root; never raised itself
    ├── InvalidInput                 422  a value is wrong: names the field, why, what is allowed
    ├── Unauthenticated              401  no valid credentials (unknown, revoked, expired token)
    ├── Forbidden                    403  the role does not allow the action on a visible object
    ├── QuotaExceeded                403  a project's quota would be exceeded: names the quota
    ├── NotFound                     404  no such VM / image / disk (or not visible to the caller)
    ├── Conflict                     409
    │   ├── AlreadyExists            409  the name is taken
    │   ├── StateError               409  the operation is not allowed in the VM's current state
    │   ├── InUse                    409  an image still backs VMs, a VM still runs
    │   ├── Busy                     409  another command holds the VM's lock
    │   └── InsufficientCapacity     409  the host has too little free memory, disk or CPUs
    ├── ImageError                   422  a file is not a usable image (corrupt, refers to others)
    ├── HostError                    503  the host lacks something (QEMU binary, KVM, disk space)
    ├── QemuError                    500
    │   ├── LaunchError              500  QEMU did not start: carries argv and its last words
    │   ├── MonitorError             500  a QMP command failed: carries what was sent and received
    │   └── ToolError                500  qemu-img (or another tool) failed: argv and stderr
    ├── GuestTimeout                 504  a guest did not reach a state before its deadline
    └── GuestBuildError              500  the reference guest could not be built
"""

from __future__ import annotations

from collections.abc import Sequence


class CorralError(Exception):
    """Root of every error corral reports.

    :param message: one line that says what failed and why.
    """

    #: HTTP status the API answers with.
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: The one-line message shown to users.
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(CorralError):
    """A user-supplied value is not acceptable.

    :param field: dotted path of the offending field (``disks.0.size``).
    :param reason: why the value is refused, including what is allowed.
    """

    status = 422

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        #: Dotted path of the field.
        self.field = field
        #: Why it was refused.
        self.reason = reason


class Unauthenticated(CorralError):
    """The credentials are missing or not valid.

    The message does not say why unless told to (an unknown token and a revoked one read the
    same to a client); :attr:`reason` does, for the audit log.

    :param reason: why the credentials were refused (``revoked``, ``expired``, ...).
    :param disclose: put ``reason`` in the message (when it tells an attacker nothing).
    """

    status = 401

    def __init__(self, reason: str, disclose: bool = False) -> None:
        super().__init__(
            f"authentication failed: {reason if disclose else 'the credentials are not valid'}"
        )
        #: Why they were refused; for the audit log, never for the client.
        self.reason = reason


class Forbidden(CorralError):
    """The caller sees the object but its role does not allow the action.

    Raised only for objects the caller may read: an object of a project the caller is no
    member of is :class:`NotFound`, so that its existence does not leak.

    :param actor: who asked (a user name or ``local:<uid>``).
    :param role: the actor's role (``viewer``).
    :param action: what was asked (``delete``, ``manage``).
    :param target: what it was asked on (``vm 'web'``, ``users``).
    """

    status = 403

    def __init__(self, actor: str, role: str, action: str, target: str) -> None:
        super().__init__(f"{actor} ({role}) may not {action} {target}")
        self.actor = actor
        self.role = role
        self.action = action
        self.target = target


class QuotaExceeded(CorralError):
    """A create would take a project past one of its quotas; checked before anything is made.

    :param project: the project's name.
    :param quota: which quota: ``instances``, ``vcpus``, ``memory`` or ``disk``.
    :param limit: the quota, in the resource's unit (a count, vCPUs, bytes).
    :param used: what the project uses now.
    :param requested: what the create asks for on top.
    :param detail: the sentence that explains the three figures.
    """

    status = 403

    def __init__(
        self, project: str, quota: str, limit: int, used: int, requested: int, detail: str
    ) -> None:
        super().__init__(f"quota {quota} of project {project!r} exceeded: {detail}")
        self.project = project
        self.quota = quota
        self.limit = limit
        self.used = used
        self.requested = requested


class NotFound(CorralError):
    """No object of that kind has that name.

    :param hint: what to do instead, appended after a semicolon (the names that exist).
    """

    status = 404

    def __init__(self, kind: str, name: str, hint: str = "") -> None:
        super().__init__(f"{kind} {name!r} not found" + (f"; {hint}" if hint else ""))
        #: Kind of object: ``vm``, ``image``, ``disk``.
        self.kind = kind
        #: The name that was looked up.
        self.name = name
        #: What to do instead, if anything.
        self.hint = hint


class Conflict(CorralError):
    """The request conflicts with the current state of an object."""

    status = 409


class AlreadyExists(Conflict):
    """The name is already taken."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} already exists")
        self.kind = kind
        self.name = name


class StateError(Conflict):
    """An operation is not allowed in the VM's current state.

    :param vm: the VM's name.
    :param operation: what was asked (``resume``).
    :param current: the VM's state now.
    :param allowed: the states in which the operation is allowed.
    :param hint: what to do about it (``stop it first``), appended to the message.
    """

    def __init__(
        self, vm: str, operation: str, current: str, allowed: Sequence[str], hint: str = ""
    ) -> None:
        allowed_text = ", ".join(allowed) if allowed else "no state"
        super().__init__(
            f"cannot {operation} vm {vm!r}: it is {current}; {operation} needs {allowed_text}"
            + (f": {hint}" if hint else "")
        )
        self.vm = vm
        self.operation = operation
        self.current = current
        self.allowed = tuple(allowed)


class InUse(Conflict):
    """An object is still used by others."""

    def __init__(self, kind: str, name: str, users: Sequence[str]) -> None:
        super().__init__(f"{kind} {name!r} is in use by {', '.join(users)}")
        self.kind = kind
        self.name = name
        self.users = tuple(users)


class Busy(Conflict):
    """Another corral command is working on the same object."""

    def __init__(self, kind: str, name: str, waited: float) -> None:
        super().__init__(
            f"{kind} {name!r} is busy: another corral command holds it (waited {waited:.0f} s)"
        )
        self.kind = kind
        self.name = name


class InsufficientCapacity(Conflict):
    """The host cannot hold what was asked for; checked before anything is created.

    :param resource: ``memory``, ``disk`` or ``vcpus``.
    :param needed: what the request needs, in the resource's unit (bytes, vCPUs).
    :param available: what the host has free.
    :param detail: the sentence that explains both figures.
    """

    def __init__(self, resource: str, needed: int, available: int, detail: str) -> None:
        super().__init__(f"not enough {resource}: {detail}")
        self.resource = resource
        self.needed = needed
        self.available = available


class ImageError(CorralError):
    """A file is not an image corral accepts.

    :param path: the file.
    :param reason: what is wrong with it.
    """

    status = 422

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class HostError(CorralError):
    """The host lacks a capability corral needs."""

    status = 503


class QemuError(CorralError):
    """QEMU or one of its tools failed."""


class LaunchError(QemuError):
    """QEMU did not start.

    :param argv: the command line that was run.
    :param exitcode: QEMU's exit status, if it exited.
    :param output: QEMU's last lines of output.
    """

    def __init__(self, argv: Sequence[str], exitcode: int | None, output: Sequence[str]) -> None:
        last = output[-1] if output else "no output"
        code = "did not answer" if exitcode is None else f"exited with status {exitcode}"
        super().__init__(f"QEMU {code}: {last}")
        self.argv = tuple(argv)
        self.exitcode = exitcode
        self.output = tuple(output)


class MonitorError(QemuError):
    """A QMP command failed or the monitor could not be reached.

    :param command: the QMP command name.
    :param reason: QEMU's error description or the transport failure.
    :param sent: the arguments sent.
    :param error_class: QEMU's error class, if QEMU answered with an error.
    """

    def __init__(
        self,
        command: str,
        reason: str,
        sent: dict[str, object] | None = None,
        error_class: str | None = None,
    ) -> None:
        super().__init__(f"QMP {command} failed: {reason}")
        self.command = command
        self.reason = reason
        self.sent = sent or {}
        self.error_class = error_class


class ToolError(QemuError):
    """An external tool (qemu-img, mkfs.ext4, apt-get) failed.

    :param argv: the command line.
    :param exitcode: its exit status.
    :param stderr: its last lines of error output.
    """

    def __init__(self, argv: Sequence[str], exitcode: int, stderr: str) -> None:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no error output"
        super().__init__(f"{argv[0]} failed with status {exitcode}: {last}")
        self.argv = tuple(argv)
        self.exitcode = exitcode
        self.stderr = stderr


class GuestTimeout(CorralError):
    """A guest did not reach a state before its deadline.

    :param vm: the VM's name.
    :param waited_for: what was awaited (``ready marker``).
    :param seconds: the deadline.
    :param last_lines: the last serial console lines, to show what the guest was doing.
    """

    status = 504

    def __init__(
        self, vm: str, waited_for: str, seconds: float, last_lines: Sequence[str] = ()
    ) -> None:
        super().__init__(f"vm {vm!r}: no {waited_for} within {seconds:.0f} s")
        self.vm = vm
        self.waited_for = waited_for
        self.seconds = seconds
        self.last_lines = tuple(last_lines)


class GuestBuildError(CorralError):
    """The reference guest could not be built."""
