"""SSH public keys as users hand them in: parsed, validated and fingerprinted. Pure: no I/O.

Accepted is exactly one key, either as one OpenSSH ``authorized_keys`` line without options
(``TYPE BASE64 [COMMENT]``, what a ``.pub`` file holds) or in the RFC 4716 form that
``ssh-keygen -e`` writes (converted to the OpenSSH line). Types:

* ``ssh-ed25519``;
* ``ecdsa-sha2-nistp256``, ``ecdsa-sha2-nistp384``, ``ecdsa-sha2-nistp521``;
* ``ssh-rsa`` of 2048 to 16384 bits;
* the FIDO keys ``sk-ssh-ed25519@openssh.com`` and ``sk-ecdsa-sha2-nistp256@openssh.com``.

Everything else is refused with the reason: private keys (never echoed), DSA, short RSA,
certificates, PEM files, options before the key, a type that the key data contradicts, bad
base64, data after the key, control characters in the comment. The key material itself is
checked with ``cryptography`` (points on their curve, a sane RSA modulus).

Key pair names are VM names plus ``.`` and ``_`` (``alice.laptop``, ``id_ed25519``): lower
case, at most 63 characters, starting with a letter or digit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from corral.errors import InvalidInput

#: A key pair's name; used in the default private key file name ``corral-<name>``.
KEY_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
#: Key files larger than this are refused before they are parsed.
MAX_KEY_TEXT = 64 * 1024
#: RSA moduli outside these bounds are refused (OpenSSH's own upper limit).
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
MAX_COMMENT = 1024

ED25519 = "ssh-ed25519"
RSA = "ssh-rsa"
SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
_ECDSA_CURVES: dict[str, ec.EllipticCurve] = {
    "ecdsa-sha2-nistp256": ec.SECP256R1(),
    "ecdsa-sha2-nistp384": ec.SECP384R1(),
    "ecdsa-sha2-nistp521": ec.SECP521R1(),
}
#: Key types corral accepts, as OpenSSH names them.
KEY_TYPES = (ED25519, *_ECDSA_CURVES, RSA, SK_ED25519, SK_ECDSA)
#: How ``ssh-keygen -l`` names each type (after the fingerprint).
_LABELS = {
    ED25519: "ED25519",
    RSA: "RSA",
    SK_ED25519: "ED25519-SK",
    SK_ECDSA: "ECDSA-SK",
    **dict.fromkeys(_ECDSA_CURVES, "ECDSA"),
}
_ALLOWED_TEXT = (
    "ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa (2048 bits or more), "
    "sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com"
)
_ONE_KEY = "one line `TYPE BASE64 [COMMENT]`, such as the contents of ~/.ssh/id_ed25519.pub"
_NEW_KEY = "create an ed25519 key instead (`ssh-keygen -t ed25519` or `corral key create`)"
_DSA = "ssh-dss"
_CERT = re.compile(r"^[a-z0-9-]+-cert-v0[01]@openssh\.com$")
_RFC4716_BEGIN = "---- BEGIN SSH2 PUBLIC KEY ----"
_RFC4716_END = "---- END SSH2 PUBLIC KEY ----"
#: The first line of a private key: PEM/OpenSSH, ssh.com (RFC 4716 style) or PuTTY.
_PRIVATE = re.compile(
    r"^\s*(-{4,5} ?BEGIN [A-Z0-9 ]*PRIVATE KEY ?-{4,5}|PuTTY-User-Key-File-)", re.MULTILINE
)


@dataclass(frozen=True)
class PublicKey:
    """One validated SSH public key."""

    #: The key type as OpenSSH names it (``ssh-ed25519``).
    kind: str
    #: The key data in canonical base64 (the SSH wire encoding of the key).
    blob: str
    #: The free text after the key, often ``user@host``; may be empty.
    comment: str
    #: ``SHA256:<base64>``, exactly as ``ssh-keygen -l -E sha256`` prints it.
    fingerprint: str
    #: The key's size as ``ssh-keygen -l`` prints it (the modulus for RSA, the curve's size).
    bits: int

    @property
    def line(self) -> str:
        """The key as one ``authorized_keys`` line."""
        return f"{self.kind} {self.blob}" + (f" {self.comment}" if self.comment else "")

    @property
    def label(self) -> str:
        """The type as ``ssh-keygen -l`` shows it: ``ED25519``, ``ECDSA``, ``RSA``, ..."""
        return _LABELS[self.kind]


def check_key_name(name: str) -> str:
    """:raise InvalidInput: ``name`` is not a key pair name (field ``name``)."""
    if not re.match(KEY_NAME_PATTERN, name):
        raise InvalidInput(
            "name",
            f"{_show(name)} is not allowed; a key pair name is lower-case letters, digits, "
            f"'-', '.' and '_', starting with a letter or digit, at most 63 characters "
            f"({KEY_NAME_PATTERN})",
        )
    return name


def fingerprint(blob: bytes) -> str:
    """The SHA-256 fingerprint of a key's wire encoding, as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def decode_key_file(data: bytes, field: str = "public_key") -> str:
    """The text of a public key file, refused early if it cannot be one.

    :raise InvalidInput: the file is too large, binary, or not UTF-8.
    """
    if len(data) > MAX_KEY_TEXT:
        raise InvalidInput(
            field, f"is {len(data)} bytes; a public key file is at most {MAX_KEY_TEXT} bytes"
        )
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise InvalidInput(field, f"is a binary file, not an OpenSSH public key; give {_ONE_KEY}")
    return text


