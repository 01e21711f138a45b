"""A tiny assembler helper: a byte buffer with labels, fixups and a listing. Pure.

It does not encode instructions: the caller writes the machine code by hand and passes, with
every piece, the assembly it encodes, so the caller's source reads as a listing and
:meth:`Asm.listing` can print one. :class:`Asm` resolves what a hand encoder cannot know in
advance: the addresses of labels, as 32-bit absolute operands and 8- or 32-bit relative
displacements. :mod:`corral.host.payload` is its user.
"""

from __future__ import annotations

import struct


def u32(value: int) -> bytes:
    """``value`` modulo 2**32 as a little-endian dword."""
    return struct.pack("<I", value & 0xFFFFFFFF)


def u16(value: int) -> bytes:
    """``value`` modulo 2**16 as a little-endian word."""
    return struct.pack("<H", value & 0xFFFF)


class Asm:
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
                self.buf[offset : offset + 4] = u32(address)
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
