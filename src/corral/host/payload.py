"""The KVM self-test's guest: a tiny x86 payload, hand-assembled here. Pure: no I/O.

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

then prints :data:`MARKER` and exits QEMU through ``isa-debug-exit`` with :data:`OK_STATUS`.
Failures it detects itself print an ``F:`` line (:data:`FAILURES`) and exit with
:data:`FAIL_STATUS`; anything else (a hang, a crash of QEMU, a reset) is judged from the last
stage line (:data:`STAGES`) and QEMU's stderr by :func:`corral.host.kvm.interpret`, which also
explains why this payload, and its stage-3 loop in particular, tells working KVM apart.
"""

from __future__ import annotations

import struct

from corral.host.asm import Asm, u16, u32

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


def work_checksum(iterations: int) -> int:
    """The value the stage-3 loop leaves in EAX: the sum of ``iterations .. 1`` modulo 2**32.

    :param iterations: loop count, at least 1.
    """
    return (iterations * (iterations + 1) // 2) & 0xFFFFFFFF


def _header_and_data(a: Asm) -> None:
    """Multiboot v1 header (a.out kludge: the file is loaded flat), GDT, IDTR, strings."""
    flags = _MB_FLAG_AOUT_KLUDGE
    a.op(u32(_MB_MAGIC), "dd 0x1badb002 ; multiboot magic")
    a.op(u32(flags), "dd 0x00010000  ; flags: address fields below are valid")
    a.op(u32(-(_MB_MAGIC + flags)), "dd checksum    ; magic + flags + checksum = 0")
    a.op(u32(_BASE), "dd header_addr ; this header's address: file offset 0 at 1 MiB")
    a.op(u32(_BASE), "dd load_addr   ; load the file from its start")
    a.abs32(b"", "image_end", "dd load_end_addr ; end of the file's data")
    a.op(u32(_BSS_END), "dd bss_end_addr ; reserve data page, tables, IDT, stack")
    a.abs32(b"", "entry32", "dd entry_addr")
    a.label("gdt")
    a.op(struct.pack("<Q", 0), "dq 0                  ; null descriptor")
    a.op(struct.pack("<Q", 0x00AF9A000000FFFF), "dq 0x00af9a000000ffff ; 0x08: code, 64-bit (L=1)")
    a.op(struct.pack("<Q", 0x00CF92000000FFFF), "dq 0x00cf92000000ffff ; 0x10: data, flat, RW")
    a.op(struct.pack("<Q", 0x00CF9A000000FFFF), "dq 0x00cf9a000000ffff ; 0x18: code, 32-bit")
    a.label("gdtr")
    a.abs32(u16(4 * 8 - 1), "gdt", "dw 31, dd gdt, dw 0 ; GDT limit and base", b"\0\0")
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


def _subroutines(a: Asm) -> None:
    """``puts`` and ``fail``: their encodings mean the same in 32-bit and 64-bit mode."""
    a.label("puts")  # write the NUL-terminated string at ESI to COM1; clobbers EAX EDX ESI
    a.op(b"\xba" + u32(0x3F8), "mov edx, 0x3f8   ; COM1 data port")
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
    a.op(b"\xba" + u32(DEBUG_EXIT_PORT), "mov edx, 0xf4    ; isa-debug-exit port")
    a.op(b"\xb8" + u32(FAIL_VALUE), "mov eax, FAIL_VALUE")
    a.op(b"\xef", "out dx, eax      ; QEMU exits with (FAIL_VALUE << 1) | 1")
    a.label("halt")
    a.op(b"\xfa", "cli")
    a.op(b"\xf4", "hlt")
    a.rel8(b"\xeb", "halt", "jmp halt")


def _stage1(a: Asm) -> None:
    """Entered in 32-bit protected mode (Multiboot): own GDT, flat segments, CPUID check."""
    a.label("entry32")
    a.op(b"\xfa", "cli")
    a.op(b"\xfc", "cld              ; string instructions count upwards")
    a.op(b"\xbc" + u32(_STACK_TOP), "mov esp, STACK_TOP")
    a.abs32(b"\x0f\x01\x15", "gdtr", "lgdt [gdtr]      ; the loader's GDT is not ours to keep")
    a.abs32(b"\xea", "flat32", "jmp 0x18:flat32  ; reload CS", u16(_SEL_CODE32))
    a.label("flat32")
    a.op(b"\xb8" + u32(_SEL_DATA), "mov eax, 0x10")
    a.op(b"\x8e\xd8", "mov ds, ax")
    a.op(b"\x8e\xc0", "mov es, ax")
    a.op(b"\x8e\xd0", "mov ss, ax")
    a.op(b"\x8e\xe0", "mov fs, ax")
    a.op(b"\x8e\xe8", "mov gs, ax")
    a.abs32(b"\xbe", "s1", "mov esi, s1")
    a.rel32(b"\xe8", "puts", "call puts")
    a.op(b"\xb8" + u32(0x80000000), "mov eax, 0x80000000")
    a.op(b"\x0f\xa2", "cpuid            ; eax = highest extended leaf")
    a.op(b"\x3d" + u32(0x80000001), "cmp eax, 0x80000001")
    a.rel8(b"\x72", "no_lm", "jb no_lm")
    a.op(b"\xb8" + u32(0x80000001), "mov eax, 0x80000001")
    a.op(b"\x0f\xa2", "cpuid")
    a.op(b"\x0f\xba\xe2\x1d", "bt edx, 29       ; CF = long mode supported")
    a.rel8(b"\x72", "have_lm", "jc have_lm")
    a.label("no_lm")
    a.abs32(b"\xbe", "f_nolm", "mov esi, f_nolm")
    a.rel32(b"\xe9", "fail", "jmp fail")


def _stage2(a: Asm) -> None:
    """Identity-map 1 GiB with 2 MiB pages, enable PAE, EFER.LME and paging, enter 64-bit."""
    a.label("have_lm")
    a.op(b"\xbf" + u32(_TICKS), "mov edi, TICKS   ; data page, then PML4, PDPT, PD")
    a.op(b"\xb9" + u32(4 * 4096 // 4), "mov ecx, 4096    ; dwords in those four pages")
    a.op(b"\x31\xc0", "xor eax, eax")
    a.op(b"\xf3\xab", "rep stosd        ; zero them")
    a.op(b"\xc7\x05" + u32(_PML4) + u32(_PDPT | 3), "mov dword [PML4], PDPT | P | W")
    a.op(b"\xc7\x05" + u32(_PDPT) + u32(_PD | 3), "mov dword [PDPT], PD | P | W")
    a.op(b"\xbf" + u32(_PD), "mov edi, PD")
    a.op(b"\xb8" + u32(0x83), "mov eax, 0x83    ; 2 MiB page at 0: P | W | PS")
    a.op(b"\xb9" + u32(512), "mov ecx, 512")
    a.label("pd_loop")
    a.op(b"\x89\x07", "mov [edi], eax   ; low dword of the entry (the high one stays 0)")
    a.op(b"\x05" + u32(0x200000), "add eax, 0x200000 ; next 2 MiB frame")
    a.op(b"\x83\xc7\x08", "add edi, 8")
    a.rel8(b"\xe2", "pd_loop", "loop pd_loop")
    a.op(b"\x0f\x20\xe0", "mov eax, cr4")
    a.op(b"\x0d" + u32(_CR4_PAE), "or eax, 0x20     ; CR4.PAE")
    a.op(b"\x0f\x22\xe0", "mov cr4, eax")
    a.op(b"\xb8" + u32(_PML4), "mov eax, PML4")
    a.op(b"\x0f\x22\xd8", "mov cr3, eax")
    a.op(b"\xb9" + u32(_MSR_EFER), "mov ecx, 0xc0000080 ; IA32_EFER")
    a.op(b"\x0f\x32", "rdmsr")
    a.op(b"\x0d" + u32(_EFER_LME), "or eax, 0x100    ; EFER.LME")
    a.op(b"\x0f\x30", "wrmsr")
    a.op(b"\x0f\x20\xc0", "mov eax, cr0")
    a.op(b"\x0d" + u32(_CR0_PG), "or eax, 0x80000000 ; CR0.PG: long mode becomes active")
    a.op(b"\x0f\x22\xc0", "mov cr0, eax")
    a.abs32(b"\xea", "entry64", "jmp 0x08:entry64 ; into the 64-bit code segment", u16(8))
    # 64-bit code from here on.
    a.label("entry64")
    a.op(b"\xb8" + u32(_SEL_DATA), "mov eax, 0x10")
    a.op(b"\x8e\xd8", "mov ds, ax")
    a.op(b"\x8e\xc0", "mov es, ax")
    a.op(b"\x8e\xd0", "mov ss, ax")
    a.op(b"\xbc" + u32(_STACK_TOP), "mov esp, STACK_TOP ; zero-extends into rsp")
    a.op(b"\xb9" + u32(_MSR_EFER), "mov ecx, 0xc0000080 ; IA32_EFER")
    a.op(b"\x0f\x32", "rdmsr")
    a.op(b"\xa9" + u32(_EFER_LMA), "test eax, 0x400  ; EFER.LMA: long mode active?")
    a.rel8(b"\x75", "lma_ok", "jnz lma_ok")
    a.abs32(b"\xbe", "f_nolma", "mov esi, f_nolma")
    a.rel32(b"\xe9", "fail", "jmp fail")
    a.label("lma_ok")
    a.abs32(b"\xbe", "s2", "mov esi, s2")
    a.rel32(b"\xe8", "puts", "call puts")


def _stage2_idt(a: Asm) -> None:
    """IDT of 64-bit interrupt gates: vectors 0-31 -> exc_handler, 32-255 -> irq_handler."""
    a.op(b"\xbf" + u32(_IDT), "mov edi, IDT")
    a.op(b"\x31\xc9", "xor ecx, ecx     ; vector number")
    a.label("idt_loop")
    a.abs32(b"\xb8", "exc_handler", "mov eax, exc_handler")
    a.op(b"\x83\xf9\x20", "cmp ecx, 32")
    a.rel8(b"\x72", "idt_store", "jb idt_store")
    a.abs32(b"\xb8", "irq_handler", "mov eax, irq_handler")
    a.label("idt_store")
    a.op(b"\x66\x89\x07", "mov [rdi], ax    ; handler offset 15..0")
    a.op(b"\x66\xc7\x47\x02" + u16(_SEL_CODE64), "mov word [rdi+2], 0x08 ; code selector")
    a.op(b"\x66\xc7\x47\x04\x00\x8e", "mov word [rdi+4], 0x8e00 ; present, DPL 0, int gate")
    a.op(b"\xc1\xe8\x10", "shr eax, 16")
    a.op(b"\x66\x89\x47\x06", "mov [rdi+6], ax  ; handler offset 31..16")
    a.op(b"\xc7\x47\x08" + u32(0), "mov dword [rdi+8], 0 ; handler offset 63..32")
    a.op(b"\xc7\x47\x0c" + u32(0), "mov dword [rdi+12], 0 ; reserved")
    a.op(b"\x48\x83\xc7\x10", "add rdi, 16")
    a.op(b"\xff\xc1", "inc ecx")
    a.op(b"\x81\xf9" + u32(256), "cmp ecx, 256")
    a.rel8(b"\x75", "idt_loop", "jne idt_loop")
    a.abs32(b"\x0f\x01\x1c\x25", "idtr", "lidt [idtr]      ; absolute disp32 through a SIB byte")


def _stage3(a: Asm, work: int) -> None:
    """Read IA32_ARCH_CAPABILITIES if CPUID offers it (as Linux does early), then a loop of
    ``4 * work`` instructions whose result is checked: native speed or not."""
    a.op(b"\x31\xc0", "xor eax, eax")
    a.op(b"\x0f\xa2", "cpuid            ; eax = highest basic leaf")
    a.op(b"\x83\xf8\x07", "cmp eax, 7")
    a.rel8(b"\x72", "no_arch_caps", "jb no_arch_caps")
    a.op(b"\xb8" + u32(7), "mov eax, 7")
    a.op(b"\x31\xc9", "xor ecx, ecx")
    a.op(b"\x0f\xa2", "cpuid            ; structured extended features")
    a.op(b"\x0f\xba\xe2\x1d", "bt edx, 29       ; CF = IA32_ARCH_CAPABILITIES exists")
    a.rel8(b"\x73", "no_arch_caps", "jnc no_arch_caps")
    a.op(b"\xb9" + u32(_MSR_ARCH_CAPABILITIES), "mov ecx, 0x10a   ; IA32_ARCH_CAPABILITIES")
    a.op(b"\x0f\x32", "rdmsr            ; a #GP here ends in exc_handler")
    a.label("no_arch_caps")
    a.op(b"\xbf" + u32(_SCRATCH), "mov edi, SCRATCH")
    a.op(b"\x31\xc0", "xor eax, eax")
    a.op(b"\xb9" + u32(work), "mov ecx, WORK")
    a.label("work_loop")
    a.op(b"\x01\xc8", "add eax, ecx")
    a.op(b"\x89\x07", "mov [rdi], eax")
    a.op(b"\xff\xc9", "dec ecx")
    a.rel8(b"\x75", "work_loop", "jnz work_loop")
    a.op(b"\x3d" + u32(work_checksum(work)), "cmp eax, SUM      ; WORK + ... + 1 mod 2**32")
    a.rel8(b"\x74", "sum_ok", "je sum_ok")
    a.abs32(b"\xbe", "f_sum", "mov esi, f_sum")
    a.rel32(b"\xe9", "fail", "jmp fail")
    a.label("sum_ok")
    a.abs32(b"\xbe", "s3", "mov esi, s3")
    a.rel32(b"\xe8", "puts", "call puts")


def _stage4_timer(a: Asm, ticks: int) -> None:
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
    a.op(b"\x83\x3c\x25" + u32(_TICKS) + bytes([ticks]), f"cmp dword [TICKS], {ticks}")
    a.rel8(b"\x72", "tick_wait", "jb tick_wait")
    a.op(b"\xfa", "cli")
    a.abs32(b"\xbe", "s4", "mov esi, s4")
    a.rel32(b"\xe8", "puts", "call puts")


def _finish(a: Asm) -> None:
    """Print the marker, exit QEMU with OK_STATUS; then the interrupt handlers."""
    a.abs32(b"\xbe", "ok", "mov esi, ok")
    a.rel32(b"\xe8", "puts", "call puts")
    a.op(b"\xba" + u32(DEBUG_EXIT_PORT), "mov edx, 0xf4")
    a.op(b"\xb8" + u32(OK_VALUE), "mov eax, OK_VALUE")
    a.op(b"\xef", "out dx, eax      ; QEMU exits with (OK_VALUE << 1) | 1")
    a.rel32(b"\xe9", "halt", "jmp halt")
    a.label("irq_handler")
    a.op(b"\x50", "push rax")
    a.op(b"\xff\x04\x25" + u32(_TICKS), "inc dword [TICKS]")
    a.op(b"\xb0\x20", "mov al, 0x20")
    a.op(b"\xe6\x20", "out 0x20, al     ; end of interrupt to the master PIC")
    a.op(b"\x58", "pop rax")
    a.op(b"\x48\xcf", "iretq")
    a.label("exc_handler")  # any exception: report it and exit (no return)
    a.abs32(b"\xbe", "f_exc", "mov esi, f_exc")
    a.rel32(b"\xe9", "fail", "jmp fail")
    a.label("image_end")


def _assemble(work: int, ticks: int) -> Asm:
    if not 1 <= work < (1 << 32):
        raise ValueError(f"work must be in 1 .. 2**32-1, not {work}")
    if not 1 <= ticks < 128:
        raise ValueError(f"ticks must be in 1 .. 127, not {ticks}")
    a = Asm(_BASE)
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
