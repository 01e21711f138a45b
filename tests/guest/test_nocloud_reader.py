"""The reference guest's NoCloud reader (``recipe/nocloud.awk``), run by the guest's own busybox
on the host: its YAML reading against PyYAML, and what it writes below a scratch root.

The busybox comes from the pinned ``busybox-static`` package in the guest cache.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral.cloudinit.render import SeedRequest, render_seed
from corral.guest import ReferenceGuest
from corral.guest.debian import BUSYBOX_PACKAGE, read_pins
from corral.guest.tools import recipe_text

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA a@host"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB b@host"
KEY_C = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC c@host"


@pytest.fixture(scope="module")
def busybox(reference_guest: ReferenceGuest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    guest_root = reference_guest.dir.parent
    pins = read_pins(guest_root)
    assert pins is not None
    pin = next(p for p in pins if p.name == BUSYBOX_PACKAGE)
    target = tmp_path_factory.mktemp("busybox")
    subprocess.run(
        ["dpkg-deb", "-x", str(guest_root / "debs" / pin.filename), str(target)], check=True
    )
    return target / "bin" / "busybox"


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("awk") / "nocloud.awk"
    path.write_bytes(recipe_text("nocloud.awk"))
    return path


def corral_yaml(data: Mapping[str, Any]) -> str:
    """YAML as corral writes it (``corral.cloudinit.render``)."""
    return yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, width=2**31, allow_unicode=True
    )


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """PATH -> scalar, as the reader's ``dump=1`` prints them."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{index}" if prefix else str(index)))
    elif data is None:
        out[prefix] = ""
    elif isinstance(data, bool):
        out[prefix] = "true" if data else "false"
    else:
        out[prefix] = str(data)
    return out


def run_reader(
    busybox: Path,
    program: Path,
    files: Mapping[str, str | bytes],
    *,
    root: Path | None = None,
    dump: bool = False,
    tmp: Path,
) -> subprocess.CompletedProcess[str]:
    argv = [str(busybox), "awk", "-f", str(program)]
    if dump:
        argv += ["-v", "dump=1"]
    if root is not None:
        argv += ["-v", f"root={root}"]
    for name, role in (("meta-data", "meta"), ("user-data", "user"), ("network-config", "net")):
        if name in files:
            content = files[name]
            path = tmp / name
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            argv += [f"role={role}", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, check=True)


def parsed(busybox: Path, program: Path, tmp: Path, **files: str) -> dict[str, dict[str, str]]:
    """The reader's parse of each file, by role."""
    names = {k.replace("_", "-"): v for k, v in files.items()}
    out = run_reader(busybox, program, names, dump=True, tmp=tmp).stdout
    result: dict[str, dict[str, str]] = {"meta": {}, "user": {}, "net": {}, "#": {}}
    for line in out.split("\n")[:-1]:  # not splitlines(): values may hold U+2028
        if line.startswith("#userdata="):
            result["#"]["userdata"] = line.partition("=")[2]
            continue
        key, _, value = line.partition("=")
        role, _, path = key.partition(":")
        result[role][path] = re.sub(
            r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value
        )
    return result


TRICKY = [
    "plain words",
    "echo 'single' \"double\" > /root/x",
    "a: b",
    "- not a list",
    "#not a comment",
    "a #b",
    "trailing space ",
    " leading space",
    "tab\there",
    "line one\nline two\n",
    "line one\n\n  indented\nlast",
    "ends with newline\n",
    "back\\slash \\n not a newline",
    "unicode: é ü — ✓ 中文",
    "bell\x07 and escape\x1b",
    "null",
    "true",
    "0644",
    "'quoted'",
    '"dq"',
    "{flow: like}",
    "[also, flow]",
    "*alias-like",
    "&anchor-like",
    "!tag-like",
    "%percent",
    "@at",
    "`backtick`",
    "key: value # with comment",
    "x" * 3000,
    "",
    "   ",
    "\u2028 line separator",
]


