"""The pure rendering of meta-data, user-data and network-config: exact output, merge rules,
pass-through, cloud-init's type detection, refusals."""

from __future__ import annotations

import dataclasses
import gzip

import pytest
import yaml

from corral.cloudinit.render import (
    MAX_USER_DATA,
    SeedRequest,
    is_cloud_config,
    parse_cloud_config,
    render_meta_data,
    render_network_config,
    render_seed,
    render_user_data,
    user_data_from_bytes,
    user_data_type,
)
from corral.errors import InvalidInput

from .conftest import ED25519, RSA

REQ = SeedRequest(
    instance_id="i-0123456789abcdef",
    hostname="web1",
    authorized_keys=(ED25519,),
    nics=(("net0", "52:54:00:12:34:56"), ("backend", "52:54:00:AB:CD:EF")),
)


def with_user_data(text: str | None) -> SeedRequest:
    return dataclasses.replace(REQ, user_data=text)


def test_meta_data_exact() -> None:
    assert render_meta_data(REQ) == (
        f"instance-id: i-0123456789abcdef\nlocal-hostname: web1\npublic-keys:\n- {ED25519}\n"
    )


def test_meta_data_without_keys_has_no_public_keys() -> None:
    text = render_meta_data(dataclasses.replace(REQ, authorized_keys=()))
    assert text == "instance-id: i-0123456789abcdef\nlocal-hostname: web1\n"


def test_user_data_without_the_users_own_exact() -> None:
    assert render_user_data(REQ) == (
        f"#cloud-config\nhostname: web1\nssh_authorized_keys:\n- {ED25519}\n"
    )


def test_user_data_without_keys_has_only_the_hostname() -> None:
    req = dataclasses.replace(REQ, authorized_keys=())
    assert render_user_data(req) == "#cloud-config\nhostname: web1\n"


def test_keys_are_stripped_and_deduplicated_in_order() -> None:
    req = dataclasses.replace(REQ, authorized_keys=(f" {RSA}\n", ED25519, RSA))
    data = yaml.safe_load(render_user_data(req))
    assert data["ssh_authorized_keys"] == [RSA, ED25519]
    assert yaml.safe_load(render_meta_data(req))["public-keys"] == [RSA, ED25519]


def test_network_config_exact() -> None:
    assert render_network_config(REQ) == (
        "version: 2\n"
        "ethernets:\n"
        "  net0:\n"
        "    match:\n"
        "      macaddress: '52:54:00:12:34:56'\n"
        "    set-name: eth0\n"
        "    dhcp4: true\n"
        "  backend:\n"
        "    match:\n"
        "      macaddress: 52:54:00:ab:cd:ef\n"
        "    set-name: eth1\n"
        "    dhcp4: true\n"
    )


def test_network_config_values_are_strings_and_lower_case() -> None:
    data = yaml.safe_load(render_network_config(REQ))
    assert data == {
        "version": 2,
        "ethernets": {
            "net0": {
                "match": {"macaddress": "52:54:00:12:34:56"},
                "set-name": "eth0",
                "dhcp4": True,
            },
            "backend": {
                "match": {"macaddress": "52:54:00:ab:cd:ef"},
                "set-name": "eth1",
                "dhcp4": True,
            },
        },
    }


def test_network_config_without_nics() -> None:
    assert render_network_config(dataclasses.replace(REQ, nics=())) == "version: 2\n"


def test_render_seed_gives_the_three_files_and_is_deterministic() -> None:
    seed = render_seed(REQ)
    assert list(seed) == ["meta-data", "user-data", "network-config"]
    assert seed == render_seed(REQ)
    assert seed["user-data"] == render_user_data(REQ).encode()


def test_merge_keeps_the_users_keys_first_and_everything_else() -> None:
    user = (
        "#cloud-config\n"
        "# a comment that is lost in the merge\n"
        "package_update: true\n"
        "packages: [nginx, curl]\n"
        f"ssh_authorized_keys:\n  - {RSA}\n  - {ED25519}\n"
        "runcmd:\n  - [systemctl, enable, --now, nginx]\n"
        "write_files:\n  - path: /etc/motd\n    content: |\n      hello\n      wörld\n"
    )
    text = render_user_data(with_user_data(user))
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert list(data) == [
        "package_update",
        "packages",
        "ssh_authorized_keys",
        "runcmd",
        "write_files",
        "hostname",
    ]
    assert data["ssh_authorized_keys"] == [RSA, ED25519]
    assert data["hostname"] == "web1"
    assert data["packages"] == ["nginx", "curl"]
    assert data["runcmd"] == [["systemctl", "enable", "--now", "nginx"]]
    assert data["write_files"] == [{"path": "/etc/motd", "content": "hello\nwörld\n"}]
    assert "wörld" in text  # allow_unicode: not escaped


