"""The functional KVM self-test: does a guest actually *run* under ``-accel kvm`` here?

``/dev/kvm`` existing, opening and answering ``KVM_CREATE_VM`` is not proof that guests work.
:func:`self_test` boots a tiny hand-assembled payload with QEMU and accepts KVM only when the
payload prints :data:`MARKER` on the serial port *and* leaves QEMU through ``isa-debug-exit``
with :data:`OK_STATUS`, within a short deadline (:data:`DEFAULT_TIMEOUT`).

The payload (:func:`build_payload`; :func:`payload_listing` prints it) is a flat Multiboot v1
image (a.out kludge) that QEMU's ``-kernel`` loader enters in 32-bit protected mode, after
SeaBIOS and the real-mode to protected-mode switch of QEMU's option ROM: the same path a Linux
bzImage takes. It prints a stage line on COM1 after each step:

1. ``S1``: loads its own GDT, checks with CPUID that long mode exists;
2. ``S2``: builds identity page tables (1 GiB of 2 MiB pages), enables PAE, sets EFER.LME,
   enables paging, far-jumps into a 64-bit code segment, checks EFER.LMA; then installs an IDT
   (exceptions end the test with ``F:EXC``);
3. ``S3``: reads IA32_ARCH_CAPABILITIES (MSR 0x10a) when CPUID advertises it, as Linux does
   early, then runs ``2**24`` iterations of add / store / dec / jnz (67 M instructions) and
   checks the sum against the value computed here;
4. ``S4``: remaps the 8259 PIC, runs the 8254 PIT at ~1 kHz, and waits with ``sti; hlt`` for
   two timer interrupts;

then prints the marker and exits QEMU. Failures it detects itself print an ``F:`` line and
exit with :data:`FAIL_STATUS`; anything else (a hang, a crash of QEMU, a reset) is judged from
the last stage line and QEMU's stderr by :func:`interpret`.

What discriminates, measured on the development machines (Debian 12, QEMU 7.2, whose KVM is
the ``kvm_pvm`` module and whose CPU flags show neither ``vmx`` nor ``svm``):

- A Debian 6.1 kernel prints ``Probing EDD`` and then seems to hang. It does not hang: QEMU's
  monitor shows it in 64-bit mode inside the decompressor with its registers moving, slowly.
- A payload that only reaches 64-bit mode and prints a marker *passes* there: SeaBIOS and the
  mode switches take about 2.2 s instead of 0.1 s, but they finish. So "reached long mode" is
  not enough.
- The stage-3 loop is the discriminator. Given 40 s, the whole payload passes there in about
  35 s, i.e. guest code runs at about 2 M instructions per second (emulated, not executed);
  under TCG the whole run takes 0.12-0.25 s (the loop about 65 ms), and native KVM runs the
  loop in milliseconds. With the 3 s deadline the test fails there after printing ``S2``, and
  the reason says the loop did not finish. Timer interrupts (stage 4) do work there.
- ``-cpu host`` / ``-cpu max`` did not abort there when this was measured (MACHINE.md reports
  an abort on MSR 0x10a); the test runs with the model guests get under KVM
  (:data:`KVM_CPU`, ``host``, as :mod:`corral.qemu.argv` chooses), so a QEMU that aborts with
  it is caught, and reported with its last line of stderr.

A working KVM passes in well under a second, most of it QEMU start-up and SeaBIOS.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: What the payload prints when every stage passed.
MARKER = b"KVMOK64\n"
#: Value the payload writes to ``isa-debug-exit`` on success, and QEMU's resulting exit status.
OK_VALUE = 0x2A
OK_STATUS = (OK_VALUE << 1) | 1
#: Value written on a detected failure (after an ``F:...`` line), and the resulting status.
FAIL_VALUE = 0x15
FAIL_STATUS = (FAIL_VALUE << 1) | 1
#: I/O port of the ``isa-debug-exit`` device the test adds.
DEBUG_EXIT_PORT = 0xF4
#: CPU model for :func:`run_payload` unless told otherwise: conservative, accepted by KVM and TCG.
DEFAULT_CPU = "qemu64"
#: CPU model :func:`self_test` uses: the one guests get under KVM (``corral.qemu.argv``).
KVM_CPU = "host"
#: Deadline for one run of the payload.
DEFAULT_TIMEOUT = 3.0
#: Iterations of the stage-3 loop (4 instructions each).
DEFAULT_WORK = 1 << 24
#: Timer interrupts stage 4 waits for.
TIMER_TICKS = 2

#: Stage lines in the order the payload prints them, with what reaching them means.
STAGES: tuple[tuple[bytes, str], ...] = (
    (b"S1\n", "entered 32-bit protected mode"),
    (b"S2\n", "reached 64-bit long mode"),
    (b"S3\n", "finished its work loop"),
    (b"S4\n", "received timer interrupts"),
)
#: Failure lines the payload may print, and what they mean.
FAILURES: dict[bytes, str] = {
    b"F:NOLM\n": "the virtual CPU has no long mode (CPUID 0x80000001 EDX bit 29)",
    b"F:NOLMA\n": "EFER.LMA is clear after enabling paging: long mode not active",
    b"F:SUM\n": "the work loop computed a wrong result",
    b"F:EXC\n": "the payload took an unexpected CPU exception",
}

# Guest-physical layout. QEMU's multiboot loader puts the image at BASE and its own boot
# information after the end of our BSS, so everything below _BSS_END is ours.
_BASE = 0x100000  # load address of the image (1 MiB), at most 4 KiB long
_TICKS = 0x101000  # dword incremented by the timer interrupt handler
_SCRATCH = 0x101004  # dword the work loop stores to (not in the code's page: under TCG a
#                      store there would invalidate the translated code on every iteration)
_PML4 = 0x102000  # page-map level 4 (one entry used)
_PDPT = 0x103000  # page-directory-pointer table (one entry used)
_PD = 0x104000  # page directory: 512 entries of 2 MiB pages = the first 1 GiB, identity
_IDT = 0x105000  # 256 interrupt gates of 16 bytes
_STACK_TOP = 0x108000  # stack grows down from here (0x106000..0x108000)
_BSS_END = _STACK_TOP
_MAX_IMAGE = _TICKS - _BASE  # the image must not overlap the data page

_SEL_CODE64 = 0x08
_SEL_DATA = 0x10
_SEL_CODE32 = 0x18

_MB_MAGIC = 0x1BADB002
_MB_FLAG_AOUT_KLUDGE = 0x00010000  # header carries load addresses: no ELF needed

_MSR_EFER = 0xC0000080
_MSR_ARCH_CAPABILITIES = 0x10A
_EFER_LME = 1 << 8
_EFER_LMA = 1 << 10
_CR4_PAE = 1 << 5
_CR0_PG = 1 << 31
_PIT_HZ = 1_193_182
_PIT_DIVISOR = _PIT_HZ // 1000


@dataclass(frozen=True)
class KvmVerdict:
    """Whether KVM can run guests here, and why (not)."""

    #: True when the payload passed under KVM.
    usable: bool
    #: What happened, in one line (why KVM is not usable, or what passed).
    reason: str
    #: Wall time of the test run (0 when no guest was started).
    seconds: float


@dataclass(frozen=True)
class PayloadRun:
    """The raw outcome of one run of the payload under QEMU."""

    #: QEMU's exit status (negative: killed by that signal), None if it was killed at the deadline.
    exitcode: int | None
    #: Everything the payload wrote to its serial port.
    serial: bytes
    #: QEMU's standard error.
    stderr: str
    #: Wall time from start to exit (or kill).
    seconds: float
    #: The deadline used.
    timeout: float


def _u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def _u16(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


class _Asm:
    """A byte buffer with labels and a listing.

    The machine code is encoded by hand by the caller; every :meth:`op` carries the assembly
    it encodes, so the source reads as a listing and :meth:`listing` can print one.
    """

    def __init__(self, base: int) -> None:
        self.base = base
        self.buf = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[str, int, str]] = []
        self.lines: list[tuple[int, int, str]] = []  # (offset, length, text)

    def label(self, name: str) -> None:
        self.labels[name] = self.base + len(self.buf)
        self.lines.append((len(self.buf), 0, f"{name}:"))

    def op(self, code: bytes, asm: str) -> None:
        """Append ``code``, which encodes ``asm``."""
        self.lines.append((len(self.buf), len(code), asm))
        self.buf += code

    def rel8(self, opcode: bytes, target: str, asm: str) -> None:
        """Append ``opcode`` and an 8-bit displacement to ``target`` (short jumps)."""
        self.op(opcode + b"\0", asm)
        self.fixups.append(("rel8", len(self.buf) - 1, target))

    def rel32(self, opcode: bytes, target: str, asm: str) -> None:
        """Append ``opcode`` and a 32-bit displacement to ``target`` (near jmp / call)."""
        self.op(opcode + b"\0\0\0\0", asm)
        self.fixups.append(("rel32", len(self.buf) - 4, target))

    def abs32(self, opcode: bytes, target: str, asm: str, tail: bytes = b"") -> None:
        """Append ``opcode``, the 32-bit address of ``target``, then ``tail``."""
        self.op(opcode + b"\0\0\0\0" + tail, asm)
        self.fixups.append(("abs32", len(self.buf) - 4 - len(tail), target))

    def link(self) -> bytes:
        """Resolve the labels; return the image.

        :raise ValueError: a short jump does not reach its target.
        """
        for kind, offset, target in self.fixups:
            address = self.labels[target]
            if kind == "abs32":
                self.buf[offset : offset + 4] = _u32(address)
            elif kind == "rel32":
                self.buf[offset : offset + 4] = struct.pack(
                    "<i", address - (self.base + offset + 4)
                )
            else:
                delta = address - (self.base + offset + 1)
                if not -128 <= delta < 128:
                    raise ValueError(f"short jump to {target} out of range ({delta})")
                self.buf[offset] = delta & 0xFF
        return bytes(self.buf)

    def listing(self) -> str:
        """Address, bytes and assembly of every line (call after :meth:`link`)."""
        out = []
        for offset, length, text in self.lines:
            code = self.buf[offset : offset + length]
            shown = code[:12].hex(" ") + (" …" if length > 12 else "")
            if length == 0:
                out.append(text)
            else:
                out.append(f"  {self.base + offset:08x}  {shown:<38} {text}")
        return "\n".join(out)


def work_checksum(iterations: int) -> int:
    """The value the stage-3 loop leaves in EAX: the sum of ``iterations .. 1`` modulo 2**32.

    :param iterations: loop count, at least 1.
    """
    return (iterations * (iterations + 1) // 2) & 0xFFFFFFFF


def _header_and_data(a: _Asm) -> None:
    """Multiboot v1 header (a.out kludge: the file is loaded flat), GDT, IDTR, strings."""
    flags = _MB_FLAG_AOUT_KLUDGE
    a.op(_u32(_MB_MAGIC), "dd 0x1badb002 ; multiboot magic")
    a.op(_u32(flags), "dd 0x00010000  ; flags: address fields below are valid")
    a.op(_u32(-(_MB_MAGIC + flags)), "dd checksum    ; magic + flags + checksum = 0")
    a.op(_u32(_BASE), "dd header_addr ; this header's address: file offset 0 at 1 MiB")
    a.op(_u32(_BASE), "dd load_addr   ; load the file from its start")
    a.abs32(b"", "image_end", "dd load_end_addr ; end of the file's data")
    a.op(_u32(_BSS_END), "dd bss_end_addr ; reserve data page, tables, IDT, stack")
    a.abs32(b"", "entry32", "dd entry_addr")
    a.label("gdt")
    a.op(struct.pack("<Q", 0), "dq 0                  ; null descriptor")
    a.op(struct.pack("<Q", 0x00AF9A000000FFFF), "dq 0x00af9a000000ffff ; 0x08: code, 64-bit (L=1)")
    a.op(struct.pack("<Q", 0x00CF92000000FFFF), "dq 0x00cf92000000ffff ; 0x10: data, flat, RW")
    a.op(struct.pack("<Q", 0x00CF9A000000FFFF), "dq 0x00cf9a000000ffff ; 0x18: code, 32-bit")
    a.label("gdtr")
    a.abs32(_u16(4 * 8 - 1), "gdt", "dw 31, dd gdt, dw 0 ; GDT limit and base", b"\0\0")
    a.label("idtr")
    a.op(struct.pack("<HQ", 256 * 16 - 1, _IDT), "dw 4095, dq IDT ; IDT limit and base")
    for name, text in (
        ("s1", STAGES[0][0]),
        ("s2", STAGES[1][0]),
        ("s3", STAGES[2][0]),
        ("s4", STAGES[3][0]),
        ("ok", MARKER),
        ("f_nolm", b"F:NOLM\n"),
        ("f_nolma", b"F:NOLMA\n"),
        ("f_sum", b"F:SUM\n"),
        ("f_exc", b"F:EXC\n"),
    ):
        a.label(name)
        a.op(text + b"\0", f"db {text!r}, 0")


def _subroutines(a: _Asm) -> None:
    """``puts`` and ``fail``: their encodings mean the same in 32-bit and 64-bit mode."""
    a.label("puts")  # write the NUL-terminated string at ESI to COM1; clobbers EAX EDX ESI
    a.op(b"\xba" + _u32(0x3F8), "mov edx, 0x3f8   ; COM1 data port")
    a.label("puts_loop")
    a.op(b"\xac", "lodsb            ; al = [esi], esi += 1")
    a.op(b"\x84\xc0", "test al, al")
    a.rel8(b"\x74", "puts_done", "jz puts_done")
    a.op(b"\xee", "out dx, al       ; QEMU's UART needs no THRE polling")
    a.rel8(b"\xeb", "puts_loop", "jmp puts_loop")
    a.label("puts_done")
    a.op(b"\xc3", "ret")
    a.label("fail")  # print the string at ESI, then exit QEMU with FAIL_STATUS
    a.rel32(b"\xe8", "puts", "call puts")
    a.op(b"\xba" + _u32(DEBUG_EXIT_PORT), "mov edx, 0xf4    ; isa-debug-exit port")
    a.op(b"\xb8" + _u32(FAIL_VALUE), "mov eax, FAIL_VALUE")
    a.op(b"\xef", "out dx, eax      ; QEMU exits with (FAIL_VALUE << 1) | 1")
    a.label("halt")
    a.op(b"\xfa", "cli")
    a.op(b"\xf4", "hlt")
    a.rel8(b"\xeb", "halt", "jmp halt")


def _stage1(a: _Asm) -> None:
    """Entered in 32-bit protected mode (Multiboot): own GDT, flat segments, CPUID check."""
    a.label("entry32")
    a.op(b"\xfa", "cli")
    a.op(b"\xfc", "cld              ; string instructions count upwards")
    a.op(b"\xbc" + _u32(_STACK_TOP), "mov esp, STACK_TOP")
    a.abs32(b"\x0f\x01\x15", "gdtr", "lgdt [gdtr]      ; the loader's GDT is not ours to keep")
    a.abs32(b"\xea", "flat32", "jmp 0x18:flat32  ; reload CS", _u16(_SEL_CODE32))
    a.label("flat32")
    a.op(b"\xb8" + _u32(_SEL_DATA), "mov eax, 0x10")
    a.op(b"\x8e\xd8", "mov ds, ax")
    a.op(b"\x8e\xc0", "mov es, ax")
    a.op(b"\x8e\xd0", "mov ss, ax")
    a.op(b"\x8e\xe0", "mov fs, ax")
    a.op(b"\x8e\xe8", "mov gs, ax")
    a.abs32(b"\xbe", "s1", "mov esi, s1")
    a.rel32(b"\xe8", "puts", "call puts")
    a.op(b"\xb8" + _u32(0x80000000), "mov eax, 0x80000000")
    a.op(b"\x0f\xa2", "cpuid            ; eax = highest extended leaf")
    a.op(b"\x3d" + _u32(0x80000001), "cmp eax, 0x80000001")
    a.rel8(b"\x72", "no_lm", "jb no_lm")
    a.op(b"\xb8" + _u32(0x80000001), "mov eax, 0x80000001")
    a.op(b"\x0f\xa2", "cpuid")
    a.op(b"\x0f\xba\xe2\x1d", "bt edx, 29       ; CF = long mode supported")
    a.rel8(b"\x72", "have_lm", "jc have_lm")
    a.label("no_lm")
    a.abs32(b"\xbe", "f_nolm", "mov esi, f_nolm")
    a.rel32(b"\xe9", "fail", "jmp fail")


def _stage2(a: _Asm) -> None:
    """Identity-map 1 GiB with 2 MiB pages, enable PAE, EFER.LME and paging, enter 64-bit."""
    a.label("have_lm")
    a.op(b"\xbf" + _u32(_TICKS), "mov edi, TICKS   ; data page, then PML4, PDPT, PD")
    a.op(b"\xb9" + _u32(4 * 4096 // 4), "mov ecx, 4096    ; dwords in those four pages")
    a.op(b"\x31\xc0", "xor eax, eax")
    a.op(b"\xf3\xab", "rep stosd        ; zero them")
    a.op(b"\xc7\x05" + _u32(_PML4) + _u32(_PDPT | 3), "mov dword [PML4], PDPT | P | W")
    a.op(b"\xc7\x05" + _u32(_PDPT) + _u32(_PD | 3), "mov dword [PDPT], PD | P | W")
    a.op(b"\xbf" + _u32(_PD), "mov edi, PD")
    a.op(b"\xb8" + _u32(0x83), "mov eax, 0x83    ; 2 MiB page at 0: P | W | PS")
    a.op(b"\xb9" + _u32(512), "mov ecx, 512")
    a.label("pd_loop")
    a.op(b"\x89\x07", "mov [edi], eax   ; low dword of the entry (the high one stays 0)")
    a.op(b"\x05" + _u32(0x200000), "add eax, 0x200000 ; next 2 MiB frame")
    a.op(b"\x83\xc7\x08", "add edi, 8")
    a.rel8(b"\xe2", "pd_loop", "loop pd_loop")
    a.op(b"\x0f\x20\xe0", "mov eax, cr4")
    a.op(b"\x0d" + _u32(_CR4_PAE), "or eax, 0x20     ; CR4.PAE")
    a.op(b"\x0f\x22\xe0", "mov cr4, eax")
    a.op(b"\xb8" + _u32(_PML4), "mov eax, PML4")
    a.op(b"\x0f\x22\xd8", "mov cr3, eax")
    a.op(b"\xb9" + _u32(_MSR_EFER), "mov ecx, 0xc0000080 ; IA32_EFER")
    a.op(b"\x0f\x32", "rdmsr")
    a.op(b"\x0d" + _u32(_EFER_LME), "or eax, 0x100    ; EFER.LME")
    a.op(b"\x0f\x30", "wrmsr")
    a.op(b"\x0f\x20\xc0", "mov eax, cr0")
    a.op(b"\x0d" + _u32(_CR0_PG), "or eax, 0x80000000 ; CR0.PG: long mode becomes active")
    a.op(b"\x0f\x22\xc0", "mov cr0, eax")
    a.abs32(b"\xea", "entry64", "jmp 0x08:entry64 ; into the 64-bit code segment", _u16(8))
    # 64-bit code from here on.
    a.label("entry64")
    a.op(b"\xb8" + _u32(_SEL_DATA), "mov eax, 0x10")
    a.op(b"\x8e\xd8", "mov ds, ax")
    a.op(b"\x8e\xc0", "mov es, ax")
    a.op(b"\x8e\xd0", "mov ss, ax")
    a.op(b"\xbc" + _u32(_STACK_TOP), "mov esp, STACK_TOP ; zero-extends into rsp")
    a.op(b"\xb9" + _u32(_MSR_EFER), "mov ecx, 0xc0000080 ; IA32_EFER")
    a.op(b"\x0f\x32", "rdmsr")
    a.op(b"\xa9" + _u32(_EFER_LMA), "test eax, 0x400  ; EFER.LMA: long mode active?")
    a.rel8(b"\x75", "lma_ok", "jnz lma_ok")
    a.abs32(b"\xbe", "f_nolma", "mov esi, f_nolma")
    a.rel32(b"\xe9", "fail", "jmp fail")
    a.label("lma_ok")
    a.abs32(b"\xbe", "s2", "mov esi, s2")
    a.rel32(b"\xe8", "puts", "call puts")


def _stage2_idt(a: _Asm) -> None:
    """IDT of 64-bit interrupt gates: vectors 0-31 -> exc_handler, 32-255 -> irq_handler."""
    a.op(b"\xbf" + _u32(_IDT), "mov edi, IDT")
    a.op(b"\x31\xc9", "xor ecx, ecx     ; vector number")
    a.label("idt_loop")
    a.abs32(b"\xb8", "exc_handler", "mov eax, exc_handler")
    a.op(b"\x83\xf9\x20", "cmp ecx, 32")
    a.rel8(b"\x72", "idt_store", "jb idt_store")
    a.abs32(b"\xb8", "irq_handler", "mov eax, irq_handler")
    a.label("idt_store")
    a.op(b"\x66\x89\x07", "mov [rdi], ax    ; handler offset 15..0")
    a.op(b"\x66\xc7\x47\x02" + _u16(_SEL_CODE64), "mov word [rdi+2], 0x08 ; code selector")
    a.op(b"\x66\xc7\x47\x04\x00\x8e", "mov word [rdi+4], 0x8e00 ; present, DPL 0, int gate")
    a.op(b"\xc1\xe8\x10", "shr eax, 16")
    a.op(b"\x66\x89\x47\x06", "mov [rdi+6], ax  ; handler offset 31..16")
    a.op(b"\xc7\x47\x08" + _u32(0), "mov dword [rdi+8], 0 ; handler offset 63..32")
    a.op(b"\xc7\x47\x0c" + _u32(0), "mov dword [rdi+12], 0 ; reserved")
    a.op(b"\x48\x83\xc7\x10", "add rdi, 16")
    a.op(b"\xff\xc1", "inc ecx")
    a.op(b"\x81\xf9" + _u32(256), "cmp ecx, 256")
    a.rel8(b"\x75", "idt_loop", "jne idt_loop")
    a.abs32(b"\x0f\x01\x1c\x25", "idtr", "lidt [idtr]      ; absolute disp32 through a SIB byte")


def _stage3(a: _Asm, work: int) -> None:
    """Read IA32_ARCH_CAPABILITIES if CPUID offers it (as Linux does early), then a loop of
    ``4 * work`` instructions whose result is checked: native speed or not."""
    a.op(b"\x31\xc0", "xor eax, eax")
    a.op(b"\x0f\xa2", "cpuid            ; eax = highest basic leaf")
    a.op(b"\x83\xf8\x07", "cmp eax, 7")
    a.rel8(b"\x72", "no_arch_caps", "jb no_arch_caps")
    a.op(b"\xb8" + _u32(7), "mov eax, 7")
    a.op(b"\x31\xc9", "xor ecx, ecx")
    a.op(b"\x0f\xa2", "cpuid            ; structured extended features")
    a.op(b"\x0f\xba\xe2\x1d", "bt edx, 29       ; CF = IA32_ARCH_CAPABILITIES exists")
    a.rel8(b"\x73", "no_arch_caps", "jnc no_arch_caps")
    a.op(b"\xb9" + _u32(_MSR_ARCH_CAPABILITIES), "mov ecx, 0x10a   ; IA32_ARCH_CAPABILITIES")
    a.op(b"\x0f\x32", "rdmsr            ; a #GP here ends in exc_handler")
    a.label("no_arch_caps")
    a.op(b"\xbf" + _u32(_SCRATCH), "mov edi, SCRATCH")
    a.op(b"\x31\xc0", "xor eax, eax")
    a.op(b"\xb9" + _u32(work), "mov ecx, WORK")
    a.label("work_loop")
    a.op(b"\x01\xc8", "add eax, ecx")
    a.op(b"\x89\x07", "mov [rdi], eax")
    a.op(b"\xff\xc9", "dec ecx")
    a.rel8(b"\x75", "work_loop", "jnz work_loop")
    a.op(b"\x3d" + _u32(work_checksum(work)), "cmp eax, SUM      ; WORK + ... + 1 mod 2**32")
    a.rel8(b"\x74", "sum_ok", "je sum_ok")
    a.abs32(b"\xbe", "f_sum", "mov esi, f_sum")
    a.rel32(b"\xe9", "fail", "jmp fail")
    a.label("sum_ok")
    a.abs32(b"\xbe", "s3", "mov esi, s3")
    a.rel32(b"\xe8", "puts", "call puts")


def _stage4_timer(a: _Asm, ticks: int) -> None:
    """Remap the 8259 PIC, run the 8254 PIT at ~1 kHz, ``sti; hlt`` until ``ticks`` arrived."""
    for value, port, asm in (
        (0x11, 0x20, "ICW1 master: edge, cascade, ICW4 follows"),
        (0x11, 0xA0, "ICW1 slave"),
        (0x20, 0x21, "ICW2 master: IRQ 0-7 -> vectors 0x20-0x27"),
        (0x28, 0xA1, "ICW2 slave: IRQ 8-15 -> vectors 0x28-0x2f"),
        (0x04, 0x21, "ICW3 master: slave on IRQ 2"),
        (0x02, 0xA1, "ICW3 slave: cascade identity 2"),
        (0x01, 0x21, "ICW4 master: 8086 mode"),
        (0x01, 0xA1, "ICW4 slave: 8086 mode"),
        (0xFE, 0x21, "OCW1 master: mask all but IRQ 0 (PIT)"),
        (0xFF, 0xA1, "OCW1 slave: mask all"),
        (0x34, 0x43, "PIT: channel 0, lo/hi byte, mode 2 (rate generator)"),
        (_PIT_DIVISOR & 0xFF, 0x40, "PIT channel 0 divisor, low byte (~1 kHz)"),
        (_PIT_DIVISOR >> 8, 0x40, "PIT channel 0 divisor, high byte"),
    ):
        a.op(b"\xb0" + bytes([value]), f"mov al, {value:#04x}")
        a.op(b"\xe6" + bytes([port]), f"out {port:#04x}, al ; {asm}")
    a.op(b"\xfb", "sti")
    a.label("tick_wait")
    a.op(b"\xf4", "hlt              ; sleep until an interrupt")
    a.op(b"\x83\x3c\x25" + _u32(_TICKS) + bytes([ticks]), f"cmp dword [TICKS], {ticks}")
    a.rel8(b"\x72", "tick_wait", "jb tick_wait")
    a.op(b"\xfa", "cli")
    a.abs32(b"\xbe", "s4", "mov esi, s4")
    a.rel32(b"\xe8", "puts", "call puts")


def _finish(a: _Asm) -> None:
    """Print the marker, exit QEMU with OK_STATUS; then the interrupt handlers."""
    a.abs32(b"\xbe", "ok", "mov esi, ok")
    a.rel32(b"\xe8", "puts", "call puts")
    a.op(b"\xba" + _u32(DEBUG_EXIT_PORT), "mov edx, 0xf4")
    a.op(b"\xb8" + _u32(OK_VALUE), "mov eax, OK_VALUE")
    a.op(b"\xef", "out dx, eax      ; QEMU exits with (OK_VALUE << 1) | 1")
    a.rel32(b"\xe9", "halt", "jmp halt")
    a.label("irq_handler")
    a.op(b"\x50", "push rax")
    a.op(b"\xff\x04\x25" + _u32(_TICKS), "inc dword [TICKS]")
    a.op(b"\xb0\x20", "mov al, 0x20")
    a.op(b"\xe6\x20", "out 0x20, al     ; end of interrupt to the master PIC")
    a.op(b"\x58", "pop rax")
    a.op(b"\x48\xcf", "iretq")
    a.label("exc_handler")  # any exception: report it and exit (no return)
    a.abs32(b"\xbe", "f_exc", "mov esi, f_exc")
    a.rel32(b"\xe9", "fail", "jmp fail")
    a.label("image_end")


def _assemble(work: int, ticks: int) -> _Asm:
    if not 1 <= work < (1 << 32):
        raise ValueError(f"work must be in 1 .. 2**32-1, not {work}")
    if not 1 <= ticks < 128:
        raise ValueError(f"ticks must be in 1 .. 127, not {ticks}")
    a = _Asm(_BASE)
    _header_and_data(a)
    _subroutines(a)
    _stage1(a)
    _stage2(a)
    _stage2_idt(a)
    _stage3(a, work)
    _stage4_timer(a, ticks)
    _finish(a)
    image = a.link()
    if len(image) > _MAX_IMAGE:
        raise ValueError(f"payload of {len(image)} bytes overlaps its data page")
    return a


def build_payload(work: int = DEFAULT_WORK, ticks: int = TIMER_TICKS) -> bytes:
    """The self-test payload: a flat Multiboot v1 image (a.out kludge) loaded at 1 MiB.

    Every instruction is encoded by hand in this module, next to the assembly it encodes.

    :param work: iterations of the stage-3 loop (1 .. 2**32-1).
    :param ticks: timer interrupts stage 4 waits for (1 .. 127).
    :raise ValueError: a parameter is out of range.
    """
    return _assemble(work, ticks).link()


def payload_listing(work: int = DEFAULT_WORK, ticks: int = TIMER_TICKS) -> str:
    """The payload as a listing (address, bytes, assembly), for reading and debugging.

    :param work: as for :func:`build_payload`.
    :param ticks: as for :func:`build_payload`.
    :raise ValueError: a parameter is out of range.
    """
    return _assemble(work, ticks).listing()


def payload_argv(
    qemu: str, payload: str, serial_log: str, accel: str, cpu: str = DEFAULT_CPU
) -> list[str]:
    """The QEMU command line that runs the payload.

    :param qemu: the QEMU binary.
    :param payload: path of the image from :func:`build_payload`.
    :param serial_log: file that receives the serial output.
    :param accel: ``kvm`` or ``tcg``.
    :param cpu: the ``-cpu`` model.
    """
    return [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-machine",
        f"pc,accel={accel}",
        "-cpu",
        cpu,
        "-m",
        "32",
        "-smp",
        "1",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{serial_log}",
        "-device",
        f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04",
        "-kernel",
        payload,
    ]


def run_payload(
    qemu: str,
    accel: str,
    cpu: str = DEFAULT_CPU,
    timeout: float = DEFAULT_TIMEOUT,
    work: int = DEFAULT_WORK,
) -> PayloadRun:
    """Boot the payload once and collect what happened; QEMU is killed at the deadline.

    :param qemu: the QEMU binary.
    :param accel: ``kvm`` or ``tcg``.
    :param cpu: the ``-cpu`` model.
    :param timeout: seconds before QEMU is killed.
    :param work: iterations of the stage-3 loop.
    :raise OSError: the binary cannot be started or the temporary files cannot be written.
    """
    with tempfile.TemporaryDirectory(prefix="corral-kvmtest-") as tmp:
        payload = Path(tmp) / "payload.bin"
        serial_log = Path(tmp) / "serial.log"
        payload.write_bytes(build_payload(work))
        argv = payload_argv(qemu, str(payload), str(serial_log), accel, cpu)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        exitcode: int | None
        try:
            _, err = proc.communicate(timeout=timeout)
            exitcode = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            exitcode = None
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt): never leave it running
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - start
        serial = serial_log.read_bytes() if serial_log.exists() else b""
    return PayloadRun(
        exitcode=exitcode,
        serial=serial,
        stderr=err.decode(errors="replace"),
        seconds=seconds,
        timeout=timeout,
    )


def _last_error_line(stderr: str, warnings: bool = True) -> str:
    """QEMU's last line of stderr that is not a warning; with ``warnings``, else its last line.

    :param stderr: QEMU's standard error.
    :param warnings: fall back to a warning when there is no other line.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "warning:" not in line and "terminating on" not in line]
    if errors:
        return errors[-1]
    return lines[-1] if lines and warnings else ""


