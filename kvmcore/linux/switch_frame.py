"""The registers a sleeping Linux task's last context switch saved, per
architecture: where the kernel's switch code (__switch_to_asm, cpu_switch_to)
left them, read through the dump's types.

A new architecture adds a reader here with `@switch_frame_reader("name")`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import KvmcoreError, UnsupportedError

if TYPE_CHECKING:
    from ..dump import Dump

Reader = Callable[["Dump", int], dict[str, int]]
_READERS: dict[str, Reader] = {}


def switch_frame_reader(*arches: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        for arch in arches:
            _READERS[arch] = fn
        return fn

    return deco


def switch_frame(dump: Dump, task: int) -> dict[str, int]:
    """Registers saved at the last context switch of the task_struct at `task`."""
    reader = _READERS.get(dump.arch.name)
    if reader is None:
        raise UnsupportedError(
            f"{dump.arch.name}: saved switch frames are not supported", dump.path
        )
    return reader(dump, task)


@switch_frame_reader("x86_64")
def _x86_64(dump: Dump, task: int) -> dict[str, int]:
    """thread.sp points at the struct inactive_task_frame __switch_to_asm
    pushed; its return address is the resume point."""
    types = dump.types
    sp = dump.read_ptr(task + types.offsetof("struct task_struct", "thread.sp"))
    frame = "struct inactive_task_frame"
    regs = {"rsp": sp + types.sizeof(frame)}
    for member in types.members(frame):
        if member == "ret_addr":
            regs["rip"] = dump.read_ptr(sp + types.offsetof(frame, member))
        elif member in ("bp", "bx", "r12", "r13", "r14", "r15"):
            name = "r" + member if member in ("bp", "bx") else member
            regs[name] = dump.read_ptr(sp + types.offsetof(frame, member))
    return regs


@switch_frame_reader("i386")
def _i386(dump: Dump, task: int) -> dict[str, int]:
    """thread.sp points at the struct inactive_task_frame __switch_to_asm
    pushed (i386: flags, si, di, bx, bp, ret_addr)."""
    types = dump.types
    sp = dump.read_ptr(task + types.offsetof("struct task_struct", "thread.sp"))
    frame = "struct inactive_task_frame"
    regs = {"esp": sp + types.sizeof(frame)}
    names = {
        "ret_addr": "eip",
        "bp": "ebp",
        "bx": "ebx",
        "si": "esi",
        "di": "edi",
        "flags": "eflags",
    }
    for member in types.members(frame):
        if member in names:
            regs[names[member]] = dump.read_ptr(sp + types.offsetof(frame, member))
    return regs


@switch_frame_reader("aarch64")
def _aarch64(dump: Dump, task: int) -> dict[str, int]:
    """thread.cpu_context holds x19-x28, fp, sp and pc as cpu_switch_to left
    them; pc may carry a pointer-authentication code (KERNELPACMASK)."""
    types = dump.types
    base = task + types.offsetof("struct task_struct", "thread.cpu_context")
    regs = {}
    for member in ("x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28"):
        regs[member] = dump.read_ptr(base + types.offsetof("struct cpu_context", member))
    regs["x29"] = dump.read_ptr(base + types.offsetof("struct cpu_context", "fp"))
    regs["sp"] = dump.read_ptr(base + types.offsetof("struct cpu_context", "sp"))
    pc = dump.read_ptr(base + types.offsetof("struct cpu_context", "pc"))
    info = dump.vmcoreinfo
    pac = ((info.number("KERNELPACMASK") if info else None) or 0) & 0xFFFFFFFFFFFFFFFF
    regs["pc"] = pc | pac if pac else pc
    return regs


@switch_frame_reader("riscv64")
def _riscv64(dump: Dump, task: int) -> dict[str, int]:
    """thread holds ra, sp and s0-s11 as __switch_to (arch/riscv/kernel/entry.S)
    left them; ra, the return into __schedule, is the resume pc."""
    types = dump.types
    base = task + types.offsetof("struct task_struct", "thread")
    ra = dump.read_ptr(base + types.offsetof("struct thread_struct", "ra"))
    regs = {"pc": ra, "ra": ra}
    regs["sp"] = dump.read_ptr(base + types.offsetof("struct thread_struct", "sp"))
    s_base = base + types.offsetof("struct thread_struct", "s")
    for i, value in enumerate(dump.read_ptrs(s_base, 12)):
        regs[f"s{i}"] = value
    return regs


@switch_frame_reader("s390x")
def _s390x(dump: Dump, task: int) -> dict[str, int]:
    """thread.ksp is the stack pointer __switch_to saved; it stored r6-r15 in
    that frame's register save area (struct stack_frame's gprs, at 72), so the
    resume point is the saved r14 (gprs[8])."""
    types = dump.types
    ksp = dump.read_ptr(task + types.offsetof("struct task_struct", "thread.ksp"))
    try:
        gprs = types.offsetof("struct stack_frame", "gprs")
    except KvmcoreError:
        gprs = 72
    regs = {"r15": ksp}
    saved = dump.read_ptrs(ksp + gprs, 10)
    for i, value in enumerate(saved):
        regs[f"r{6 + i}"] = value
    regs["r15"] = ksp
    regs["pswa"] = regs["r14"]
    regs["pswm"] = 0
    return regs


#: where _switch's struct pt_regs starts in its frame: STACK_SWITCH_FRAME_REGS (6.2+:
#: STACK_FRAME_MIN_SIZE + 16 on ELFv2), STACK_FRAME_OVERHEAD (up to 6.1)
_PPC64_SWITCH_REGS = (48, 112)


@switch_frame_reader("ppc64le")
def _ppc64(dump: Dump, task: int) -> dict[str, int]:
    """thread.ksp is r1 after _switch made its frame (a stack frame header, then
    struct pt_regs) and stored the non-volatile r14-r31 and, as nip, its return
    address into __switch_to there. That frame's back chain is __switch_to's
    frame, where the walk resumes. _switch writes no "regshere" marker, so the
    layout (pt_regs at 48 since 6.2, at 112 before) is the one whose nip returns
    into __switch_to (else, the first whose nip is kernel code)."""
    types = dump.types
    ksp = dump.read_ptr(task + types.offsetof("struct task_struct", "thread.ksp"))
    nips = {}
    for off in _PPC64_SWITCH_REGS:
        try:
            nips[off] = dump.read_ptr(ksp + off + 8 * 32)
        except KvmcoreError:
            continue
    regs_at = None
    for want_switch_to in (True, False):
        for off, nip in nips.items():
            hit = dump.symbols.nearest(nip) if dump.is_kernel_address(nip) else None
            if hit is None or hit[0].type not in "Tt":
                continue
            if not want_switch_to or hit[0].name == "__switch_to":
                regs_at = ksp + off
                break
        if regs_at is not None:
            break
    if regs_at is None:
        regs_at = ksp + _PPC64_SWITCH_REGS[0]
    regs = {f"r{i}": dump.read_ptr(regs_at + 8 * i) for i in range(14, 32)}
    regs["nip"] = dump.read_ptr(regs_at + 8 * 32)
    regs["lr"] = regs["nip"]
    regs["r1"] = dump.read_ptr(ksp)  # back chain: __switch_to's frame
    return regs


@switch_frame_reader("arm")
def _arm(dump: Dump, task: int) -> dict[str, int]:
    """thread_info->cpu_context (struct cpu_context_save: r4-r9, sl, fp, sp, pc)
    as __switch_to (arch/arm/kernel/entry-armv.S) stored it; pc, the saved lr,
    is the return into __schedule. thread_info is the first member of
    task_struct with THREAD_INFO_IN_TASK (5.18 and later), else at the stack's base."""
    types = dump.types
    ts = "struct task_struct"
    if types.has_member(ts, "thread_info"):
        info = task + types.offsetof(ts, "thread_info")
    else:
        info = dump.read_ptr(task + types.offsetof(ts, "stack"))
    base = info + types.offsetof("struct thread_info", "cpu_context")
    ctx = "struct cpu_context_save"
    names = {"sl": "r10", "fp": "r11", "sp": "sp", "pc": "pc"}
    regs: dict[str, int] = {}
    for member in ("r4", "r5", "r6", "r7", "r8", "r9", "sl", "fp", "sp", "pc"):
        regs[names.get(member, member)] = dump.read_ptr(base + types.offsetof(ctx, member))
    regs["lr"] = regs["pc"]
    return regs