def parse_public_key(text: str, field: str = "public_key") -> PublicKey:
    """Parse and validate exactly one SSH public key.

    :param text: the contents of a ``.pub`` file (or an RFC 4716 ``ssh-keygen -e`` file).
    :param field: what to name in errors (a field, or the file the text came from).
    :raise InvalidInput: the text is not exactly one acceptable public key; the reason says
        what is wrong and what is accepted. A private key's content is never repeated.
    """
    if len(text) > MAX_KEY_TEXT:
        raise InvalidInput(field, f"is longer than {MAX_KEY_TEXT} characters; give {_ONE_KEY}")
    if _PRIVATE.search(text):
        raise InvalidInput(
            field,
            "this is a private key, which corral never takes or stores; give the public key: "
            "the .pub file next to it (`ssh-keygen -y -f PRIVATE_KEY_FILE` prints it)",
        )
    stripped = text.strip()
    if not stripped:
        raise InvalidInput(field, f"is empty; give {_ONE_KEY}")
    if stripped.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        return _parse_line(_from_rfc4716(stripped, field), field)
    if stripped.startswith("-----BEGIN "):
        raise InvalidInput(field, _pem_reason(stripped))
    lines = [
        line.strip()
        for line in stripped.split("\n")
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines:
        raise InvalidInput(field, f"holds only comments; give {_ONE_KEY}")
    if len(lines) > 1:
        raise InvalidInput(field, f"holds {len(lines)} lines; give exactly one key: {_ONE_KEY}")
    return _parse_line(lines[0], field)


def _parse_line(line: str, field: str) -> PublicKey:
    parts = line.split(None, 2)
    kind = parts[0]
    if kind not in KEY_TYPES:
        raise InvalidInput(field, _type_reason(kind, line.split()))
    if len(parts) < 2:
        raise InvalidInput(field, f"has no key data after {kind!r}; give {_ONE_KEY}")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            field, f"the key data after {kind!r} is not valid base64; give {_ONE_KEY}"
        ) from None
    comment = parts[2].strip() if len(parts) > 2 else ""
    _check_comment(comment, field)
    bits = _check_blob(kind, raw, field)
    return PublicKey(
        kind=kind,
        blob=base64.b64encode(raw).decode(),
        comment=comment,
        fingerprint=fingerprint(raw),
        bits=bits,
    )


def _type_reason(kind: str, tokens: list[str]) -> str:
    if kind == _DSA:
        return f"DSA (ssh-dss) keys are insecure and disabled in OpenSSH; {_NEW_KEY}"
    if _CERT.match(kind):
        return "this is an SSH certificate; give the plain public key it certifies"
    if any(t in KEY_TYPES or t == _DSA or _CERT.match(t) for t in tokens[1:]):
        return (
            "the line starts with authorized_keys options (command=, from=, no-pty, ...); "
            f"corral takes the key alone: {_ONE_KEY}"
        )
    if len(kind) > 40:  # not a type name but data, perhaps a private key's: never echoed
        return f"the line does not start with a key type; allowed: {_ALLOWED_TEXT}"
    return f"{_show(kind)} is not a key type corral accepts; allowed: {_ALLOWED_TEXT}"


def _pem_reason(text: str) -> str:
    if text.startswith(("-----BEGIN PUBLIC KEY-----", "-----BEGIN RSA PUBLIC KEY-----")):
        return (
            "this is a PEM public key, not an OpenSSH one; convert it with "
            "`ssh-keygen -i -m PKCS8 -f FILE` (`-m PEM` for 'RSA PUBLIC KEY') and give that"
        )
    if text.startswith("-----BEGIN CERTIFICATE"):
        return f"this is an X.509 certificate, not an SSH public key; give {_ONE_KEY}"
    return f"this is a PEM file, not an OpenSSH public key; give {_ONE_KEY}"


