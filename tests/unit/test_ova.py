"""The pure rules of OVA archives: which disks an OVF references, which members are refused."""

from __future__ import annotations

import pytest

from corral.errors import ImageError
from corral.storage.ova import MAX_DISK, Member, is_ova, ovf_disks, plan_members

OVF = b"""<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="f1" ovf:href="root.vmdk"/>
    <File ovf:id="f2" ovf:href="data.vmdk"/>
    <File ovf:id="f3" ovf:href="notes.txt"/>
  </References>
  <DiskSection>
    <Disk ovf:diskId="d1" ovf:fileRef="f1"/>
    <Disk ovf:diskId="d2" ovf:fileRef="f2"/>
  </DiskSection>
</Envelope>"""


def test_is_ova_reads_the_ustar_magic() -> None:
    assert is_ova(bytes(257) + b"ustar\x0000")
    assert not is_ova(b"QFI\xfb" + bytes(300))


def test_only_the_files_of_disks_are_chosen_in_order() -> None:
    assert ovf_disks("a.ova", OVF) == ["root.vmdk", "data.vmdk"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (OVF.replace(b"root.vmdk", b"../root.vmdk"), "not a file of the archive"),
        (OVF.replace(b"root.vmdk", b"/etc/shadow"), "not a file of the archive"),
        (OVF.replace(b'fileRef="f2"', b'fileRef="f9"'), "unknown file 'f9'"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]>' + OVF[22:], "document type"),
        (b"<Envelope><References/></Envelope>", "references no disk"),
        (b"<nope", "not XML"),
    ],
)
def test_a_bad_ovf_is_refused(text: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        ovf_disks("a.ova", text)


def _members(*extra: Member) -> list[Member]:
    return [
        Member("a.ovf", 100, regular=True),
        Member("root.vmdk", 10, regular=True),
        Member("data.vmdk", 20, regular=True),
        *extra,
    ]


def test_the_disks_members_are_chosen() -> None:
    chosen = plan_members("a.ova", _members(), ["root.vmdk", "data.vmdk"])
    assert [m.name for m in chosen] == ["root.vmdk", "data.vmdk"]


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (Member("/etc/passwd", 1, regular=True), "not a plain relative name"),
        (Member("x/../../evil", 1, regular=True), "not a plain relative name"),
        (Member("passwd", 0, regular=False), "link or special file"),
        (Member("root.vmdk", 10, regular=True), "twice"),
    ],
)
def test_a_bad_member_refuses_the_archive(member: Member, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        plan_members("a.ova", _members(member), ["root.vmdk", "data.vmdk"])


def test_a_missing_or_too_large_disk_is_refused() -> None:
    with pytest.raises(ImageError, match="is not in it"):
        plan_members("a.ova", _members(), ["other.vmdk"])
    huge = [Member("big.vmdk", MAX_DISK + 1, regular=True)]
    with pytest.raises(ImageError, match="larger than"):
        plan_members("a.ova", huge, ["big.vmdk"])
