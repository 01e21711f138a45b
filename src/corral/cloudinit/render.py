"""What a new instance is told through NoCloud: ``meta-data``, ``user-data``, ``network-config``.

Pure: no I/O, no clock, no randomness; the same :class:`SeedRequest` gives the same bytes.

- ``meta-data``: ``instance-id``, ``local-hostname`` and ``public-keys`` (cloud-init's data
  source base class installs metadata ``public-keys`` for the default user, so the keys arrive
  whatever the user-data is).
- ``user-data``: without the user's own, a ``#cloud-config`` with ``hostname`` and
  ``ssh_authorized_keys``. The user's own cloud-config is merged with those (their keys first,
  their ``hostname`` wins, every other key of theirs kept); any other kind of user-data (a
  script, MIME multipart, ``#include``, a boothook, a jinja template) is passed through byte
  for byte. :func:`user_data_type` classifies it exactly as cloud-init 22.4 does.
- ``network-config``: version 2, one DHCP ethernet per NIC, matched by MAC and named
  ``eth<index>``.

Every YAML document is written by ``yaml.safe_dump`` in block style (no flow collections, no
line folding), which the reference guest's shell parser relies on.

User-data is text: UTF-8, at most :data:`MAX_USER_DATA` bytes. gzip-compressed user-data (which
cloud-init accepts) is refused: corral must read the user-data to merge and validate it, and
compression only served EC2's 16 KiB limit, which NoCloud does not have.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from corral.errors import InvalidInput

#: The largest user-data accepted, in bytes (UTF-8).
MAX_USER_DATA = 1024 * 1024
#: The first line of a cloud-config.
CLOUD_CONFIG_HEADER = "#cloud-config"
#: The content type cloud-init gives a cloud-config.
CLOUD_CONFIG_TYPE = "text/cloud-config"
#: What :func:`user_data_type` says of user-data that cloud-init parses as a MIME message
#: (whose parts then have their own types). corral passes it through: even a cloud-config
#: with ``mime-version:`` in a comment (cloud-init finds it a cloud-config again inside the
#: message) is not merged nor checked; its keys arrive by ``meta-data``.
MIME_TYPE = "multipart/mixed"

#: cloud-init 22.4's ``cloudinit.handlers.INCLUSION_TYPES_MAP``: the prefix of a part (after
#: leading white space, in any case) -> its content type.
INCLUSION_TYPES: Mapping[str, str] = {
    "#include": "text/x-include-url",
    "#include-once": "text/x-include-once-url",
    "#!": "text/x-shellscript",
    "#cloud-config": CLOUD_CONFIG_TYPE,
    "#part-handler": "text/part-handler",
    "#cloud-boothook": "text/cloud-boothook",
    "#cloud-config-archive": "text/cloud-config-archive",
    "#cloud-config-jsonp": "text/cloud-config-jsonp",
    "## template: jinja": "text/jinja2",
    "text/x-shellscript-per-boot": "text/x-shellscript-per-boot",
    "text/x-shellscript-per-instance": "text/x-shellscript-per-instance",
    "text/x-shellscript-per-once": "text/x-shellscript-per-once",
}
#: The prefixes, longest first, as cloud-init tries them.
_PREFIXES = sorted(INCLUSION_TYPES, key=lambda prefix: -len(prefix))

INSTANCE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: An RFC 1123 host name label.
HOSTNAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAC_PATTERN = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
NIC_NAME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,15}")
#: An OpenSSH public key line: optional options, then a key type and base64 key data.
_KEY_PATTERN = re.compile(
    r"(?:.*\s)?(?:ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp(?:256|384|521)|sk-[\w@.-]+"
    r"|ssh-\S+-cert-v01@openssh\.com)\s+AAAA[A-Za-z0-9+/]+=*(?:\s.*)?"
)
_MAX_KEY = 16 * 1024


@dataclass(frozen=True)
class SeedRequest:
    """What corral tells one instance."""

    #: Stable identity of the instance (``i-0123456789abcdef``); cloud-init runs its
    #: per-instance modules again when it changes.
    instance_id: str
    #: The host name: the VM's name.
    hostname: str
    #: OpenSSH public key lines installed for the default user.
    authorized_keys: tuple[str, ...] = ()
    #: The user's own user-data, as given; ``None`` for none.
    user_data: str | None = None
    #: ``(nic name, MAC)`` per NIC, in the VM's order.
    nics: tuple[tuple[str, str], ...] = ()


def render_seed(req: SeedRequest) -> dict[str, bytes]:
    """The NoCloud files for ``req``: ``meta-data``, ``user-data`` and ``network-config``.

    :param req: what to tell the instance.
    :raise InvalidInput: a field of ``req`` is not acceptable (see :func:`check_request`).
    """
    return {
        "meta-data": render_meta_data(req).encode(),
        "user-data": render_user_data(req).encode(),
        "network-config": render_network_config(req).encode(),
    }


def check_request(req: SeedRequest) -> None:
    """Check every field of ``req``.

    :raise InvalidInput: ``instance_id``, ``hostname``, ``authorized_keys.<i>``,
        ``nics.<i>.name``, ``nics.<i>.mac`` or ``user_data`` is not acceptable.
    """
    if not INSTANCE_ID_PATTERN.fullmatch(req.instance_id):
        raise InvalidInput(
            "instance_id",
            f"{req.instance_id!r} is not an instance id: 1 to 64 letters, digits, '.', '_' "
            "and '-', starting with a letter or digit",
        )
    if not HOSTNAME_PATTERN.fullmatch(req.hostname):
        raise InvalidInput(
            "hostname",
            f"{req.hostname!r} is not a host name (RFC 1123 label): 1 to 63 letters, digits "
            "and '-', neither first nor last",
        )
    for index, key in enumerate(req.authorized_keys):
        _check_key(f"authorized_keys.{index}", key)
    names: set[str] = set()
    macs: set[str] = set()
    for index, (name, mac) in enumerate(req.nics):
        if not NIC_NAME_PATTERN.fullmatch(name) or name in names:
            raise InvalidInput(
                f"nics.{index}.name",
                f"{name!r} is not a unique NIC name: a lower-case letter, then up to 15 "
                "lower-case letters, digits and '-'",
            )
        if not MAC_PATTERN.fullmatch(mac) or mac.lower() in macs:
            raise InvalidInput(
                f"nics.{index}.mac", f"{mac!r} is not a unique MAC address (52:54:00:12:34:56)"
            )
        names.add(name)
        macs.add(mac.lower())
    if req.user_data is not None:
        check_user_data_text(req.user_data)


def render_meta_data(req: SeedRequest) -> str:
    """``meta-data``: ``instance-id``, ``local-hostname`` and ``public-keys`` (if any).

    :param req: what to tell the instance.
    :raise InvalidInput: see :func:`check_request`.
    """
    check_request(req)
    data: dict[str, Any] = {"instance-id": req.instance_id, "local-hostname": req.hostname}
    keys = _unique(key.strip() for key in req.authorized_keys)
    if keys:
        data["public-keys"] = keys
    return _dump(data)


def render_user_data(req: SeedRequest) -> str:
    """``user-data``: corral's cloud-config, merged with the user's own, or theirs as given.

    - no user-data: ``#cloud-config`` with ``hostname`` and ``ssh_authorized_keys`` (left out
      if there are no keys);
    - the user's cloud-config (:func:`user_data_type` is ``text/cloud-config``): their keys
      in their order, with ``hostname`` added unless they set it, and corral's keys appended
      to their ``ssh_authorized_keys`` (duplicates dropped, order kept);
    - anything else: the user's text, unchanged (the keys still arrive by ``meta-data``).

    :param req: what to tell the instance.
    :raise InvalidInput: see :func:`check_request`; field ``user_data`` when the user's
        cloud-config is not YAML, not a mapping, or has an ``ssh_authorized_keys`` that is not
        a list of strings.
    """
    check_request(req)
    keys = _unique(key.strip() for key in req.authorized_keys)
    if req.user_data is None:
        ours: dict[str, Any] = {"hostname": req.hostname}
        if keys:
            ours["ssh_authorized_keys"] = keys
        return f"{CLOUD_CONFIG_HEADER}\n{_dump(ours)}"
    if user_data_type(req.user_data) != CLOUD_CONFIG_TYPE:
        return req.user_data
    merged = parse_cloud_config(req.user_data)
    merged.setdefault("hostname", req.hostname)
    theirs = merged.get("ssh_authorized_keys")
    if theirs is None:
        theirs = []
    if not isinstance(theirs, list) or not all(isinstance(k, str) for k in theirs):
        raise InvalidInput("user_data", "ssh_authorized_keys must be a list of strings")
    all_keys = _unique([*theirs, *keys])
    if all_keys or "ssh_authorized_keys" in merged:
        merged["ssh_authorized_keys"] = all_keys
    return f"{CLOUD_CONFIG_HEADER}\n{_dump(merged)}"


def render_network_config(req: SeedRequest) -> str:
    """``network-config`` (version 2): per NIC, DHCPv4 on the interface with its MAC, named
    ``eth<index>``; the entries are keyed by the NIC names. Without NICs, just ``version: 2``.

    :param req: what to tell the instance.
    :raise InvalidInput: see :func:`check_request`.
    """
    check_request(req)
    ethernets = {
        name: {"match": {"macaddress": mac.lower()}, "set-name": f"eth{index}", "dhcp4": True}
        for index, (name, mac) in enumerate(req.nics)
    }
    if not ethernets:
        return _dump({"version": 2})
    return _dump({"version": 2, "ethernets": ethernets})


def user_data_type(text: str) -> str | None:
    """The content type cloud-init 22.4 gives this user-data, or ``None`` if it knows none.

    As ``cloudinit.user_data.convert_string``: ``mime-version:`` (in any case) in the first
    4096 bytes makes a MIME message (:data:`MIME_TYPE`). Otherwise as
    ``cloudinit.handlers.type_from_starts_with``: the text is lower-cased and stripped of
    leading white space, and the longest prefix of :data:`INCLUSION_TYPES` it starts with
    decides; so ``  #Cloud-Config`` is a cloud-config and ``#cloud-config-archive`` is not.

    :param text: the user-data.
    """
    if b"mime-version:" in text.encode("utf-8", "surrogatepass")[:4096].lower():
        return MIME_TYPE
    start = text.lower().lstrip()
    for prefix in _PREFIXES:
        if start.startswith(prefix):
            return INCLUSION_TYPES[prefix]
    return None


def is_cloud_config(text: str) -> bool:
    """Whether cloud-init reads this user-data as a cloud-config (see :func:`user_data_type`)."""
    return user_data_type(text) == CLOUD_CONFIG_TYPE


def parse_cloud_config(text: str) -> dict[Any, Any]:
    """The mapping in a cloud-config (an empty one for a document with no content).

    :param text: a cloud-config (its header line is a YAML comment).
    :raise InvalidInput: field ``user_data``: not YAML (with the line and column), or not a
        mapping.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(
            "user_data", f"the cloud-config is not valid YAML: {_yaml_error(exc)}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput(
            "user_data", f"a cloud-config must be a YAML mapping, not a {type(data).__name__}"
        )
    return data


