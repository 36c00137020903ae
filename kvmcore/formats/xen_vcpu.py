"""Xen's x86 `vcpu_guest_context`, as `.xen_prstatus` holds one per vCPU.

The layout is the 64-bit one of xen/include/public/arch-x86/xen.h with
xen-x86_64.h's `struct cpu_user_regs`: the toolstack writes it for 64-bit PV
guests and for every HVM guest (arch_get_info_guest fills `c.nat` for HVM,
32-bit guests included). Offsets:

    fpu_ctxt[512] @0, flags @512, user_regs @520 (200 bytes), trap_ctxt[256]
    @720 (16 bytes each), ldt_base, ldt_ents @4816, gdt_frames[16] @4832,
    gdt_ents @4960, kernel_ss, kernel_sp @4968, ctrlreg[8] @4984,
    debugreg[8] @5048, event/failsafe/syscall_callback_eip @5112, vm_assist
    @5136, fs_base, gs_base_kernel, gs_base_user @5144; 5168 bytes in all.

For a PV guest ctrlreg[3] holds xen_pfn_to_cr3(the kernel table's MFN), which
on x86_64 is the MFN shifted left by 12, and ctrlreg[1] the user table's; for
an HVM guest ctrlreg[0], [2], [3], [4] are the guest's own CR0, CR2, CR3, CR4
(EFER is not saved). The guest's general registers keep Xen's names here;
the architecture's flavour renames them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: sizeof(struct vcpu_guest_context) on x86_64
SIZE_X86_64 = 5168
USER_REGS = 520
CTRLREG = 4984
DEBUGREG = 5048
SEGMENT_BASES = 5144
FLAGS = 512
VGCF_ONLINE = 1 << 5

#: struct cpu_user_regs (x86_64): the 8-byte slots in order, before error_code
_GPRS = (
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
)
#: (name, offset in cpu_user_regs, size) of the rest
_OTHERS = (
    ("error_code", 120, 4),
    ("entry_vector", 124, 4),
    ("rip", 128, 8),
    ("cs", 136, 2),
    ("saved_upcall_mask", 140, 1),
    ("rflags", 144, 8),
    ("rsp", 152, 8),
    ("ss", 160, 2),
    ("es", 168, 2),
    ("ds", 176, 2),
    ("fs", 184, 2),
    ("gs", 192, 2),
)


@dataclass(frozen=True)
class VcpuContext:
    """One vCPU's saved state, in Xen's names."""

    #: position in .xen_prstatus (the vCPU id when no vCPU was skipped)
    index: int
    #: VGCF_* flags
    flags: int
    #: cpu_user_regs by field name (r15 ... rdi, rip, cs, rflags, rsp, ss, es ...)
    user_regs: dict[str, int]
    ctrlreg: tuple[int, ...]
    debugreg: tuple[int, ...]
    fs_base: int
    gs_base_kernel: int
    gs_base_user: int
    raw: bytes

    @property
    def online(self) -> bool:
        return bool(self.flags & VGCF_ONLINE)


def parse_x86_64(raw: bytes, index: int) -> VcpuContext:
    """Decode one 64-bit vcpu_guest_context (`raw` at least SIZE_X86_64 bytes)."""
    regs = dict(zip(_GPRS, struct.unpack_from("<15Q", raw, USER_REGS)))
    for name, off, size in _OTHERS:
        regs[name] = int.from_bytes(raw[USER_REGS + off : USER_REGS + off + size], "little")
    fs_base, gs_kernel, gs_user = struct.unpack_from("<3Q", raw, SEGMENT_BASES)
    return VcpuContext(
        index=index,
        flags=struct.unpack_from("<Q", raw, FLAGS)[0],
        user_regs=regs,
        ctrlreg=struct.unpack_from("<8Q", raw, CTRLREG),
        debugreg=struct.unpack_from("<8Q", raw, DEBUGREG),
        fs_base=fs_base,
        gs_base_kernel=gs_kernel,
        gs_base_user=gs_user,
        raw=bytes(raw[:SIZE_X86_64]),
    )


CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12


def paging_vcpu(vcpus: list[VcpuContext]) -> VcpuContext | None:
    """The vCPU whose CR3 an HVM guest's kernel walk starts from: the first
    with paging on that runs in ring 0 (a vCPU in user mode may have a user
    page table loaded: Linux's PTI gives user mode one without the kernel),
    else the first with paging on, else None."""
    paged = [v for v in vcpus if v.ctrlreg[0] & CR0_PG]
    kernel = [v for v in paged if v.user_regs["cs"] & 3 == 0]
    chosen = kernel or paged
    return chosen[0] if chosen else None