@pytest.mark.parametrize("index", range(len(TRICKY)))
def test_strings_read_as_pyyaml_wrote_them(
    busybox: Path, program: Path, tmp_path: Path, index: int
) -> None:
    value = TRICKY[index]
    document = {
        "instance-id": "i-1",
        "top": value,
        "list": [value, "after"],
        "nested": {"map": {"deeper": value}, "items": [{"path": "/x", "content": value}]},
    }
    text = corral_yaml(document)
    got = parsed(busybox, program, tmp_path, meta_data=text)["meta"]
    assert got == flatten(document), text


def test_what_corral_renders_is_read(busybox: Path, program: Path, tmp_path: Path) -> None:
    user = corral_yaml(
        {
            "runcmd": ["echo one > /root/one", ["touch", "/root/two words"]],
            "write_files": [
                {"path": "/etc/motd", "content": "hello\nworld\n", "permissions": "0600"}
            ],
            "packages": ["vim"],
        }
    )
    files = render_seed(
        SeedRequest(
            instance_id="i-0123456789abcdef",
            hostname="web-1",
            authorized_keys=(KEY_A, KEY_B),
            user_data=f"#cloud-config\n{user}",
            nics=(("net0", "52:54:00:AA:BB:01"), ("net1", "52:54:00:aa:bb:02")),
        )
    )
    text = {name: content.decode() for name, content in files.items()}
    got = parsed(
        busybox,
        program,
        tmp_path,
        meta_data=text["meta-data"],
        user_data=text["user-data"],
        network_config=text["network-config"],
    )
    assert got["meta"] == flatten(yaml.safe_load(text["meta-data"]))
    assert got["user"] == flatten(yaml.safe_load(text["user-data"]))
    assert got["net"] == flatten(yaml.safe_load(text["network-config"]))
    assert got["#"]["userdata"] == "cloud-config"
    assert got["meta"]["public-keys.1"] == KEY_B
    assert got["net"]["ethernets.net1.match.macaddress"] == "52:54:00:aa:bb:02"


def test_hand_written_yaml(busybox: Path, program: Path, tmp_path: Path) -> None:
    user = "\r\n".join(
        [
            "#Cloud-Config",
            "---",
            "# a comment",
            "hostname: box   # trailing comment",
            "ssh_authorized_keys:",
            "  - " + KEY_A,
            "  -   'it''s'",
            "runcmd: [ls, 'a, b', \"c\\td\", [x, y]]",
            "write_files:",
            "  - path: /a",
            "    content: |",
            "      literal",
            "        indented",
            "",
            "      # kept",
            "    permissions: '0600'",
            "  - path: /b",
            "    content: |-",
            "      stripped",
            "",
            "  - path: /c",
            "    content: |+",
            "      kept",
            "",
            "",
            "  - path: /d",
            "    content: >",
            "      folded",
            "      text",
            "",
            "      para",
            "  - {path: /e, content: flow}",
            '  - "path": /f',
            '    content: "multi',
            "      line\\",
            '      joined"',
            "empty:",
            "nulls: ~",
        ]
    )
    got = parsed(busybox, program, tmp_path, user_data=user)
    assert got["#"]["userdata"] == "cloud-config"
    assert got["user"] == {
        "hostname": "box",
        "ssh_authorized_keys.0": KEY_A,
        "ssh_authorized_keys.1": "it's",
        "runcmd.0": "ls",
        "runcmd.1": "a, b",
        "runcmd.2": "c\td",
        "runcmd.3.0": "x",
        "runcmd.3.1": "y",
        "write_files.0.path": "/a",
        "write_files.0.content": "literal\n  indented\n\n# kept\n",
        "write_files.0.permissions": "0600",
        "write_files.1.path": "/b",
        "write_files.1.content": "stripped",
        "write_files.2.path": "/c",
        "write_files.2.content": "kept\n\n\n",
        "write_files.3.path": "/d",
        "write_files.3.content": "folded text\npara\n",
        "write_files.4.path": "/e",
        "write_files.4.content": "flow",
        "write_files.5.path": "/f",
        "write_files.5.content": "multi linejoined",
        "empty": "",
        "nulls": "~",
    }
    # the same document, as PyYAML reads it (~ is null there; the reader keeps the text)
    expected = flatten(yaml.safe_load(user.replace("\r\n", "\n")))
    expected["nulls"] = "~"
    assert got["user"] == expected


