"""``corral key``: SSH key pairs that launches install in guests, through corrald's API.

A key pair is made here, on the machine where its private key is to live: the private key is
written to a new 0600 file and never sent anywhere; corrald is sent the public key and the
private key's path (for ``corral ssh`` on this machine). If corrald refuses it, the files
just written are removed again. An imported public key is checked here first, so that a
private key given by mistake is refused before anything is sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.cli import render
from corral.cli.context import open_client

if TYPE_CHECKING:
    from corral.api.schemas import KeyPairRead

key_app = typer.Typer(
    help="Create, import, list, show and delete SSH key pairs (corral never keeps private keys).",
    no_args_is_help=True,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(metavar="NAME", help="The key pair's name.")]
Project = Annotated[
    str | None,
    typer.Option(
        "--project",
        metavar="NAME",
        help="The project that owns it; launches in that project only may use it "
        "(default: default).",
    ),
]


#: The project that owns what is made without one.
DEFAULT_PROJECT = "default"
#: What ``--json`` prints of a key pair, in this order.
JSON_FIELDS = (
    "name",
    "project",
    "kind",
    "bits",
    "fingerprint",
    "comment",
    "public_key",
    "private_key_path",
    "created_at",
)


def as_dict(key: KeyPairRead) -> dict[str, Any]:
    """A key pair as ``--json`` prints it (the fields and order ``corral key`` always had)."""
    return {field: getattr(key, field) for field in JSON_FIELDS}


def _created(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _warn(message: str | None) -> None:
    if message:
        render.err.print(f"warning: {message}", markup=False, soft_wrap=True)


@key_app.command("create")
def create_cmd(
    name: Name,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Private key file to write (default ~/.ssh/corral-NAME); must not exist."
        ),
    ] = None,
    project: Project = None,
) -> None:
    """Create an ed25519 key pair; the private key is written once, to a new 0600 file."""
    from corral.api.schemas.catalogue import KeyPairCreate
    from corral.client.transport import ApiError
    from corral.compute.keys import write_key_files
    from corral.errors import AlreadyExists
    from corral.spec.keys import check_key_name

    check_key_name(name)
    with open_client() as api:
        try:
            api.get_keypair(name)
        except ApiError as exc:
            if exc.status != 404:
                raise
        else:  # said before any file is looked at, as when the name is taken
            raise AlreadyExists("key pair", name)
        files = write_key_files(name, out)
        try:
            view = api.create_keypair(
                KeyPairCreate.model_construct(
                    name=name,
                    public_key=files.key.line,
                    project=project or DEFAULT_PROJECT,
                    private_key_path=str(files.private),
                )
            )
        except BaseException:
            files.remove()
            raise
    path = files.private
    say = render.out
    say.print(f"key pair {view.name} created ({view.kind})", markup=False)
    say.print(f"private key: {path} (mode 0600)", markup=False, soft_wrap=True)
    say.print(f"public key:  {path}.pub", markup=False, soft_wrap=True)
    say.print(f"fingerprint: {view.fingerprint}", markup=False)
    say.print(
        "corral does not keep the private key: that file is its only copy.",
        markup=False,
        soft_wrap=True,
    )


@key_app.command("import")
def import_cmd(
    name: Name,
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="Public key file (the .pub one); - for stdin.")
    ],
    private_key: Annotated[
        Path | None,
        typer.Option(
            "--private-key",
            help="Where the private key is, for `corral ssh` (default: FILE without .pub, "
            "if it exists). Only its path is recorded.",
        ),
    ] = None,
    project: Project = None,
) -> None:
    """Import an OpenSSH public key (ed25519, ECDSA, RSA of 2048 bits or more, FIDO)."""
    from corral.api.schemas.catalogue import KeyPairCreate
    from corral.compute.keys import private_key_warning, read_public_key
    from corral.spec.keys import check_key_name

    check_key_name(name)
    key, private = read_public_key(
        None if file == "-" else Path(file), private_key, sys.stdin.buffer
    )
    with open_client() as api:
        view = api.create_keypair(
            KeyPairCreate.model_construct(
                name=name,
                public_key=key.line,
                project=project or DEFAULT_PROJECT,
                private_key_path=None if private is None else str(private),
            )
        )
    render.out.print(
        f"key pair {view.name} imported ({view.kind}, {view.fingerprint})", markup=False
    )
    if view.private_key_path is None:
        render.out.print(
            "private key: not recorded (give --private-key PATH so `corral ssh` finds it)",
            markup=False,
        )
    else:
        render.out.print(f"private key: {view.private_key_path}", markup=False, soft_wrap=True)
        _warn(private_key_warning(view.private_key_path))


@key_app.command("list")
def list_cmd(json_: Json = False) -> None:
    """List key pairs with their fingerprints."""
    from rich.markup import escape

    with open_client() as api:
        views = api.all_keypairs()
    if json_:
        render.print_json([as_dict(v) for v in views])
        return
    render.table(
        None,
        ["Name", "Project", "Type", "Fingerprint", "Private Key", "Created"],
        (
            [
                v.name,
                v.project,
                v.kind,
                v.fingerprint,
                escape(v.private_key_path or "-"),
                _created(v.created_at),
            ]
            for v in views
        ),
    )


@key_app.command("show")
def show_cmd(name: Name, json_: Json = False) -> None:
    """Show one key pair, with its public key line."""
    from rich.markup import escape

    with open_client() as api:
        v = api.get_keypair(name)
    if json_:
        render.print_json(as_dict(v))
        return
    private = "-"
    if v.private_key_path is not None:
        missing = "" if Path(v.private_key_path).is_file() else " (missing)"
        private = escape(v.private_key_path) + missing
    render.fields(
        [
            ("Name", v.name),
            ("Project", v.project),
            ("Type", f"{v.kind} ({v.bits} bits)"),
            ("Fingerprint", v.fingerprint),
            ("Comment", escape(v.comment) or "-"),
            ("Private key", private),
            ("Created", _created(v.created_at)),
            ("Public key", escape(v.public_key)),
        ]
    )


@key_app.command("delete")
def delete_cmd(name: Name) -> None:
    """Forget a key pair; its private key file and launched instances keep the key."""
    with open_client() as api:
        view = api.delete_keypair(name)
    render.out.print(f"key pair {view.name} deleted", markup=False)
    if view.private_key_path is not None:
        render.out.print(
            f"the private key file {view.private_key_path} was left in place "
            "(corral never deletes it)",
            markup=False,
            soft_wrap=True,
        )
    render.out.print("instances launched with this key keep it in their authorized_keys")