def _from_rfc4716(text: str, field: str) -> str:
    """The OpenSSH line for an RFC 4716 (``ssh-keygen -e``) key; its Comment header kept."""
    lines = [line.strip() for line in text.split("\n")]
    if sum(line == _RFC4716_BEGIN for line in lines) > 1:
        raise InvalidInput(field, "holds more than one key; give exactly one")
    if lines[0] != _RFC4716_BEGIN or lines[-1] != _RFC4716_END:
        raise InvalidInput(
            field,
            f"an RFC 4716 key must start with {_RFC4716_BEGIN!r} and end with {_RFC4716_END!r}"
            " (or convert it with `ssh-keygen -i -f FILE`)",
        )
    body = lines[1:-1]
    comment = ""
    index = 0
    while index < len(body) and ":" in body[index]:
        header = body[index]
        while header.endswith("\\") and index + 1 < len(body):
            index += 1
            header = header[:-1] + body[index]
        tag, _, value = header.partition(":")
        if tag.strip().lower() == "comment":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            comment = value
        index += 1
    data = "".join(body[index:])
    try:
        raw = base64.b64decode(data, validate=True)
        kind = _Reader(raw).string("type").decode("ascii")
    except (binascii.Error, ValueError, _Malformed):
        raise InvalidInput(
            field, "the key data of this RFC 4716 key is not valid base64 key data"
        ) from None
    if kind not in KEY_TYPES:
        raise InvalidInput(field, _type_reason(kind, []))
    return f"{kind} {data} {comment}".strip()


def _check_comment(comment: str, field: str) -> None:
    if len(comment) > MAX_COMMENT:
        raise InvalidInput(field, f"the comment is longer than {MAX_COMMENT} characters")
    for char in comment:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise InvalidInput(
                field,
                f"the comment contains the control character U+{ord(char):04X}; "
                "only printable text is allowed after the key",
            )


class _Malformed(Exception):
    """Key data that ends early or holds nonsense (``what`` names the part)."""


class _Reader:
    """Reads the SSH wire encoding (RFC 4251): length-prefixed strings and mpints."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def string(self, what: str) -> bytes:
        if self.pos + 4 > len(self.data):
            raise _Malformed(what)
        length = int.from_bytes(self.data[self.pos : self.pos + 4], "big")
        start = self.pos + 4
        if start + length > len(self.data):
            raise _Malformed(what)
        self.pos = start + length
        return self.data[start : self.pos]

    def mpint(self, what: str) -> int:
        value = self.string(what)
        if value and value[0] & 0x80:
            raise _Malformed(f"{what} is negative")
        return int.from_bytes(value, "big")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _check_blob(kind: str, raw: bytes, field: str) -> int:
    """Check the key data against its declared type; return its size in bits."""
    reader = _Reader(raw)
    try:
        embedded = reader.string("key type")
        if embedded != kind.encode():
            shown = _show(embedded.decode("utf-8", "replace"))
            raise InvalidInput(
                field, f"the type {kind!r} does not match the key data, which holds a {shown} key"
            )
        bits = _check_material(kind, reader, field)
    except _Malformed as exc:
        raise InvalidInput(
            field, f"the {kind} key data is truncated or malformed ({exc})"
        ) from None
    if reader.remaining:
        raise InvalidInput(
            field, f"the {kind} key data has {reader.remaining} bytes of trailing garbage"
        )
    return bits


def _check_material(kind: str, reader: _Reader, field: str) -> int:
    if kind in (ED25519, SK_ED25519):
        point = reader.string("public key")
        if len(point) != 32:
            raise _Malformed(f"an ed25519 key is 32 bytes, not {len(point)}")
        ed25519.Ed25519PublicKey.from_public_bytes(point)
        if kind == SK_ED25519:
            _application(reader)
        return 256
    if kind == RSA:
        exponent = reader.mpint("exponent")
        modulus = reader.mpint("modulus")
        bits = modulus.bit_length()
        if bits < MIN_RSA_BITS:
            raise InvalidInput(
                field,
                f"RSA keys need at least {MIN_RSA_BITS} bits; this one has {bits}; {_NEW_KEY}",
            )
        if bits > MAX_RSA_BITS:
            raise InvalidInput(
                field,
                f"RSA keys have at most {MAX_RSA_BITS} bits (OpenSSH's limit); this has {bits}",
            )
        try:
            rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except ValueError:
            raise InvalidInput(field, "the RSA key data is not a valid RSA public key") from None
        return bits
    curve_type = "ecdsa-sha2-nistp256" if kind == SK_ECDSA else kind
    curve = _ECDSA_CURVES[curve_type]
    curve_name = reader.string("curve name")
    expected = curve_type.removeprefix("ecdsa-sha2-")
    if curve_name != expected.encode():
        shown = _show(curve_name.decode("utf-8", "replace"))
        raise InvalidInput(
            field, f"the type {kind!r} names curve {expected} but the key is on {shown}"
        )
    point = reader.string("curve point")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise InvalidInput(field, f"the key's point is not on curve {expected}") from None
    if kind == SK_ECDSA:
        _application(reader)
    return curve.key_size


def _application(reader: _Reader) -> None:
    """A FIDO key's application string (``ssh:`` for keys ``ssh-keygen`` makes)."""
    application = reader.string("application")
    if not application or not all(0x20 < byte < 0x7F for byte in application):
        raise _Malformed("the FIDO application is not printable text")


def _show(value: str) -> str:
    """``value`` safe to print in an error: quoted, control characters escaped, shortened."""
    return repr(value if len(value) <= 40 else value[:40] + "...")