def check_user_data_text(text: str) -> None:
    """Check that user-data is text corral can carry.

    :param text: the user-data.
    :raise InvalidInput: field ``user_data``: not encodable as UTF-8 (lone surrogates), or
        longer than :data:`MAX_USER_DATA` bytes.
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput("user_data", f"not UTF-8 text: {exc.reason}") from None
    if size > MAX_USER_DATA:
        raise InvalidInput(
            "user_data", f"{size} bytes; user-data holds at most {MAX_USER_DATA} bytes"
        )


def user_data_from_bytes(data: bytes) -> str:
    """User-data read from a file, as text.

    :param data: the file's content.
    :raise InvalidInput: field ``user_data``: gzip-compressed, not UTF-8, or too long.
    """
    if data[:2] == b"\x1f\x8b":
        raise InvalidInput(
            "user_data",
            "gzip-compressed user-data is not accepted: give it uncompressed (corral reads it "
            "to merge and validate it; NoCloud has no size limit that compression would avoid)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            "user_data", f"not UTF-8 text: byte {exc.start} cannot be decoded ({exc.reason})"
        ) from None
    check_user_data_text(text)
    return text


def _check_key(field: str, key: str) -> None:
    line = key.strip()
    if not line or len(line) > _MAX_KEY or any(c in line for c in "\r\n\0"):
        raise InvalidInput(field, "an OpenSSH public key is one non-empty line")
    if not _KEY_PATTERN.fullmatch(line):
        raise InvalidInput(
            field,
            f"{line[:40]!r}... is not an OpenSSH public key line (ssh-ed25519 AAAA... comment)",
        )


def _unique(items: Any) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return str(problem)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _dump(data: Mapping[Any, Any]) -> str:
    return yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, width=2**31, allow_unicode=True
    )
