"""Key pairs: the public key parser against real ``ssh-keygen`` keys, and the key pair store."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from corral.compute import keys as keystore
from corral.compute.context import Corral
from corral.config import Home
from corral.errors import AlreadyExists, InvalidInput, NotFound
from corral.spec.keys import check_key_name, decode_key_file, parse_public_key

needs_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")

GENERATED = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa2048": ["-t", "rsa", "-b", "2048"],
    "rsa3072": ["-t", "rsa", "-b", "3072"],
    "rsa1024": ["-t", "rsa", "-b", "1024"],
}


def ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def ssh_mpint(value: int) -> bytes:
    return ssh_string(value.to_bytes((value.bit_length() + 8) // 8, "big"))


def key_line(kind: str, blob: bytes, comment: str = "") -> str:
    return f"{kind} {base64.b64encode(blob).decode()} {comment}".strip()


def ed25519_raw(seed: bytes | None = None) -> bytes:
    """A new ed25519 public key, or with ``seed`` (32 bytes) always the same one."""
    private = (
        ed25519.Ed25519PrivateKey.generate()
        if seed is None
        else ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    )
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def p256_point() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def keygen_l(path: Path) -> tuple[int, str, str]:
    """Bits, fingerprint and type label as ``ssh-keygen -l -E sha256`` prints them."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    bits, fingerprint = out.split()[:2]
    return int(bits), fingerprint, out.rsplit("(", 1)[1].rstrip(")")


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen")
    root = tmp_path_factory.mktemp("keys")
    for name, args in GENERATED.items():
        subprocess.run(
            ["ssh-keygen", "-q", *args, "-N", "", "-C", f"me@{name}", "-f", str(root / name)],
            check=True,
            capture_output=True,
        )
    dsa = subprocess.run(
        ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(root / "dsa")],
        check=False,
        capture_output=True,
    )
    if dsa.returncode != 0:  # OpenSSH without DSA: a hand-built ssh-dss blob
        blob = b"".join([ssh_string(b"ssh-dss"), *(ssh_mpint(v) for v in (23, 11, 4, 9))])
        (root / "dsa.pub").write_text(key_line("ssh-dss", blob, "dsa") + "\n")
    sk_ed = ssh_string(b"sk-ssh-ed25519@openssh.com") + ssh_string(ed25519_raw())
    (root / "sked.pub").write_text(
        key_line("sk-ssh-ed25519@openssh.com", sk_ed + ssh_string(b"ssh:"), "me@sked") + "\n"
    )
    sk_ec = b"".join(
        ssh_string(part)
        for part in (b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", p256_point(), b"ssh:")
    )
    (root / "skec.pub").write_text(
        key_line("sk-ecdsa-sha2-nistp256@openssh.com", sk_ec, "me@skec") + "\n"
    )
    return root


@needs_keygen
@pytest.mark.parametrize(
    "name", ["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa2048", "rsa3072", "sked", "skec"]
)
def test_accepts_keys_with_ssh_keygen_fingerprints(keydir: Path, name: str) -> None:
    path = keydir / f"{name}.pub"
    key = parse_public_key(path.read_text())
    bits, fingerprint, label = keygen_l(path)
    assert (key.bits, key.fingerprint, key.label) == (bits, fingerprint, label)
    assert key.comment == f"me@{name}"
    assert key.line == path.read_text().strip()


@needs_keygen
def test_rfc4716_form_is_converted(keydir: Path) -> None:
    exported = subprocess.run(
        ["ssh-keygen", "-e", "-f", str(keydir / "rsa2048.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key = parse_public_key(exported)
    original = parse_public_key((keydir / "rsa2048.pub").read_text())
    assert (key.kind, key.blob, key.fingerprint) == (
        original.kind,
        original.blob,
        original.fingerprint,
    )
    assert key.comment.startswith("2048-bit RSA, converted by")


def refused(text: str, field: str = "public_key") -> str:
    with pytest.raises(InvalidInput) as err:
        parse_public_key(text, field)
    assert err.value.field == field
    return err.value.reason


@needs_keygen
def test_private_key_is_refused_without_echoing_it(keydir: Path) -> None:
    for name in ("ed25519", "rsa2048"):
        secret = (keydir / name).read_text()
        reason = refused(secret, str(keydir / name))
        assert "private key" in reason
        assert ".pub" in reason
        for line in secret.splitlines()[1:-1]:
            assert line not in reason
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n"
    assert "private key" in refused(pem)
    assert "private key" in refused("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n")


@needs_keygen
def test_short_rsa_and_dsa_are_refused(keydir: Path) -> None:
    reason = refused((keydir / "rsa1024.pub").read_text())
    assert "at least 2048 bits" in reason
    assert "has 1024" in reason
    assert "DSA" in refused((keydir / "dsa.pub").read_text())


def test_oversized_rsa_is_refused() -> None:
    modulus = (1 << 16399) | 1
    blob = ssh_string(b"ssh-rsa") + ssh_mpint(65537) + ssh_mpint(modulus)
    assert "at most 16384 bits" in refused(key_line("ssh-rsa", blob))


# A fixed key: the parameters below (and so the tests' ids) are the same in every process.
ED_BLOB = ssh_string(b"ssh-ed25519") + ssh_string(ed25519_raw(bytes(range(32))))
ED_LINE = key_line("ssh-ed25519", ED_BLOB, "me@host")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "is empty"),
        ("  \n\t\n", "is empty"),
        ("# just a comment\n", "only comments"),
        (f"{ED_LINE}\n{ED_LINE}\n", "holds 2 lines; give exactly one key"),
        (f'command="echo hi" {ED_LINE}', "authorized_keys options"),
        (f"no-pty,no-port-forwarding {ED_LINE}", "authorized_keys options"),
        (
            f"ssh-rsa {ED_LINE.split()[1]}",
            "does not match the key data, which holds a 'ssh-ed25519'",
        ),
        ("ssh-ed25519 AAAA!!notbase64", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB", "not valid base64"),
        ("ssh-ed25519", "no key data"),
        (key_line("ssh-ed25519", ED_BLOB + b"junk"), "4 bytes of trailing garbage"),
        (key_line("ssh-ed25519", ED_BLOB[:-3]), "truncated or malformed"),
        (key_line("ssh-ed25519", ssh_string(b"ssh-ed25519") + ssh_string(b"x" * 31)), "32 bytes"),
        ("ssh-xmss@openssh.com AAAA", "not a key type corral accepts; allowed: ssh-ed25519"),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "certificate"),
        ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB", "does not start with a key type"),
        ("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", "ssh-keygen -i -m PKCS8"),
        ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "X.509"),
        ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n", "ssh-keygen -i -f FILE"),
        (ED_LINE + " \x1b[31mred", "control character U+001B"),
        (ED_LINE + " evil\u202eboy", "control character U+202E"),
        (ED_LINE + " tab\there", "control character U+0009"),
        ("x" * 70000, "longer than"),
    ],
)
def test_rejections_say_why(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_ecdsa_key_material_is_checked() -> None:
    kind = "ecdsa-sha2-nistp256"
    point = p256_point()
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    blob = ssh_string(kind.encode()) + ssh_string(b"nistp256") + ssh_string(off_curve)
    assert "not on curve nistp256" in refused(key_line(kind, blob))
    blob = ssh_string(kind.encode()) + ssh_string(b"nistp384") + ssh_string(point)
    assert "names curve nistp256 but the key is on 'nistp384'" in refused(key_line(kind, blob))


def test_whitespace_and_comment_lines_around_one_key_are_fine() -> None:
    key = parse_public_key(f"# my laptop\r\n\r\n  {ED_LINE}  \r\n")
    assert key.line == ED_LINE
    assert parse_public_key(ED_LINE.rsplit(" ", 1)[0]).comment == ""


def test_decode_key_file_refuses_binary_and_huge_files() -> None:
    with pytest.raises(InvalidInput, match="binary file"):
        decode_key_file(b"\x30\x82\x01\x22\xff\xfe", "k.der")
    with pytest.raises(InvalidInput, match="binary file"):
        decode_key_file(b"ssh-ed25519\x00", "k")
    with pytest.raises(InvalidInput, match="at most 65536 bytes"):
        decode_key_file(b"x" * 70000)
    assert decode_key_file(ED_LINE.encode()) == ED_LINE


@pytest.mark.parametrize("name", ["laptop", "alice.laptop", "id_ed25519", "k-1", "0", "a" * 63])
def test_key_names_allowed(name: str) -> None:
    assert check_key_name(name) == name


@pytest.mark.parametrize("name", ["", "Alice", ".hidden", "-x", "_x", "a/b", "a b", "a" * 64])
def test_key_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_key_name(name)
    assert err.value.field == "name"
    assert "letters, digits" in err.value.reason


# The store: import, create, list, show, delete.


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Corral]:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    (tmp_path / "user").mkdir()
    corral = Corral(Home(tmp_path / "state"))
    yield corral
    corral.close()


