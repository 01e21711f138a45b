"""What corral writes, judged by Debian's own cloud-init: ``cloud-init schema`` accepts the
user-data, ``devel net-convert`` renders the network-config for Debian and Ubuntu, its NoCloud
reader finds the keys in a seed read back from the ISO, and its type detection agrees with
corral's."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from corral.cloudinit import schema
from corral.cloudinit.render import (
    INCLUSION_TYPES,
    MIME_TYPE,
    SeedRequest,
    render_seed,
    render_user_data,
    user_data_type,
)
from corral.cloudinit.schema import (
    CloudInitTool,
    cloud_init_tool,
    net_convert,
    validate_cloud_config,
    validate_user_data,
)
from corral.cloudinit.seed import write_seed
from corral.errors import HostError, InvalidInput

from .conftest import ED25519, RSA, Tool

REQ = SeedRequest(
    instance_id="i-0123456789abcdef",
    hostname="web1",
    authorized_keys=(ED25519, RSA),
    nics=(("net0", "52:54:00:12:34:56"), ("backend", "52:54:00:ab:cd:ef")),
)

RICH = f"""\
#cloud-config
package_update: true
packages: [nginx, curl]
users:
  - default
  - name: deploy
    groups: [sudo]
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeploy deploy@ci]
ssh_authorized_keys:
  - {RSA}
write_files:
  - path: /etc/motd
    permissions: "0644"
    content: |
      wëlcome
runcmd:
  - [systemctl, enable, --now, nginx]
  - echo done > /root/done
timezone: Europe/Paris
"""


def _python(tool: CloudInitTool, script: str, *args: str, stdin: str = "") -> str:
    """Run a script on cloud-init's own modules (as the tool runs: python3 -s, PYTHONPATH)."""
    proc = subprocess.run(
        [schema.PYTHON, "-s", "-c", script, *args],
        input=stdin,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", **tool.env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_tool_is_pinned_and_cached(cloud_init: CloudInitTool, cache_dir: Path) -> None:
    pin = json.loads((cache_dir / "cloud-init" / "pin.json").read_text())
    assert pin["version"] == cloud_init.version
    assert (cache_dir / "cloud-init" / "debs" / pin["filename"]).is_file()
    started = time.monotonic()
    assert cloud_init_tool(cache_dir) == cloud_init
    assert time.monotonic() - started < 0.5
    proc = cloud_init.run(["--version"])
    assert proc.returncode == 0
    assert cloud_init.version.split("-")[0] in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "user_data",
    [
        None,
        "#cloud-config\n",
        RICH,
        "#Cloud-Config\r\nhostname: mine\r\nssh_authorized_keys:\r\n  - " + RSA + "\r\n",
    ],
    ids=["none", "empty", "rich", "crlf-own-hostname"],
)
def test_schema_accepts_the_user_data_corral_writes(
    cloud_init: CloudInitTool, cache_dir: Path, user_data: str | None
) -> None:
    text = render_user_data(dataclasses.replace(REQ, user_data=user_data))
    started = time.monotonic()
    validate_cloud_config(text, cache_dir)
    print(f"cloud-init schema: {time.monotonic() - started:.2f} s")
    if user_data is not None:
        validate_cloud_config(user_data, cache_dir)


def test_schema_rejects_with_cloud_inits_own_message(
    cloud_init: CloudInitTool, cache_dir: Path
) -> None:
    bad = "#cloud-config\nhostname: 5\nruncmd: yes\npackages: {}\n"
    with pytest.raises(InvalidInput) as err:
        validate_cloud_config(bad, cache_dir)
    assert err.value.field == "user_data"
    assert err.value.reason == (
        "Cloud config schema errors: hostname: 5 is not of type 'string', "
        "packages: {} is not of type 'array', runcmd: True is not of type 'array'"
    )


def test_schema_rejects_a_bad_user_entry(cloud_init: CloudInitTool, cache_dir: Path) -> None:
    with pytest.raises(InvalidInput, match=r"users\.0: .* is not valid under any") as err:
        validate_user_data("#cloud-config\nusers:\n  - name: 5\n", cache_dir)
    assert "/tmp" not in err.value.reason