def interpret(run: PayloadRun, work: int = DEFAULT_WORK) -> KvmVerdict:
    """Turn a :class:`PayloadRun` into a verdict. Pure.

    The payload passed only when :data:`MARKER` arrived *and* QEMU exited with
    :data:`OK_STATUS`.

    :param run: the outcome of :func:`run_payload`.
    :param work: iterations the run's payload looped, to describe a timeout.
    """
    if MARKER in run.serial and run.exitcode == OK_STATUS:
        return KvmVerdict(
            True,
            f"payload reached 64-bit mode, ran {4 * work / 1e6:.0f} M instructions and took "
            f"timer interrupts in {run.seconds:.2f} s",
            run.seconds,
        )
    for line, meaning in FAILURES.items():
        if line in run.serial:
            return KvmVerdict(False, f"payload failed: {meaning}", run.seconds)
    reached = [meaning for line, meaning in STAGES if line in run.serial]
    if run.exitcode is None:
        within = f"within {run.timeout:g} s"
        if not reached:
            what = f"payload did not start {within} (firmware or loader did not hand over)"
        elif len(reached) == 1:
            what = f"payload did not reach 64-bit mode {within}"
        elif len(reached) == 2:
            what = (
                f"payload reached 64-bit mode but its loop of {4 * work / 1e6:.0f} M instructions "
                f"did not finish {within}: guest code runs far below native speed"
            )
        elif len(reached) == 3:
            what = f"payload finished its work but no timer interrupt arrived {within}"
        else:
            what = f"payload passed every stage but did not exit {within}"
        detail = _last_error_line(run.stderr, warnings=False)
        tail = f"; QEMU said: {detail}" if detail else ""
        return KvmVerdict(False, what + tail, run.seconds)
    detail = _last_error_line(run.stderr) or (
        "the guest reset (triple fault?)" if run.exitcode == 0 else "no error output"
    )
    last = f" after it {reached[-1]}" if reached else ""
    return KvmVerdict(False, f"QEMU exited with status {run.exitcode}{last}: {detail}", run.seconds)