def names(ctx: Corral) -> list[str]:
    return [k.name for k in keystore.list_keys(ctx)]


@needs_keygen
def test_import_file_records_the_private_key_next_to_it(ctx: Corral, keydir: Path) -> None:
    view = keystore.import_key_file(ctx, "laptop", keydir / "ed25519.pub")
    assert view.private_key_path == str(keydir / "ed25519")
    assert view.fingerprint == keygen_l(keydir / "ed25519.pub")[1]
    assert keystore.get_key(ctx, "laptop") == view
    # The same key under a second name is allowed (as EC2 does).
    other = keystore.import_key(ctx, "again", (keydir / "ed25519.pub").read_text())
    assert other.private_key_path is None
    assert other.fingerprint == view.fingerprint
    assert names(ctx) == ["again", "laptop"]


@needs_keygen
def test_import_refusals_record_nothing(ctx: Corral, keydir: Path, tmp_path: Path) -> None:
    pub = (keydir / "ecdsa256.pub").read_text()
    with pytest.raises(InvalidInput) as err:
        keystore.import_key_file(ctx, "k", keydir / "ecdsa256")
    assert err.value.field == str(keydir / "ecdsa256")
    assert "private key" in err.value.reason
    with pytest.raises(InvalidInput, match="does not exist") as err:
        keystore.import_key(ctx, "k", pub, tmp_path / "nowhere")
    assert err.value.field == "private_key"
    with pytest.raises(InvalidInput, match="is a public key file"):
        keystore.import_key(ctx, "k", pub, keydir / "ecdsa256.pub")
    with pytest.raises(InvalidInput, match="not a regular file"):
        keystore.import_key(ctx, "k", pub, tmp_path)
    with pytest.raises(InvalidInput, match="does not exist") as err:
        keystore.import_key_file(ctx, "k", tmp_path / "missing.pub")
    assert err.value.field == "file"
    with pytest.raises(InvalidInput) as err:
        keystore.import_key(ctx, "Bad Name", pub)
    assert err.value.field == "name"
    assert names(ctx) == []
    keystore.import_key(ctx, "k", pub)
    with pytest.raises(AlreadyExists, match="key pair 'k' already exists"):
        keystore.import_key(ctx, "k", (keydir / "ed25519.pub").read_text())
    assert keystore.get_key(ctx, "k").kind == "ecdsa-sha2-nistp256"