def test_yaml_errors_and_non_mappings_are_refused_before_cloud_init() -> None:
    with pytest.raises(InvalidInput, match="line 3, column 1"):
        validate_cloud_config("#cloud-config\npackages: [\n", Path("/nonexistent"))
    with pytest.raises(InvalidInput, match="must be a YAML mapping"):
        validate_cloud_config("#cloud-config\n- a\n", Path("/nonexistent"))
    with pytest.raises(InvalidInput, match="begins with '#cloud-config'"):
        validate_cloud_config("#!/bin/sh\n", Path("/nonexistent"))


def test_other_user_data_is_not_checked() -> None:
    validate_user_data("#!/bin/sh\nexit 1\n", Path("/nonexistent"))
    validate_user_data("MIME-Version: 1.0\n\n#cloud-config\nhostname: 5\n", Path("/nonexistent"))


@pytest.mark.parametrize(
    ("kind", "distro", "expected"),
    [
        ("eni", "debian", "etc/network/interfaces.d/50-cloud-init"),
        ("netplan", "ubuntu", "etc/netplan/50-cloud-init.yaml"),
        ("networkd", "debian", "etc/systemd/network/10-cloud-init-eth1.network"),
    ],
)
def test_network_config_renders_for_debian_and_ubuntu(
    cloud_init: CloudInitTool, cache_dir: Path, kind: str, distro: str, expected: str
) -> None:
    network = render_seed(REQ)["network-config"].decode()
    files = net_convert(network, kind, distro, cache_dir)
    text = files[expected]
    if kind == "eni":
        assert "auto eth0\niface eth0 inet dhcp\n" in text
        assert "auto eth1\niface eth1 inet dhcp\n" in text
        rules = files["etc/udev/rules.d/70-persistent-net.rules"]
        assert 'ATTR{address}=="52:54:00:12:34:56", NAME="eth0"' in rules
        assert 'ATTR{address}=="52:54:00:ab:cd:ef", NAME="eth1"' in rules
    elif kind == "netplan":
        plan = yaml.safe_load(text)["network"]
        assert plan["ethernets"]["backend"] == {
            "dhcp4": True,
            "match": {"macaddress": "52:54:00:ab:cd:ef"},
            "set-name": "eth1",
        }
    else:
        assert (
            text == "[Match]\nMACAddress=52:54:00:ab:cd:ef\nName=eth1\n\n[Network]\nDHCP=ipv4\n\n"
        )


def test_network_config_refused_by_cloud_init(cloud_init: CloudInitTool, cache_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="AttributeError") as err:
        net_convert("version: 2\nethernets: 5\n", "eni", cache_dir=cache_dir)
    assert err.value.field == "network_config"


_READ_SEED = """
import json, sys
from cloudinit import helpers, util
from cloudinit.sources import DataSourceNoCloud, normalize_pubkey_data
from cloudinit.user_data import UserDataProcessor
seeded = util.pathprefix2dict(sys.argv[1], required=["user-data", "meta-data"],
                              optional=["vendor-data", "network-config"])
data = DataSourceNoCloud._merge_new_seed(
    {"meta-data": {}, "user-data": "", "vendor-data": "", "network-config": None}, seeded)
paths = helpers.Paths({"cloud_dir": sys.argv[2], "run_dir": sys.argv[2]})
message = UserDataProcessor(paths).process(data["user-data"])
parts = [[part.get_content_type(), part.get_payload(decode=True).decode()]
         for part in message.walk() if not part.is_multipart()]
print(json.dumps({"meta-data": data["meta-data"], "network-config": data["network-config"],
                  "keys": normalize_pubkey_data(data["meta-data"].get("public-keys")),
                  "parts": parts}))
"""


@pytest.mark.parametrize(
    "user_data", [None, RICH, "#!/bin/sh\necho hi\n"], ids=["none", "rich", "script"]
)
def test_cloud_inits_nocloud_reader_finds_the_keys_in_the_iso(
    cloud_init: CloudInitTool, xorriso: Tool, tmp_path: Path, user_data: str | None
) -> None:
    req = dataclasses.replace(REQ, user_data=user_data)
    files = render_seed(req)
    iso = tmp_path / "seed.iso"
    write_seed(iso, files)
    out = tmp_path / "mnt"
    xorriso("-osirrox", "on", "-indev", iso, "-extract", "/", out)
    got = json.loads(_python(cloud_init, _READ_SEED, str(out), str(tmp_path / "cloud")))
    assert got["meta-data"] == {
        "instance-id": "i-0123456789abcdef",
        "local-hostname": "web1",
        "public-keys": [ED25519, RSA],
    }
    assert got["keys"] == [ED25519, RSA]
    assert got["network-config"]["ethernets"]["net0"]["set-name"] == "eth0"
    [(ctype, payload)] = got["parts"]
    assert payload == files["user-data"].decode()
    if user_data is not None and user_data.startswith("#!"):
        assert ctype == "text/x-shellscript"
    else:
        assert ctype == "text/cloud-config"
        config = yaml.safe_load(payload)
        assert config["hostname"] == "web1"
        expected = [RSA, ED25519] if user_data == RICH else [ED25519, RSA]
        assert config["ssh_authorized_keys"] == expected


