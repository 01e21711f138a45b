"""Key pairs: named SSH public keys that launches install in guests.

corral records the public key and, for ``corral ssh``, the *path* of the private key; never the
private key itself. :func:`write_key_files` writes a new ed25519 private key once, to a new
file that only its owner can read (``~/.ssh/corral-<name>`` unless told otherwise), with the
public half beside it in ``<path>.pub``: on the machine that asks, never on corrald's, which
only ever receives the public key (:func:`register_key`). :func:`create_key` does both where
the state directory is.

Decisions:

* the same public key may be recorded under several names, as EC2 allows: a name is what a
  launch refers to, and two names for one key harm nothing;
* :func:`delete_key` removes the record only; the private key file stays where it is, and
  instances launched with the key keep it in their ``authorized_keys``;
* a private key path registered through the API is a hint for ``corral ssh`` on the machine
  that made the key: corrald checks that it is an absolute path, not that the file exists;
* a key pair belongs to one project (``default`` unless told otherwise), and a launch installs
  only its own project's key pairs (see :mod:`corral.compute.ownership`).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from corral.compute.context import Corral
from corral.compute.locks import ObjectLock
from corral.compute.ownership import project_name, project_names, resolve_project
from corral.errors import AlreadyExists, InvalidInput, NotFound
from corral.spec.keys import (
    KEY_NAME_PATTERN,
    MAX_KEY_TEXT,
    PublicKey,
    check_key_name,
    decode_key_file,
    parse_public_key,
)
from corral.store.models import KeyPairRow

#: File name prefix of the private keys :func:`create_key` writes into ``~/.ssh``.
DEFAULT_KEY_PREFIX = "corral-"


@dataclass(frozen=True)
class KeyPairView:
    """A recorded key pair, as listings and ``show`` present it."""

    name: str
    #: The name of the project that owns it.
    project: str
    #: The key type as OpenSSH names it (``ssh-ed25519``).
    kind: str
    bits: int
    #: ``SHA256:...``, as ``ssh-keygen -l`` prints it.
    fingerprint: str
    comment: str
    #: The ``authorized_keys`` line launches install.
    public_key: str
    #: Where the private key is (a path recorded at create or import), if known.
    private_key_path: str | None
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_private_key_path(name: str) -> Path:
    """Where :func:`create_key` writes the private key of ``name``: ``~/.ssh/corral-<name>``."""
    return Path.home() / ".ssh" / f"{DEFAULT_KEY_PREFIX}{name}"


def _lock(ctx: Corral, name: str) -> ObjectLock:
    return ObjectLock(ctx.home.locks, "keypair", name)


def _view(row: KeyPairRow, project: str) -> KeyPairView:
    try:
        bits = parse_public_key(row.public_key).bits
    except InvalidInput:  # recorded under rules that have since become stricter
        bits = 0
    return KeyPairView(
        name=row.name,
        project=project,
        kind=row.kind,
        bits=bits,
        fingerprint=row.fingerprint,
        comment=row.comment,
        public_key=row.public_key,
        private_key_path=row.private_key_path,
        # SQLite hands back naive datetimes; they are UTC.
        created_at=row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC).isoformat(),
    )


def _exists(ctx: Corral, name: str) -> bool:
    with ctx.db.session() as session:
        return (
            session.scalars(select(KeyPairRow.id).where(KeyPairRow.name == name)).first()
            is not None
        )


def _project(ctx: Corral, project: str | None) -> tuple[str, str]:
    """The id and name of ``project`` (``None`` is ``default``).

    :raise NotFound: there is no such project.
    """
    with ctx.db.session() as session:
        row = resolve_project(session, project)
        return row.id, row.name


def _record(
    ctx: Corral,
    name: str,
    key: PublicKey,
    private_key_path: str | None,
    project: tuple[str, str],
) -> KeyPairView:
    """Insert the row (the caller holds the name's lock and checked it is free)."""
    row = KeyPairRow(
        id=str(uuid.uuid4()),
        name=name,
        project_id=project[0],
        kind=key.kind,
        public_key=key.line,
        fingerprint=key.fingerprint,
        comment=key.comment,
        private_key_path=private_key_path,
    )
    try:
        with ctx.db.session() as session:
            session.add(row)
    except IntegrityError:
        raise AlreadyExists("key pair", name) from None
    return _view(row, project[1])


def check_private_key_path(path: Path, field: str = "private_key") -> Path:
    """``path`` made absolute, after checking it is a regular file (its content is not read).

    :raise InvalidInput: it does not exist, is not a regular file, or is a ``.pub`` file.
    """
    path = path.expanduser().absolute()
    if path.name.endswith(".pub"):
        raise InvalidInput(
            field, f"{path} is a public key file; give the private key (the file without .pub)"
        )
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InvalidInput(field, f"{path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(field, f"{path} cannot be checked: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(field, f"{path} is not a regular file")
    return path


def private_key_warning(path: str | Path) -> str | None:
    """A warning if the private key file at ``path`` is readable by others (ssh refuses it)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    if mode & 0o077:
        return (
            f"private key {path} has mode {stat.S_IMODE(mode):04o}: others can read it and ssh "
            f"will refuse to use it; run: chmod 600 {path}"
        )
    return None


def check_private_key_hint(text: str, field: str = "private_key_path") -> str:
    """Check a private key's path as a hint from another machine (the file is not looked at).

    :raise InvalidInput: it is not absolute, holds control characters, or names a ``.pub``
        file.
    """
    if not text.startswith("/"):
        raise InvalidInput(field, f"{_shown(text)} is not an absolute path")
    if not text.isprintable():
        raise InvalidInput(field, "must be one line of printable characters")
    if text.endswith(".pub"):
        raise InvalidInput(
            field, f"{text} is a public key file; give the private key (the file without .pub)"
        )
    return text


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def register_key(
    ctx: Corral,
    name: str,
    public_key_text: str,
    private_key_path: str | None = None,
    field: str = "public_key",
    project: str | None = None,
) -> KeyPairView:
    """Record a public key under ``name``; nothing is recorded if anything is wrong.

    :param public_key_text: one OpenSSH public key (what a ``.pub`` file holds).
    :param private_key_path: where the matching private key is on the machine that made it,
        for ``corral ssh`` there: an absolute path, recorded as it is.
    :param field: what errors about the key name (the file it came from).
    :param project: the project it goes into, by name; ``None`` is ``default``.
    :raise InvalidInput: a bad name, public key or private key path.
    :raise NotFound: no such project.
    :raise AlreadyExists: a key pair already has that name.
    """
    check_key_name(name)
    key = parse_public_key(public_key_text, field)
    if private_key_path is not None:
        check_private_key_hint(private_key_path)
    owner = _project(ctx, project)
    with _lock(ctx, name):
        if _exists(ctx, name):
            raise AlreadyExists("key pair", name)
        return _record(ctx, name, key, private_key_path, owner)


def import_key(
    ctx: Corral,
    name: str,
    public_key_text: str,
    private_key_path: Path | None = None,
    field: str = "public_key",
    project: str | None = None,
) -> KeyPairView:
    """Record a public key under ``name``, with a private key path checked on this machine.

    :param public_key_text: one OpenSSH public key (what a ``.pub`` file holds).
    :param private_key_path: where the matching private key is, for ``corral ssh``; it must
        be a regular file, whose content is never read.
    :param field: what errors about the key name (the file it came from).
    :param project: the project it goes into, by name; ``None`` is ``default``.
    :raise InvalidInput: a bad name, public key or private key path.
    :raise NotFound: no such project.
    :raise AlreadyExists: a key pair already has that name.
    """
    check_key_name(name)
    parse_public_key(public_key_text, field)
    private = None if private_key_path is None else check_private_key_path(private_key_path)
    hint = None if private is None else str(private)
    return register_key(ctx, name, public_key_text, hint, field, project)


def read_public_key(
    file: Path | None, private_key_path: Path | None = None, stdin: BinaryIO | None = None
) -> tuple[PublicKey, Path | None]:
    """Read and check the public key in ``file`` (``None``: ``stdin``), and where its private
    key is on this machine.

    Without ``private_key_path``, a ``file`` named ``X.pub`` next to a regular file ``X``
    gives ``X`` as the private key (what ``ssh-keygen`` writes).

    :return: the key and the private key's absolute path, if known.
    :raise InvalidInput: the file is missing or not one acceptable public key (the error names
        the file, or ``stdin``), or the private key path is not a regular file.
    """
    if file is None:
        source = stdin if stdin is not None else sys.stdin.buffer
        key = parse_public_key(decode_key_file(source.read(MAX_KEY_TEXT + 1), "stdin"), "stdin")
    else:
        try:
            with file.open("rb") as handle:
                data = handle.read(MAX_KEY_TEXT + 1)
        except FileNotFoundError:
            raise InvalidInput("file", f"{file} does not exist") from None
        except IsADirectoryError:
            raise InvalidInput("file", f"{file} is a directory, not a public key file") from None
        except OSError as exc:
            raise InvalidInput("file", f"{file} cannot be read: {exc.strerror or exc}") from None
        key = parse_public_key(decode_key_file(data, str(file)), str(file))
        if private_key_path is None and file.name.endswith(".pub"):
            companion = file.with_name(file.name.removesuffix(".pub"))
            if companion.is_file():
                private_key_path = companion
    if private_key_path is None:
        return key, None
    return key, check_private_key_path(private_key_path)


def import_key_file(
    ctx: Corral,
    name: str,
    file: Path,
    private_key_path: Path | None = None,
    project: str | None = None,
) -> KeyPairView:
    """Record the public key in ``file`` under ``name`` (see :func:`read_public_key`).

    :param project: the project it goes into, by name; ``None`` is ``default``.
    :raise InvalidInput: the file is missing or not one acceptable public key (the error names
        the file), or a bad name or private key path.
    :raise NotFound: no such project.
    :raise AlreadyExists: a key pair already has that name.
    """
    check_key_name(name)
    key, private = read_public_key(file, private_key_path)
    hint = None if private is None else str(private)
    return register_key(ctx, name, key.line, hint, str(file), project)


@dataclass(frozen=True)
class KeyFiles:
    """A key pair's new files, and its public key."""

    #: The private key (mode 0600).
    private: Path
    #: ``<private>.pub``.
    public: Path
    key: PublicKey

    def remove(self) -> None:
        """Remove both files (what is left of them)."""
        for path in (self.private, self.public):
            path.unlink(missing_ok=True)


def new_key(name: str) -> tuple[bytes, PublicKey]:
    """A new ed25519 key pair for the key pair ``name``: the private key (OpenSSH PEM, not
    encrypted) and the public key, commented ``corral-<name>``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    secret = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    openssh = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return secret, parse_public_key(f"{openssh.decode()} {DEFAULT_KEY_PREFIX}{name}")


def write_key_files(name: str, out: Path | None = None) -> KeyFiles:
    """Create an ed25519 key pair as two new files; neither is ever overwritten.

    The private key goes to ``out`` (default :func:`default_private_key_path`, creating
    ``~/.ssh`` with mode 0700 if needed), mode 0600, and the public key to ``<out>.pub``.
    Either both files are written or neither is.

    :raise InvalidInput: a bad name, or a file that exists or cannot be written (``out``).
    """
    check_key_name(name)
    path = default_private_key_path(name) if out is None else out.expanduser().absolute()
    public_path = path.with_name(path.name + ".pub")
    if out is None:
        _ensure_ssh_dir(path.parent)
    elif not path.parent.is_dir():
        raise InvalidInput("out", f"{path.parent} is not a directory")
    for target in (path, public_path):
        if target.exists() or target.is_symlink():
            raise _file_exists(target)
    secret, key = new_key(name)
    files = KeyFiles(private=path, public=public_path, key=key)
    written: list[Path] = []
    try:
        _write_new(path, secret, 0o600)
        written.append(path)
        _write_new(public_path, (key.line + "\n").encode(), 0o644)
    except BaseException:
        for done in written:
            done.unlink(missing_ok=True)
        raise
    return files


def create_key(
    ctx: Corral, name: str, out: Path | None = None, project: str | None = None
) -> tuple[KeyPairView, Path]:
    """Create an ed25519 key pair (:func:`write_key_files`) and record it, on the machine of
    the state directory. All or nothing: if recording fails, the files are removed.

    :param project: the project it goes into, by name; ``None`` is ``default``.
    :return: the recorded key pair and the private key's path.
    :raise InvalidInput: a bad name, or a file that exists or cannot be written (``out``).
    :raise NotFound: no such project (checked before any file is written).
    :raise AlreadyExists: a key pair already has that name.
    """
    check_key_name(name)
    owner = _project(ctx, project)
    with _lock(ctx, name):
        if _exists(ctx, name):
            raise AlreadyExists("key pair", name)
        files = write_key_files(name, out)
        try:
            view = _record(ctx, name, files.key, str(files.private), owner)
        except BaseException:
            files.remove()
            raise
    return view, files.private


def _ensure_ssh_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            "out", f"cannot create {directory}: {exc.strerror or exc}; choose a path with --out"
        ) from None
    if not directory.is_dir():
        raise InvalidInput("out", f"{directory} is not a directory; choose a path with --out")


def _file_exists(path: Path) -> InvalidInput:
    return InvalidInput(
        "out",
        f"{path} already exists and corral never overwrites a key file; "
        "choose another path with --out",
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a file that must not exist yet, with exactly ``mode``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise _file_exists(path) from None
    except OSError as exc:
        raise InvalidInput("out", f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any here
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def list_keys(ctx: Corral) -> list[KeyPairView]:
    """Every recorded key pair, by name."""
    with ctx.db.session() as session:
        rows = list(session.scalars(select(KeyPairRow).order_by(KeyPairRow.name)))
        names = project_names(session)
    return [_view(row, names.get(row.project_id, row.project_id)) for row in rows]


def get_key(ctx: Corral, name: str) -> KeyPairView:
    """:raise NotFound: no key pair is called ``name``."""
    with ctx.db.session() as session:
        row = session.scalars(select(KeyPairRow).where(KeyPairRow.name == name)).first()
        if row is None:
            raise NotFound("key pair", name)
        return _view(row, project_name(session, row.project_id))


def delete_key(ctx: Corral, name: str) -> KeyPairView:
    """Forget key pair ``name``. The private key file is left alone.

    :return: what was deleted (its private key path, to tell the user the file remains).
    :raise NotFound: no such key pair.
    """
    if not re.match(KEY_NAME_PATTERN, name):  # no such name can exist; keep it off paths
        raise NotFound("key pair", name)
    with _lock(ctx, name), ctx.db.session() as session:
        row = session.scalars(select(KeyPairRow).where(KeyPairRow.name == name)).first()
        if row is None:
            raise NotFound("key pair", name)
        view = _view(row, project_name(session, row.project_id))
        session.delete(row)
    return view
