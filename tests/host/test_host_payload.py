"""The KVM self-test's payload: the image's shape, its parameters, its listing (all pure)."""

from __future__ import annotations

import struct

import pytest

from corral.host import kvm, payload
from corral.host.asm import Asm

# --- The image --------------------------------------------------------------------------------


def test_payload_is_a_multiboot_image_qemu_loads_flat() -> None:
    image = payload.build_payload()
    magic, flags, checksum, header, load, load_end, bss_end, entry = struct.unpack_from(
        "<8I", image
    )
    assert magic == 0x1BADB002
    assert flags & 0x00010000  # address fields valid: no ELF needed
    assert not flags & 0x4  # QEMU rejects a request for a video mode
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert header == load == 0x100000
    assert load_end == load + len(image)
    assert load_end <= bss_end
    assert load < entry < load_end
    # QEMU would treat the file as a Linux bzImage if "HdrS" sat at 0x202.
    assert image[0x202:0x206] != b"HdrS"
    assert len(image) <= 4096


def test_payload_is_deterministic_and_embeds_its_work() -> None:
    assert payload.build_payload() == payload.build_payload()
    small = payload.build_payload(work=10)
    assert struct.pack("<I", 10) in small
    assert struct.pack("<I", payload.work_checksum(10)) in small
    assert payload.MARKER in small


def test_work_checksum_is_the_wrapped_sum() -> None:
    assert payload.work_checksum(1) == 1
    assert payload.work_checksum(10) == 55
    assert payload.work_checksum(1 << 24) == sum(range(1, (1 << 24) + 1)) % (1 << 32)


@pytest.mark.parametrize(("work", "ticks"), [(0, 2), (1 << 32, 2), (10, 0), (10, 128)])
def test_payload_rejects_out_of_range_parameters(work: int, ticks: int) -> None:
    with pytest.raises(ValueError, match="must be in"):
        payload.build_payload(work=work, ticks=ticks)


def test_listing_shows_every_stage() -> None:
    listing = payload.payload_listing(work=10)
    for text in ("lgdt [gdtr]", "wrmsr", "jmp 0x08:entry64", "lidt [idtr]", "iretq", "hlt"):
        assert text in listing
    assert "00100000  02 b0 ad 1b" in listing


def test_a_short_jump_out_of_range_is_refused() -> None:
    a = Asm(0x1000)
    a.rel8(b"\xeb", "far", "jmp far")
    a.op(b"\x90" * 128, "times 128 nop")
    a.label("far")
    with pytest.raises(ValueError, match="short jump to far out of range"):
        a.link()


def test_kvm_still_exports_the_payload_names() -> None:
    for name in (
        "MARKER",
        "OK_VALUE",
        "OK_STATUS",
        "FAIL_VALUE",
        "FAIL_STATUS",
        "DEBUG_EXIT_PORT",
        "DEFAULT_WORK",
        "TIMER_TICKS",
        "STAGES",
        "FAILURES",
        "build_payload",
        "payload_listing",
        "work_checksum",
    ):
        assert getattr(kvm, name) is getattr(payload, name)
