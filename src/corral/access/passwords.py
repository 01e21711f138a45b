"""Password hashing: argon2id, with its parameters written down.

The parameters are RFC 9106's second recommended option (section 4, "uniformly safe ... in
memory-constrained environments"), which ``argon2-cffi`` names ``RFC_9106_LOW_MEMORY``:

* type argon2id (resists both side-channel and GPU attacks);
* time cost 3 passes, memory cost 64 MiB, parallelism 4 lanes;
* a 16-byte random salt per password, a 32-byte hash.

One hash takes some tens of milliseconds and 64 MiB: cheap enough for a login, costly for a
guesser. The hash is stored in PHC form (``$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>``),
which carries its own parameters: a later change of parameters still verifies older hashes,
and :func:`needs_rehash` tells when one should be replaced at the next successful login.
"""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY

from corral.errors import InvalidInput

#: Shortest password accepted, in characters (NIST SP 800-63B's minimum).
MIN_PASSWORD = 8
#: Longest password accepted, in characters: argon2 takes any length, a request body should not.
MAX_PASSWORD = 1024

#: The one hasher: argon2id with RFC 9106's low-memory parameters (see the module's docstring).
HASHER = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)


def check_password(password: str, field: str = "password") -> None:
    """Refuse a password that is too short, too long or has control characters.

    :raise InvalidInput: naming ``field`` and the rule (never the password).
    """
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(field, f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(field, f"must be at most {MAX_PASSWORD} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in password):
        raise InvalidInput(field, "must not contain control characters (a newline, a tab)")


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` in PHC form, with a new random salt.

    :raise InvalidInput: the password breaks :func:`check_password`'s rules.
    """
    check_password(password)
    return HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; always ``False`` for no hash.

    Without a hash a dummy one is verified all the same, so that the time taken does not
    tell a user without a password (or without a record) from a wrong password.
    """
    try:
        return HASHER.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether ``password_hash`` was made with other parameters than :data:`HASHER`'s."""
    return HASHER.check_needs_rehash(password_hash)


@cache
def _dummy_hash() -> str:
    return HASHER.hash("corral: no password is set")