_DETECT = """
import json, sys
from cloudinit.handlers import INCLUSION_TYPES_MAP, type_from_starts_with
from cloudinit.user_data import NOT_MULTIPART_TYPE, convert_string
out = []
for text in json.load(sys.stdin):
    parsed = convert_string(text).get_content_type() != NOT_MULTIPART_TYPE
    out.append([parsed, type_from_starts_with(text)])
print(json.dumps({"map": INCLUSION_TYPES_MAP, "types": out}))
"""

SAMPLES = [
    "#cloud-config\n",
    "#Cloud-Config \r\nhostname: a\r\n",
    "\n\t  #CLOUD-CONFIG\n",
    "#cloud-configure: x\n",
    "#cloud-config-archive\n",
    "#cloud-config-jsonp\n",
    "#!/bin/sh\n",
    "  #!/bin/sh\n",
    "#include\nhttp://x\n",
    "#include-once\nhttp://x\n",
    "#cloud-boothook\n",
    "#part-handler\n",
    "## template: jinja\n#cloud-config\n",
    "## Template: Jinja\n",
    "text/x-shellscript-per-boot\n",
    "\ufeff#cloud-config\n",
    "# cloud-config\n",
    "cloud-config\n",
    "hello\n",
    "",
    'Content-Type: multipart/mixed; boundary="b"\nMIME-Version: 1.0\n\n--b--\n',
    "#cloud-config\n# MIME-Version: in a comment\n",
    "#cloud-config\n" + "#" * 5000 + "\nmime-version: beyond 4096 bytes\n",
]


def test_corrals_type_detection_is_cloud_inits(cloud_init: CloudInitTool) -> None:
    got = json.loads(_python(cloud_init, _DETECT, stdin=json.dumps(SAMPLES)))
    assert got["map"] == dict(INCLUSION_TYPES)
    for text, (parsed_as_mime, starts_with) in zip(SAMPLES, got["types"], strict=True):
        expected = MIME_TYPE if parsed_as_mime else starts_with
        assert user_data_type(text) == expected, text


def test_missing_python_module_names_the_package(
    cloud_init: CloudInitTool, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = {**schema.PYTHON_DEPENDENCIES, "corral_no_such_module": "python3-corral-nope"}
    monkeypatch.setattr(schema, "PYTHON_DEPENDENCIES", deps)
    monkeypatch.setattr(schema, "_checked", set())
    with pytest.raises(HostError, match=r"apt-get install python3-corral-nope$"):
        cloud_init_tool(cache_dir)


def test_a_pinned_package_is_unpacked_again_offline(
    cloud_init: CloudInitTool, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = cache_dir / "cloud-init"
    target = tmp_path / "cache" / "cloud-init"
    (target / "debs").mkdir(parents=True)
    shutil.copy(source / "pin.json", target / "pin.json")
    pin = json.loads((source / "pin.json").read_text())
    shutil.copy(source / "debs" / pin["filename"], target / "debs")
    bin_dir = tmp_path / "bin"  # dpkg-deb, and no apt-get: nothing can be downloaded
    bin_dir.mkdir()
    for name in ("dpkg-deb", "tar", "xz", "zstd"):
        if found := shutil.which(name):
            (bin_dir / name).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    tool = cloud_init_tool(tmp_path / "cache")
    assert tool.version == cloud_init.version
    assert tool.root == target / cloud_init.version
    assert {p.name for p in target.iterdir()} == {".lock", "debs", "pin.json", cloud_init.version}


def test_no_apt_and_nothing_cached_is_a_host_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostError, match="apt-get is not installed"):
        cloud_init_tool(tmp_path / "cache")
