"""Where the CLI sends its requests: a remote daemon it logged in to, or the local one.

``corral login URL`` saves the daemon's address and a token in
``$XDG_CONFIG_HOME/corral/login.json`` (mode 0600, never echoed); ``corral logout`` removes it.
``$CORRAL_URL`` with ``$CORRAL_TOKEN`` overrides the file, for scripts. With neither, the CLI
talks to the local daemon of ``$CORRAL_HOME`` over its UNIX socket, starting it when none runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from corral.errors import InvalidInput

FILE_NAME = "login.json"


@dataclass(frozen=True)
class Login:
    """A remote daemon and the token that signs requests to it."""

    url: str
    token: str
    #: Who the token is of, for ``corral login --status``.
    user: str = ""


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/corral`` (``~/.config/corral``)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "corral"


def login_path() -> Path:
    return config_dir() / FILE_NAME


def from_environment() -> Login | None:
    """``$CORRAL_URL`` and ``$CORRAL_TOKEN``, when the URL is set.

    :raise InvalidInput: ``$CORRAL_URL`` without ``$CORRAL_TOKEN``.
    """
    url = os.environ.get("CORRAL_URL", "").strip()
    if not url:
        return None
    token = os.environ.get("CORRAL_TOKEN", "").strip()
    if not token:
        raise InvalidInput(
            "CORRAL_TOKEN", "must be set with CORRAL_URL (a token: corral token create)"
        )
    return Login(url=url, token=token)


def load() -> Login | None:
    """The environment's login, else the saved one, else ``None`` (the local daemon).

    :raise InvalidInput: the saved file is not a login (names the file).
    """
    env = from_environment()
    if env is not None:
        return env
    path = login_path()
    try:
        raw = json.loads(path.read_text())
        return Login(url=str(raw["url"]), token=str(raw["token"]), user=str(raw.get("user", "")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"not a corral login ({exc}); corral logout removes it"
        raise InvalidInput(str(path), reason) from exc


def save(login: Login) -> Path:
    """Write ``login`` (mode 0600 from the start, replacing any earlier one atomically)."""
    path = login_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(login), out)
    tmp.replace(path)
    return path


def remove() -> bool:
    """Forget the saved login; whether there was one."""
    try:
        login_path().unlink()
    except FileNotFoundError:
        return False
    return True
