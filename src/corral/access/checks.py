"""What the names and values of access objects may be: users, projects, tokens.

Pure checks, with no database and no I/O, shared by the service functions, the API's request
schemas and the CLI, so that all three refuse the same input with the same message. Each
raises :class:`~corral.errors.InvalidInput` naming the field and the rule.

Every pattern is matched against the whole text (a trailing newline is no part of a name).
"""

from __future__ import annotations

import re
from datetime import timedelta

from corral.errors import InvalidInput

#: A user's name: no ``:``, so that no user is ever taken for ``local:<uid>``.
USER_NAME_PATTERN = r"^[a-z_][a-z0-9_.-]{0,62}$"
#: A project's name: what VM names allow (it may become part of paths and URLs).
PROJECT_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: A token's name.
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$"  # noqa: S105 - not a secret
#: Longest project description, in characters.
MAX_DESCRIPTION = 1000

#: What every token starts with: it tells a corral token apart in a config file or a leak scan.
TOKEN_PREFIX = "crl_"  # noqa: S105 - not a secret
#: Hex digits of a token's id (the tokens table's key), which the token also carries.
TOKEN_ID_DIGITS = 16
#: Fewest of an id's first digits that may name a token.
MIN_TOKEN_REF = 4

#: The name of the tokens a password login makes (``corral logout`` revokes those).
LOGIN_TOKEN_NAME = "corral-login"  # noqa: S105 - not a secret

#: Most items one page of a listing holds.
MAX_PAGE = 1000

#: Shortest and longest lifetimes a token may be given.
MIN_LIFETIME = timedelta(minutes=1)
MAX_LIFETIME = timedelta(days=3660)

_DURATION = re.compile(r"\s*(\d{1,18})\s*([smhdw])\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TOKEN_REF = re.compile(rf"[0-9a-f]{{{MIN_TOKEN_REF},{TOKEN_ID_DIGITS}}}")


def is_user_name(name: str) -> bool:
    """Whether ``name`` may be a user's name."""
    return re.fullmatch(USER_NAME_PATTERN, name) is not None


def is_project_name(name: str) -> bool:
    """Whether ``name`` may be a project's name."""
    return re.fullmatch(PROJECT_NAME_PATTERN, name) is not None


def check_user_name(name: str) -> None:
    """:raise InvalidInput: ``name`` is not a valid user name (field ``name``)."""
    if not is_user_name(name):
        raise InvalidInput(
            "name",
            f"{name!r} is not allowed: use 1-63 lower-case letters, digits, '_', '.' and "
            "'-', starting with a letter or '_'",
        )


def check_project_name(name: str) -> None:
    """:raise InvalidInput: ``name`` is not a valid project name (field ``name``)."""
    if not is_project_name(name):
        raise InvalidInput(
            "name",
            f"{name!r} is not allowed: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter or digit",
        )


def check_description(description: str) -> None:
    """:raise InvalidInput: ``description`` is longer than :data:`MAX_DESCRIPTION` or is not
    one line of text (field ``description``)."""
    if len(description) > MAX_DESCRIPTION or any(
        ord(char) < 32 or ord(char) == 127 for char in description
    ):
        raise InvalidInput(
            "description",
            f"must be one line of at most {MAX_DESCRIPTION} characters, without control characters",
        )


def check_token_name(name: str) -> None:
    """:raise InvalidInput: ``name`` is not a valid token name (field ``name``)."""
    if re.fullmatch(TOKEN_NAME_PATTERN, name) is None:
        raise InvalidInput(
            "name", f"{name!r} is not allowed: use 1-63 letters, digits, '_', '.', '@' and '-'"
        )


def token_id_of(ref: str) -> str | None:
    """The id digits ``ref`` gives: an id, its first digits, a token's display prefix
    (``crl_1a2b3c4d``) or a whole token; ``None`` if it gives none.

    The secret part of a whole token is dropped: only the id goes any further.
    """
    digits = ref.removeprefix(TOKEN_PREFIX).split("_", 1)[0]
    return digits if _TOKEN_REF.fullmatch(digits) else None


def check_token_ref(ref: str) -> str:
    """The id digits ``ref`` gives (see :func:`token_id_of`).

    :raise InvalidInput: it gives none (field ``id``).
    """
    digits = token_id_of(ref)
    if digits is None:
        raise InvalidInput(
            "id",
            f"not a token id: give {TOKEN_ID_DIGITS} hex digits (or the first "
            f"{MIN_TOKEN_REF} or more)",
        )
    return digits


def parse_duration(text: str, field: str = "expires") -> timedelta:
    """``30d`` -> 30 days; units s, m, h, d, w.

    :raise InvalidInput: not a whole number with a unit (naming ``field``).
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise InvalidInput(
            field, f"{text!r} is not a duration; write a whole number and s, m, h, d or w (30d)"
        )
    try:
        return timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    except OverflowError:
        raise InvalidInput(field, f"{text!r} is longer than any lifetime allowed") from None


def check_lifetime(expires_in: timedelta | None, field: str = "expires") -> None:
    """:raise InvalidInput: a lifetime shorter than a minute or longer than 3660 days."""
    if expires_in is not None and not MIN_LIFETIME <= expires_in <= MAX_LIFETIME:
        raise InvalidInput(field, "must be between 1 minute and 3660 days")


def lifetime(text: str | None, field: str = "expires") -> timedelta | None:
    """A token's lifetime as written (``30d``), checked; ``None`` for none.

    :raise InvalidInput: not a duration, or out of bounds (naming ``field``).
    """
    if text is None:
        return None
    parsed = parse_duration(text, field)
    check_lifetime(parsed, field)
    return parsed


def check_page(limit: int, offset: int) -> None:
    """:raise InvalidInput: ``limit`` is not between 1 and :data:`MAX_PAGE`, or ``offset``
    is negative (naming the field)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}, not {limit}")
    if offset < 0:
        raise InvalidInput("offset", f"must be 0 or more, not {offset}")