def test_private_key_mode_warning(tmp_path: Path) -> None:
    secret = tmp_path / "id"
    secret.write_text("not read")
    secret.chmod(0o600)
    assert keystore.private_key_warning(secret) is None
    secret.chmod(0o644)
    warning = keystore.private_key_warning(secret)
    assert warning is not None
    assert "0644" in warning
    assert f"chmod 600 {secret}" in warning


@needs_keygen
def test_create_writes_a_0600_key_once(ctx: Corral, tmp_path: Path) -> None:
    view, path = keystore.create_key(ctx, "web")
    assert path == tmp_path / "user" / ".ssh" / "corral-web"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    assert derived == view.public_key.split()[:2]
    assert path.with_name("corral-web.pub").read_text() == view.public_key + "\n"
    assert view.comment == "corral-web"
    assert view.private_key_path == str(path)
    private_text = path.read_text()
    secret_line = private_text.splitlines()[1].encode()
    for db_file in ctx.home.root.glob("corral.db*"):  # the database and its WAL
        assert secret_line not in db_file.read_bytes()
    # Again: the name is taken; under a new name the default file exists.
    with pytest.raises(AlreadyExists):
        keystore.create_key(ctx, "web")
    path.with_name("corral-api").write_text("someone's file")
    with pytest.raises(InvalidInput, match=r"already exists.*--out") as err:
        keystore.create_key(ctx, "api")
    assert err.value.field == "out"
    assert path.with_name("corral-api").read_text() == "someone's file"
    assert not path.with_name("corral-api.pub").exists()
    assert names(ctx) == ["web"]
    assert path.read_text() == private_text


def test_create_with_out_and_failures_leave_nothing(
    ctx: Corral, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "keys" / "id_app"
    with pytest.raises(InvalidInput, match="is not a directory"):
        keystore.create_key(ctx, "app", out)
    out.parent.mkdir()
    out.with_name("id_app.pub").write_text("taken")
    with pytest.raises(InvalidInput, match=r"id_app\.pub already exists"):
        keystore.create_key(ctx, "app", out)
    assert not out.exists()
    out.with_name("id_app.pub").unlink()

    def broken(*_args: object) -> None:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(keystore, "_record", broken)
    with pytest.raises(RuntimeError):
        keystore.create_key(ctx, "app", out)
    assert list(out.parent.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    view, path = keystore.create_key(ctx, "app", out)
    assert path == out
    assert view.private_key_path == str(out)


def test_get_and_delete(ctx: Corral, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="key pair 'nope' not found"):
        keystore.get_key(ctx, "nope")
    with pytest.raises(NotFound):
        keystore.delete_key(ctx, "../../etc")
    view, path = keystore.create_key(ctx, "gone")
    deleted = keystore.delete_key(ctx, "gone")
    assert deleted == view
    assert path.exists()
    assert names(ctx) == []
    with pytest.raises(NotFound):
        keystore.delete_key(ctx, "gone")
