"""Stack depth of an x86_64 function that the ORC tables do not cover, by
following its code from its entry as objtool does when it writes ORC.

objtool skips some functions (STACK_FRAME_NON_STANDARD, e.g. Debian 6.1's
__crash_kexec, where crash_setup_regs saves the registers a kdump's panic CPU
reports), so the kernel's tables hold no entry for any of their instructions.
The pc kdump saves there is `_THIS_IP_`, inside the function, and the
caller's frame is then only reachable by a stack scan. But such a function is
ordinary compiled code: its stack pointer moves only by pushes, pops and
immediate adjustments, so the depth of the stack at each instruction (CFA -
rsp) follows from walking its control flow from the entry, where the CFA is
rsp + 8. `function_entries()` does that and returns, per instruction, the ORC
entry objtool would have written (CALL type, CFA = rsp + depth, rbp where a
`push %rbp` saved it, else unchanged). Anything it does not understand (an
unknown opcode, rsp loaded from a register, a stack realignment, two paths
reaching one instruction at different depths) makes it give up: None, and the
caller falls back to what it did before (a stack scan).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import orc

MAX_FUNCTION_BYTES = 1 << 16
PREFIXES = frozenset((0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65))
RSP, RBP = 4, 5
# one-byte opcodes taking a ModRM byte (the rest of the map is handled by hand)
_MODRM_1 = (
    {b + i for b in range(0x00, 0x40, 8) for i in range(4)}
    | {0x63, 0x69, 0x6B}
    | set(range(0x80, 0x90)) - {0x82}
    | {0xC0, 0xC1, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2, 0xD3}
    | set(range(0xD8, 0xE0))
    | {0xF6, 0xF7, 0xFE, 0xFF}
)
_NO_OPERAND_1 = (
    set(range(0x50, 0x60))
    | set(range(0x90, 0xA0)) - {0x9A}
    | set(range(0xA4, 0xA8))
    | set(range(0xAA, 0xB0))
    | {0x6C, 0x6D, 0x6E, 0x6F, 0xC3, 0xC9, 0xCC, 0xCF, 0xEC, 0xED, 0xEE, 0xEF, 0xF1}
    | {0xF4, 0xF5, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD}
)
_IMM8_1 = {b + 4 for b in range(0x00, 0x40, 8)} | {0x6A, 0xA8, 0xCD, 0xE4, 0xE5, 0xE6, 0xE7}
_IMM8_1 |= set(range(0xB0, 0xB8))
_IMMZ_1 = {b + 5 for b in range(0x00, 0x40, 8)} | {0x68, 0xA9}
# two-byte (0f xx) opcodes without a ModRM byte, and those with an imm8 after it
_NO_MODRM_2 = {0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9}
_NO_MODRM_2 |= set(range(0x30, 0x38)) | set(range(0xC8, 0xD0))
_IMM8_2 = {0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6}


@dataclass(frozen=True)
class Insn:
    length: int
    depth_change: int | None = 0  # added to CFA - rsp; None: rsp changes unknowably
    jump: int | None = None  # a branch target
    conditional: bool = False
    ends: bool = False  # no fall-through (ret, jmp, ud2, int3)
    rbp_push: bool = False  # push %rbp
    rbp_pop: bool = False  # pop %rbp
    rsp_from_rbp: int | None = None  # rsp = rbp + this (mov %rbp,%rsp; lea d(%rbp),%rsp)
    leave: bool = False
    rbp_from_rsp: bool = False  # mov %rsp,%rbp


class _Unknown(Exception):
    pass


def _modrm_length(code: bytes, at: int, addr32: bool) -> int:
    """Bytes of ModRM, SIB and displacement at `at`."""
    modrm = code[at]
    mod, rm = modrm >> 6, modrm & 7
    n = 1
    if mod == 3:
        return n
    if rm == 4:
        sib = code[at + 1]
        n += 1
        if mod == 0 and sib & 7 == 5:
            return n + 4
    if mod == 0 and rm == 5:
        return n + 4
    return n + (1 if mod == 1 else 4 if mod == 2 else 0)


def decode(code: bytes, pc: int) -> Insn:
    """Length and stack effect of the instruction at code[0:], at address pc."""
    i, opsize16, addr32, rex = 0, False, False, 0
    while code[i] in PREFIXES:
        opsize16 |= code[i] == 0x66
        addr32 |= code[i] == 0x67
        i += 1
    if 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    wide, rex_r, rex_b = bool(rex & 8), (rex >> 2) & 1, rex & 1
    op = code[i]
    i += 1
    immz = 2 if opsize16 else 4
    if op == 0x0F:
        return _decode_0f(code, i, pc, addr32)
    if op in _MODRM_1:
        modrm = code[i]
        mod, reg, rm = modrm >> 6, ((modrm >> 3) & 7) | rex_r << 3, (modrm & 7) | rex_b << 3
        n = i + _modrm_length(code, i, addr32)
        imm = 0
        if op in (0x80, 0x83, 0x6B, 0xC0, 0xC1, 0xC6) or (op == 0xF6 and reg & 7 < 2):
            imm = 1
        elif op in (0x81, 0x69, 0xC7) or (op == 0xF7 and reg & 7 < 2):
            imm = immz
        length = n + imm
        to_rsp = mod == 3 and rm == RSP  # the r/m operand is rsp itself
        if op in (0x81, 0x83) and to_rsp:
            value = int.from_bytes(code[n : n + imm], "little", signed=True)
            if reg & 7 == 5:  # sub $imm, %rsp
                return Insn(length, value)
            if reg & 7 == 0:  # add $imm, %rsp
                return Insn(length, -value)
            if reg & 7 == 7:  # cmp
                return Insn(length)
            raise _Unknown  # and $-16, %rsp: a realignment
        if op == 0x89 and mod == 3 and rm == RBP and reg == RSP:
            return Insn(length, rbp_from_rsp=True)  # mov %rsp, %rbp
        if op == 0x89 and to_rsp:
            if reg == RBP:
                return Insn(length, None, rsp_from_rbp=0)  # mov %rbp, %rsp
            raise _Unknown
        if op == 0x8B and mod == 3 and reg == RSP:
            if rm == RBP:
                return Insn(length, None, rsp_from_rbp=0)
            raise _Unknown
        if op == 0x8D and reg == RSP:  # lea d(%base), %rsp
            base, disp = _lea_base(code, i, rex)
            if base == RSP:
                return Insn(length, -disp)
            if base == RBP:
                return Insn(length, None, rsp_from_rbp=disp)
            raise _Unknown
        if op == 0x8B and reg == RBP and mod == 3 and rm == RSP:
            return Insn(length, rbp_from_rsp=True)  # mov %rsp, %rbp
        if reg == RSP and op in (0x03, 0x0B, 0x13, 0x1B, 0x23, 0x2B, 0x33, 0x8B, 0x87):
            raise _Unknown  # rsp loaded from somewhere else
        if op == 0x8F and reg & 7 == 0:  # pop r/m
            return Insn(length, -8)
        if op == 0xFF:
            sub = reg & 7
            if sub == 6:  # push r/m
                return Insn(length, 8)
            if sub in (4, 5):  # jmp r/m: a tail call or a jump table; the path ends
                return Insn(length, ends=True)
            return Insn(length)
        if to_rsp and op in (0x01, 0x09, 0x11, 0x19, 0x21, 0x29, 0x31, 0x87, 0xC7, 0xD1, 0xC1):
            raise _Unknown  # some other write to rsp
        return Insn(length)
    if 0x50 <= op <= 0x57:
        if opsize16:
            raise _Unknown
        return Insn(i, 8, rbp_push=(op & 7) | rex_b << 3 == RBP)
    if 0x58 <= op <= 0x5F:
        r = (op & 7) | rex_b << 3
        if opsize16 or r == RSP:
            raise _Unknown
        return Insn(i, -8, rbp_pop=r == RBP)
    if op == 0x9C:
        return Insn(i, 8)  # pushf
    if op == 0x9D:
        return Insn(i, -8)  # popf
    if op == 0xC9:
        return Insn(i, None, leave=True)
    if op in (0xC3, 0xCC, 0xCF):
        return Insn(i, ends=True)
    if op == 0xC2:
        return Insn(i + 2, ends=True)
    if op in _NO_OPERAND_1:
        return Insn(i)
    if op in _IMM8_1:
        return Insn(i + 1, 8 if op == 0x6A else 0)
    if op in _IMMZ_1:
        return Insn(i + immz, 8 if op == 0x68 else 0)
    if 0xB8 <= op <= 0xBF:
        return Insn(i + (8 if wide else immz))
    if 0x70 <= op <= 0x7F or op == 0xEB:
        target = pc + i + 1 + int.from_bytes(code[i : i + 1], "little", signed=True)
        return Insn(i + 1, jump=target, conditional=op != 0xEB, ends=op == 0xEB)
    if op in (0xE8, 0xE9):
        target = pc + i + 4 + int.from_bytes(code[i : i + 4], "little", signed=True)
        if op == 0xE8:
            return Insn(i + 4)  # a call returns with the stack as it was
        return Insn(i + 4, jump=target, ends=True)
    if op in (0xA0, 0xA1, 0xA2, 0xA3):
        return Insn(i + (4 if addr32 else 8))
    raise _Unknown


def _lea_base(code: bytes, at: int, rex: int) -> tuple[int | None, int]:
    """(base register, displacement) of a `lea` ModRM at `at`; base None
    when the address is not base + displacement (an index, rip-relative)."""
    modrm = code[at]
    mod, rm = modrm >> 6, modrm & 7
    disp_at = at + 1
    if rm == 4:
        sib = code[at + 1]
        disp_at += 1
        if ((sib >> 3) & 7) | (rex >> 1 & 1) << 3 != 4:  # a scaled index
            return None, 0
        rm = sib & 7
    if mod == 0 and rm == 5:
        return None, 0
    size = 1 if mod == 1 else 4 if mod == 2 else 0
    disp = int.from_bytes(code[disp_at : disp_at + size], "little", signed=True) if size else 0
    return rm | (rex & 1) << 3, disp


def _decode_0f(code: bytes, i: int, pc: int, addr32: bool) -> Insn:
    op = code[i]
    i += 1
    if 0x80 <= op <= 0x8F:  # jcc rel32
        target = pc + i + 4 + int.from_bytes(code[i : i + 4], "little", signed=True)
        return Insn(i + 4, jump=target, conditional=True)
    if op == 0x0B:  # ud2
        return Insn(i, ends=True)
    if op in (0xA0, 0xA8):  # push fs/gs
        return Insn(i, 8)
    if op in (0xA1, 0xA9):  # pop fs/gs
        return Insn(i, -8)
    if op in _NO_MODRM_2:
        return Insn(i)
    if op == 0x38:
        i += 1
        return Insn(i + _modrm_length(code, i, addr32))
    if op == 0x3A:
        i += 1
        return Insn(i + _modrm_length(code, i, addr32) + 1)
    if op == 0x0F:
        raise _Unknown  # 3DNow!
    n = i + _modrm_length(code, i, addr32)
    return Insn(n + (1 if op in _IMM8_2 else 0))


@dataclass(frozen=True)
class _Frame:
    depth: int  # CFA - rsp
    rbp_at: int | None  # where the caller's rbp is saved, as an offset from the CFA
    rbp_depth: int | None  # CFA - rbp, once `mov %rsp,%rbp` set it


def function_entries(code: bytes, start: int) -> dict[int, orc.OrcEntry] | None:
    """{instruction address: the ORC entry objtool would give it} for the
    function whose code (from its entry to its end) is `code`, or None when
    the code cannot be followed."""
    if not code or len(code) > MAX_FUNCTION_BYTES:
        return None
    end = start + len(code)
    padded = code + bytes(16)  # decoding never runs off the end
    states: dict[int, _Frame] = {}
    work = [(start, _Frame(8, None, None))]
    try:
        while work:
            pc, frame = work.pop()
            while start <= pc < end:
                seen = states.get(pc)
                if seen is not None:
                    if seen != frame:
                        return None  # two paths disagree: give up, as objtool would warn
                    break
                states[pc] = frame
                insn = decode(padded[pc - start : pc - start + 16], pc)
                frame = _after(insn, frame)
                if insn.jump is not None and start <= insn.jump < end:
                    work.append((insn.jump, frame))
                if insn.ends:
                    break
                pc += insn.length
    except (_Unknown, IndexError):
        return None
    return {pc: _entry(f) for pc, f in sorted(states.items())}


def _after(insn: Insn, f: _Frame) -> _Frame:
    depth, rbp_at, rbp_depth = f.depth, f.rbp_at, f.rbp_depth
    if insn.leave:  # mov %rbp,%rsp; pop %rbp
        if rbp_depth is None:
            raise _Unknown
        return _Frame(rbp_depth - 8, None, None)
    if insn.rsp_from_rbp is not None:
        if rbp_depth is None:
            raise _Unknown
        depth = rbp_depth - insn.rsp_from_rbp
    elif insn.depth_change is None:
        raise _Unknown
    else:
        depth += insn.depth_change
    if insn.rbp_push and rbp_at is None:
        rbp_at = -depth
    if insn.rbp_pop and rbp_at == -f.depth:
        rbp_at, rbp_depth = None, None
    if insn.rbp_from_rsp:
        rbp_depth = depth
    if depth < 8:
        raise _Unknown
    return _Frame(depth, rbp_at, rbp_depth)


def _entry(f: _Frame) -> orc.OrcEntry:
    if f.rbp_at is None:
        return orc.OrcEntry(f.depth, 0, orc.REG_SP, orc.REG_UNDEFINED, orc.CALL, False)
    return orc.OrcEntry(f.depth, f.rbp_at, orc.REG_SP, orc.REG_PREV_SP, orc.CALL, False)