# -- acting on a seed, below a scratch root ----------------------------------------------------


def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for directory in ("run/corral-nocloud", "root/.ssh", "var/lib/cloud/scripts", "etc"):
        (root / directory).mkdir(parents=True)
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "etc/hostname").write_text("corral-guest\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tcorral-guest\n")
    (root / "root/.ssh/authorized_keys").write_text(KEY_B + "\n")
    return root


def env(root: Path) -> dict[str, str]:
    out = {}
    for line in (root / "run/corral-nocloud/env").read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value.strip("'")
    return out


SEED = {
    "meta-data": corral_yaml(
        {"instance-id": "i-1", "local-hostname": "meta-name", "public-keys": [KEY_A, KEY_B]}
    ),
    "user-data": "#cloud-config\n"
    + corral_yaml(
        {
            "hostname": "web-1.example.com",
            "ssh_authorized_keys": [KEY_C, KEY_A],
            "runcmd": ["echo 'it works' > /root/ran", ["touch", "/root/a b"]],
            "write_files": [
                {"path": "/etc/app/conf", "content": "x = 1\n", "permissions": "0600"},
                {"path": "/etc/motd", "content": "aGVsbG8K", "encoding": "b64"},
                {"path": "relative", "content": "no"},
            ],
            "packages": ["vim"],
        }
    ),
    "network-config": corral_yaml(
        {
            "version": 2,
            "ethernets": {
                "net0": {
                    "match": {"macaddress": "52:54:00:AB:CD:01"},
                    "set-name": "eth0",
                    "dhcp4": True,
                },
                "net1": {
                    "match": {"name": "en*"},
                    "addresses": ["10.1.0.5/24", "10.1.0.6/16", "fe80::1/64"],
                    "gateway4": "10.1.0.1",
                    "nameservers": {"addresses": ["10.1.0.2"], "search": ["corral.test"]},
                },
            },
        }
    ),
}