def dev_kvm_problem(path: str = "/dev/kvm") -> str | None:
    """Why ``/dev/kvm`` cannot be used by this process, or None when it can be opened R/W.

    :param path: the device node (a parameter for tests).
    """
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return f"{path} missing (no KVM module loaded, or virtualization disabled in firmware)"
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}"
    if not stat.S_ISCHR(st.st_mode):
        return f"{path} is not a character device"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"no permission on {path} (add yourself to group kvm)"
    return None


def cpu_virt_flag(cpuinfo: str) -> str | None:
    """``vmx`` or ``svm`` when the CPU flags in ``/proc/cpuinfo`` text show one, else None.

    :param cpuinfo: the text of ``/proc/cpuinfo``.
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            for flag in ("vmx", "svm"):
                if flag in flags:
                    return flag
            return None
    return None


def kvm_modules(sys_module: str = "/sys/module") -> list[str]:
    """The KVM vendor modules loaded (``kvm_intel``, ``kvm_amd``, ``kvm_pvm``).

    :param sys_module: the sysfs module directory (a parameter for tests).
    """
    return [name for name in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path(sys_module, name).exists()]


def self_test(
    qemu: str,
    cpu: str = KVM_CPU,
    timeout: float = DEFAULT_TIMEOUT,
    device: str = "/dev/kvm",
) -> KvmVerdict:
    """Decide whether KVM is usable: device checks first, then the payload under KVM.

    :param qemu: the QEMU binary.
    :param cpu: the ``-cpu`` model guests will use.
    :param timeout: deadline for the payload run.
    :param device: the KVM device node.
    """
    problem = dev_kvm_problem(device)
    if problem is not None:
        return KvmVerdict(False, problem, 0.0)
    try:
        run = run_payload(qemu, "kvm", cpu=cpu, timeout=timeout)
    except OSError as exc:
        return KvmVerdict(False, f"KVM self-test could not start QEMU: {exc}", 0.0)
    verdict = interpret(run)
    if verdict.usable:
        return verdict
    return KvmVerdict(False, f"KVM self-test failed: {verdict.reason}", verdict.seconds)