def test_merge_block_style_one_line_per_key() -> None:
    user = "#cloud-config\nbootcmd: [[echo, a], echo b]\nlong: " + "x" * 300 + "\n"
    text = render_user_data(with_user_data(user))
    assert "[" not in text and "{" not in text
    assert "\nlong: " + "x" * 300 + "\n" in text
    assert f"ssh_authorized_keys:\n- {ED25519}\n" in text


def test_merge_the_users_hostname_wins() -> None:
    data = yaml.safe_load(render_user_data(with_user_data("#cloud-config\nhostname: mine\n")))
    assert data == {"hostname": "mine", "ssh_authorized_keys": [ED25519]}


def test_merge_an_empty_cloud_config_gives_ours() -> None:
    assert render_user_data(with_user_data("#cloud-config\n")) == render_user_data(REQ)


def test_merge_an_empty_key_list_stays_a_list() -> None:
    req = dataclasses.replace(
        REQ, authorized_keys=(), user_data="#cloud-config\nssh_authorized_keys:\n"
    )
    assert yaml.safe_load(render_user_data(req))["ssh_authorized_keys"] == []


@pytest.mark.parametrize(
    "header",
    [
        "#cloud-config",
        "#Cloud-Config",
        "  \n#cloud-config  ",
        "#cloud-config\r",
        "#CLOUD-CONFIG # x",
    ],
)
def test_merge_accepts_every_header_cloud_init_accepts(header: str) -> None:
    text = render_user_data(with_user_data(f"{header}\npackages:\r\n  - vim\r\n"))
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text)["packages"] == ["vim"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#cloud-config\n", "text/cloud-config"),
        ("#Cloud-Config\r\nhostname: a\r\n", "text/cloud-config"),
        (" \t\n #cloud-config\n", "text/cloud-config"),
        ("#cloud-configX\n", "text/cloud-config"),
        ("#cloud-config-archive\n- type: x\n", "text/cloud-config-archive"),
        ("#cloud-config-jsonp\n[]\n", "text/cloud-config-jsonp"),
        ("#!/bin/sh\necho hi\n", "text/x-shellscript"),
        ("#include\nhttp://example.com/x\n", "text/x-include-url"),
        ("#include-once\nhttp://example.com/x\n", "text/x-include-once-url"),
        ("#cloud-boothook\n#!/bin/sh\n", "text/cloud-boothook"),
        ("#part-handler\n", "text/part-handler"),
        ("## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n", "text/jinja2"),
        (
            'Content-Type: multipart/mixed; boundary="b"\nMIME-Version: 1.0\n\n--b--\n',
            "multipart/mixed",
        ),
        ("#cloud-config\n# mime-version: in a comment\n", "multipart/mixed"),
        ("\ufeff#cloud-config\n", None),
        ("hello\n", None),
        ("", None),
    ],
)
def test_user_data_type_is_cloud_inits(text: str, expected: str | None) -> None:
    assert user_data_type(text) == expected
    assert is_cloud_config(text) == (expected == "text/cloud-config")


@pytest.mark.parametrize(
    "text",
    [
        "#!/bin/bash\r\necho 'no trailing newline'",
        "#include\nhttps://example.com/cloud.cfg\n",
        "#cloud-boothook\n#!/bin/sh\necho boot\n",
        "## template: jinja\n#cloud-config\nhostname: {{ ds.meta_data.local_hostname }}\n",
        "#cloud-config-archive\n- type: text/cloud-config\n  content: 'a: 1'\n",
        'Content-Type: multipart/mixed; boundary="==b=="\nMIME-Version: 1.0\n\n--==b==\n'
        "Content-Type: text/cloud-config\n\n#cloud-config\nhostname: x\n--==b==--\n",
        "just some text ünïcode\n",
        "",
    ],
)
def test_other_user_data_passes_through_byte_for_byte(text: str) -> None:
    assert render_user_data(with_user_data(text)) == text
    assert render_seed(with_user_data(text))["user-data"] == text.encode("utf-8")