def test_first_boot_of_an_instance(busybox: Path, program: Path, tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    run_reader(busybox, program, SEED, root=root, tmp=tmp_path)
    assert env(root) == {
        "instance_id": "i-1",
        "new_instance": "1",
        "hostname": "web-1",
        "keys_added": "2",
        "files": "2",
        "scripts": "runcmd",
        "userdata": "cloud-config",
        "network": "v2",
    }
    # the host name: user-data's wins; its first label for the kernel and /etc/hostname
    assert (root / "proc/sys/kernel/hostname").read_text() == "web-1\n"
    assert (root / "etc/hostname").read_text() == "web-1\n"
    assert (root / "etc/hosts").read_text() == (
        "127.0.0.1\tlocalhost\n127.0.1.1\tweb-1.example.com web-1\n"
    )
    # keys from meta-data and user-data, each once, after the ones already there
    assert (root / "root/.ssh/authorized_keys").read_text().splitlines() == [KEY_B, KEY_A, KEY_C]
    assert (root / "var/lib/cloud/scripts/runcmd").read_text() == (
        "#!/bin/sh\necho 'it works' > /root/ran\n'touch' '/root/a b'\n"
    )
    assert (root / "run/corral-nocloud/final").read_text() == "runcmd\n"
    assert (root / "run/corral-nocloud/net").read_text().splitlines() == [
        "net0 52:54:00:ab:cd:01 - eth0 1 - - - -",
        "net1 - en* - 0 10.1.0.5/24/255.255.255.0,10.1.0.6/16/255.255.0.0 10.1.0.1 10.1.0.2 "
        "corral.test",
    ]
    assert (root / "run/corral-nocloud/warnings").read_text().splitlines() == [
        "user-data: not supported here, ignored: packages",
        "write_files: item 2 has no absolute path: skipped",
        "network-config: net1: address fe80::1/64 is not supported (IPv4 a.b.c.d/n only)",
    ]
    # write_files is a script, run by the guest's sh
    script = root / "run/corral-nocloud/write-files"
    subprocess.run([str(busybox), "sh", str(script)], check=True, env={"PATH": os.environ["PATH"]})
    conf = root / "etc/app/conf"
    assert conf.read_text() == "x = 1\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert (root / "etc/motd").read_text() == "hello\n"
    assert stat.S_IMODE((root / "etc/motd").stat().st_mode) == 0o644


def test_known_instance_only_sets_the_host_name(
    busybox: Path, program: Path, tmp_path: Path
) -> None:
    root = scratch_root(tmp_path)
    (root / "var/lib/cloud/instance-id").write_text("i-1\n")
    run_reader(busybox, program, SEED, root=root, tmp=tmp_path)
    values = env(root)
    assert values["new_instance"] == "0" and values["keys_added"] == "0"
    assert values["scripts"] == "" and values["files"] == "0"
    assert not (root / "run/corral-nocloud/final").exists()
    assert not (root / "run/corral-nocloud/write-files").exists()
    assert (root / "root/.ssh/authorized_keys").read_text() == KEY_B + "\n"
    assert (root / "proc/sys/kernel/hostname").read_text() == "web-1\n"


def test_meta_data_alone(busybox: Path, program: Path, tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    hosts_before = (root / "etc/hosts").stat().st_mtime_ns
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tmeta-name\n")
    hosts_before = (root / "etc/hosts").stat().st_mtime_ns
    files = {"meta-data": "instance-id: i-2\nlocal-hostname: meta-name\npublic-keys: " + KEY_A}
    run_reader(busybox, program, files, root=root, tmp=tmp_path)
    values = env(root)
    assert values["hostname"] == "meta-name" and values["keys_added"] == "1"
    assert values["userdata"] == "none" and values["network"] == "fallback"
    assert (root / "run/corral-nocloud/net").read_text() == ""
    assert (root / "etc/hosts").stat().st_mtime_ns == hosts_before  # unchanged: not rewritten
    assert not (root / "run/corral-nocloud/warnings").exists()


@pytest.mark.parametrize(
    ("user_data", "kind", "warning"),
    [
        ("#!/bin/sh\necho hi > /root/script\n", "script", None),
        ("\n\n#!/bin/sh\necho late\n", "script", None),
        ("", "none", None),
        ("\n  \n", "none", None),
        ("#cloud-config\n", "cloud-config", None),
        ("Content-Type: multipart/mixed\n\n--x\n", "ignored", "neither #cloud-config nor"),
        ("#cloud-config-archive\n- type: x\n", "ignored", "neither #cloud-config nor"),
        ("#include\nhttp://x\n", "ignored", "neither #cloud-config nor"),
    ],
)
def test_user_data_kinds(
    busybox: Path, program: Path, tmp_path: Path, user_data: str, kind: str, warning: str | None
) -> None:
    root = scratch_root(tmp_path)
    files = {"meta-data": "instance-id: i-3\n", "user-data": user_data}
    run_reader(busybox, program, files, root=root, tmp=tmp_path)
    assert env(root)["userdata"] == kind
    warnings = root / "run/corral-nocloud/warnings"
    if warning is None:
        assert not warnings.exists()
    else:
        assert warning in warnings.read_text()
    script = root / "var/lib/cloud/scripts/user-data"
    if kind == "script":
        assert script.read_text() == user_data.lstrip("\n")
        assert env(root)["scripts"] == "user-data"
    else:
        assert not script.exists()


def test_network_config_variants(busybox: Path, program: Path, tmp_path: Path) -> None:
    def net(text: str) -> tuple[str, str]:
        root = scratch_root(tmp_path / str(len(list(tmp_path.iterdir()))))
        files = {"meta-data": "instance-id: i\n", "network-config": text}
        run_reader(busybox, program, files, root=root, tmp=root.parent)
        return env(root)["network"], (root / "run/corral-nocloud/net").read_text()

    assert net("network:\n  config: disabled\n") == ("disabled", "")
    assert net("config: disabled\n") == ("disabled", "")
    assert net("version: 1\nconfig:\n- type: physical\n")[0] == "fallback"
    assert net("network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: yes\n") == (
        "v2",
        "eth0 - - - 1 - - - -\n",
    )
    assert net("version: 2\n") == ("v2", "")
