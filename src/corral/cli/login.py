"""``corral login``, ``logout`` and ``whoami``: which daemon the CLI talks to, as whom.

``corral login URL --user NAME`` exchanges the user's password for a token that expires
(``POST /login``), checks it with ``/whoami`` and keeps it (:mod:`corral.client.credentials`,
mode 0600); every command after it talks to that daemon as that user. The password comes from
a prompt that does not echo it, or from standard input with ``--password-stdin``; with
neither a terminal nor ``--password-stdin`` the login fails at once rather than wait.
``--token`` keeps a token made before instead. ``corral logout`` forgets the login and
revokes the token if ``corral login`` made it.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli import render
from corral.cli.access import read_password, when
from corral.errors import CorralError, InvalidInput

if TYPE_CHECKING:
    from corral.api.schemas.access import WhoamiRead
    from corral.client.credentials import Login

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def base_url(text: str) -> str:
    """The daemon's address as the client takes it: ``http://HOST:PORT``.

    ``HOST:PORT`` gets ``http://``; a trailing ``/`` or ``/api/v1`` goes.

    :raise InvalidInput: not an http or https address with a host (field ``url``).
    """
    from urllib.parse import urlsplit

    url = text.strip()
    if "://" not in url:
        url = f"http://{url}"
    url = url.rstrip("/").removesuffix("/api/v1").rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - refuses a port that is not a number
    except ValueError as exc:
        raise InvalidInput("url", f"{text!r} is not an address: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url", f"{text!r} is not http://HOST:PORT or https://HOST:PORT")
    return url


def _password(user: str, url: str, from_stdin: bool) -> str:
    """The password: from standard input, or asked on the terminal without echo.

    :raise InvalidInput: neither standard input was chosen nor is it a terminal, or the
        password is empty (field ``password``).
    """
    import getpass

    if from_stdin:
        return read_password()
    if not sys.stdin.isatty():
        raise InvalidInput(
            "password",
            "no terminal to ask it on: give --password-stdin (or --token with a token)",
        )
    password = getpass.getpass(f"password of {user} at {url}: ")
    if not password:
        raise InvalidInput("password", "none was given")
    return password


def _token(text: str) -> str:
    """The token ``--token`` gives; ``-`` reads it from standard input (out of ``ps``)."""
    token = read_password("token") if text == "-" else text.strip()
    if not token:
        raise InvalidInput("token", "is empty")
    return token


def _whoami(url: str, token: str) -> WhoamiRead:
    from corral.client.api import Client

    with Client(url=url, token=token) as api:
        return api.whoami()


def login_cmd(
    url: Annotated[
        str,
        typer.Argument(
            metavar="URL", help="corrald's address: http://HOST:PORT (https:// with TLS)."
        ),
    ],
    user: Annotated[
        str | None, typer.Option("--user", metavar="NAME", help="Log in as this user.")
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from standard input."),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="Keep this API token instead of logging in with a password ('-': read it "
            "from standard input).",
        ),
    ] = None,
    expires: Annotated[
        str,
        typer.Option(metavar="DURATION", help="Lifetime of the token a password login makes."),
    ] = "30d",
) -> None:
    """Log in to a remote corrald: later commands talk to it as that user."""
    from corral.access.checks import lifetime
    from corral.client.api import Client
    from corral.client.credentials import Login, save

    base = base_url(url)
    expires_at: str | None = None
    if token is not None:
        if password_stdin:
            raise InvalidInput("password-stdin", "is for a password login: not with --token")
        secret = _token(token)
    else:
        if user is None:
            raise InvalidInput("user", "give the user to log in as (--user NAME), or --token")
        lifetime(expires)
        password = _password(user, base, password_stdin)
        with Client(url=base) as anonymous:
            new = anonymous.login(user, password, expires)
        secret, expires_at = new.token, new.expires_at
    who = _whoami(base, secret)
    if user is not None and who.name != user:
        raise InvalidInput("user", f"the token is {who.name}'s, not {user}'s")
    path = save(Login(url=base, token=secret, user=who.name))
    render.out.print(
        f"logged in to {base} as {who.name} ({who.role}; projects: "
        f"{', '.join(who.projects) or 'none'})",
        markup=False,
    )
    if expires_at is not None:
        render.out.print(f"the token expires {when(expires_at)} UTC", markup=False)
    render.out.print(f"saved in {path}", markup=False)


def _saved() -> Login | None:
    """The saved login (not ``$CORRAL_URL``'s); ``None`` if there is none, or it is not one."""
    from corral.client.credentials import Login, login_path

    try:
        raw = json.loads(login_path().read_text())
        return Login(url=str(raw["url"]), token=str(raw["token"]), user=str(raw.get("user", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _revoke(login: Login) -> str:
    """Revoke the saved token if ``corral login`` made it; what became of it, in words."""
    from corral.access.checks import LOGIN_TOKEN_NAME, token_id_of
    from corral.client.api import Client

    token_id = token_id_of(login.token)
    if token_id is None:
        return "it held no corral token"
    try:
        with Client(url=login.url, token=login.token) as api:
            if api.get_token(token_id).name != LOGIN_TOKEN_NAME:
                return "its token was not made by corral login and stays valid"
            api.revoke_token(token_id)
    except CorralError as exc:
        return f"its token could not be revoked ({exc.message}); it expires on its own"
    return "its token is revoked"


def logout_cmd(
    keep_token: Annotated[
        bool,
        typer.Option("--keep-token", help="Forget the login but leave its token valid."),
    ] = False,
) -> None:
    """Forget the saved login (later commands talk to the local daemon again)."""
    from corral.client.credentials import login_path, remove

    saved = _saved()
    outcome = "" if saved is None or keep_token else f"; {_revoke(saved)}"
    if not remove():
        render.out.print("not logged in", markup=False)
        return
    where = f" of {saved.url}" if saved is not None else f" ({login_path()})"
    render.out.print(f"logged out{where}{outcome}", markup=False)


def whoami_cmd(json_: Json = False) -> None:
    """Show who the CLI acts as, on which daemon, and the projects it sees."""
    from rich.markup import escape

    from corral.cli.context import open_client

    with open_client() as api:
        who = api.whoami()
        address = api.address
    if json_:
        render.print_json({**who.model_dump(), "daemon": address})
        return
    local = " (the local administrator)" if who.local else ""
    render.fields(
        [
            ("User", escape(who.name) + local),
            ("Role", who.role),
            ("Daemon", escape(address)),
            ("Projects", escape(", ".join(who.projects)) or "-"),
        ]
    )