def test_yaml_error_names_line_and_column() -> None:
    with pytest.raises(InvalidInput) as err:
        render_user_data(with_user_data("#cloud-config\npackages: [vim\nhostname: x\n"))
    assert err.value.field == "user_data"
    assert "not valid YAML" in err.value.reason
    assert "line 3, column 9" in err.value.reason


@pytest.mark.parametrize("body", ["- a\n- b\n", "just a string\n", "42\n"])
def test_cloud_config_must_be_a_mapping(body: str) -> None:
    with pytest.raises(InvalidInput, match="must be a YAML mapping") as err:
        parse_cloud_config(f"#cloud-config\n{body}")
    assert err.value.field == "user_data"


@pytest.mark.parametrize("keys", ["ssh-rsa AAAA x", "[1, 2]", "{a: b}"])
def test_users_key_list_must_be_a_list_of_strings(keys: str) -> None:
    with pytest.raises(InvalidInput, match="ssh_authorized_keys must be a list of strings"):
        render_user_data(with_user_data(f"#cloud-config\nssh_authorized_keys: {keys}\n"))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"instance_id": ""}, "instance_id"),
        ({"instance_id": "i-1/../x"}, "instance_id"),
        ({"instance_id": "x" * 65}, "instance_id"),
        ({"hostname": "web-"}, "hostname"),
        ({"hostname": "-web"}, "hostname"),
        ({"hostname": "web.example"}, "hostname"),
        ({"hostname": "w" * 64}, "hostname"),
        ({"hostname": "web_1"}, "hostname"),
        ({"authorized_keys": ("",)}, "authorized_keys.0"),
        ({"authorized_keys": (ED25519, "not a key")}, "authorized_keys.1"),
        ({"authorized_keys": (f"{ED25519}\n{RSA}",)}, "authorized_keys.0"),
        ({"nics": (("net0", "52:54:00:12:34"),)}, "nics.0.mac"),
        ({"nics": (("net0", "52-54-00-12-34-56"),)}, "nics.0.mac"),
        ({"nics": (("a", "52:54:00:12:34:56"), ("b", "52:54:00:12:34:56"))}, "nics.1.mac"),
        ({"nics": (("a", "52:54:00:12:34:56"), ("a", "52:54:00:12:34:57"))}, "nics.1.name"),
        ({"nics": (("Net0", "52:54:00:12:34:56"),)}, "nics.0.name"),
        ({"user_data": "#!/bin/sh\n" + "x" * MAX_USER_DATA}, "user_data"),
        ({"user_data": "#!/bin/sh\n\udcff"}, "user_data"),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, object], field: str) -> None:
    req = dataclasses.replace(REQ, **change)  # type: ignore[arg-type]
    for render in (render_meta_data, render_user_data, render_network_config, render_seed):
        with pytest.raises(InvalidInput) as err:
            render(req)
        assert err.value.field == field


def test_accepted_keys_and_names() -> None:
    req = dataclasses.replace(
        REQ,
        instance_id="iid-local01",
        hostname="A1",
        authorized_keys=(
            'from="10.0.0.0/8",no-pty ssh-ed25519 AAAAC3Nza key with spaces',
            "ecdsa-sha2-nistp256 AAAAE2VjZHNh",
            "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t yubikey",
        ),
    )
    assert len(yaml.safe_load(render_user_data(req))["ssh_authorized_keys"]) == 3


def test_user_data_from_bytes() -> None:
    assert user_data_from_bytes("#cloud-config\nx: ü\n".encode()) == "#cloud-config\nx: ü\n"
    with pytest.raises(InvalidInput, match="gzip-compressed user-data is not accepted"):
        user_data_from_bytes(gzip.compress(b"#cloud-config\n"))
    with pytest.raises(InvalidInput, match="not UTF-8 text: byte 3") as err:
        user_data_from_bytes(b"#!/\xff")
    assert err.value.field == "user_data"
    with pytest.raises(InvalidInput, match="at most"):
        user_data_from_bytes(b"#" * (MAX_USER_DATA + 1))
