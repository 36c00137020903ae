"""A writer of Xen dump-core files, from Xen's documented layout, for fixtures.

No Xen HVM guest can be dumped in CI time (xen-under-tcg.md: `xl dump-core`
of an HVM guest took 10 minutes), so the HVM tests read a real x86_64
sample's memory and vCPUs rewrapped here into the layout `xl dump-core`
writes for an HVM guest:

- docs/misc/dump-core-format.txt and tools/libs/guest/xg_core.c: ELF64
  ET_CORE, no program headers, section headers right after the ELF header
  (null, .shstrtab, .note.Xen, .xen_prstatus, .xen_shared_info, .xen_pages,
  .xen_pfn or .xen_p2m), then the notes (none, header, Xen version, format
  version), the vCPU contexts, the shared_info page, padding to a page,
  the pages, the pfn table and the section names last;
- the structs are ctypes mirrors of the C declarations (xg_core.h,
  public/version.h, public/arch-x86/xen.h and xen-x86_64.h), so their
  offsets come from the C layout rules, not from kvmcore's reader;
- an HVM vCPU context is filled as Xen's arch_get_info_guest fills one for
  HVM: the general registers, ctrlreg[0], [2], [3], [4] from the guest's CR0,
  CR2, CR3, CR4, the segment selectors, fs_base, and gs_base_kernel/_user
  chosen by the CPL (ring 0: GS.base is the kernel's, the shadow the user's).

The source's registers come from its NT_PRSTATUS notes (Linux's
user_regs_struct) and QEMU's per-vCPU "QEMU" notes (QEMUCPUState: control
registers and the GS shadow base); the file gets no VMCOREINFO note.
"""

from __future__ import annotations

import ctypes as C
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from kvmcore.errors import NotInDumpError
from kvmcore.formats import open_physical

PAGE = 4096
EM_X86_64 = 62
SHT_PROGBITS, SHT_STRTAB, SHT_NOTE = 1, 3, 7
NOTE_NONE, NOTE_HEADER, NOTE_XEN_VERSION, NOTE_FORMAT_VERSION = range(0x2000000, 0x2000004)
MAGIC_PV, MAGIC_HVM = 0xF00FEBED, 0xF00FEBEE
INVALID = (1 << 64) - 1
u8, u16, u32, u64 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64


class CpuUserRegs(C.LittleEndianStructure):
    """xen-x86_64.h struct cpu_user_regs (the unions are their 64-bit member)."""

    _fields_ = [
        *[
            (n, u64)
            for n in [
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
            ]
        ],
        ("error_code", u32),
        ("entry_vector", u32),
        ("rip", u64),
        ("cs", u16),
        ("_pad0", u16 * 1),
        ("saved_upcall_mask", u8),
        ("_pad1", u8 * 3),
        ("rflags", u64),
        ("rsp", u64),
        ("ss", u16),
        ("_pad2", u16 * 3),
        ("es", u16),
        ("_pad3", u16 * 3),
        ("ds", u16),
        ("_pad4", u16 * 3),
        ("fs", u16),
        ("_pad5", u16 * 3),
        ("gs", u16),
        ("_pad6", u16 * 3),
    ]


class TrapInfo(C.LittleEndianStructure):
    _fields_ = [("vector", u8), ("flags", u8), ("cs", u16), ("address", u64)]


class VcpuGuestContext(C.LittleEndianStructure):
    """public/arch-x86/xen.h struct vcpu_guest_context, as compiled for x86_64."""

    _fields_ = [
        ("fpu_ctxt", C.c_char * 512),
        ("flags", u64),
        ("user_regs", CpuUserRegs),
        ("trap_ctxt", TrapInfo * 256),
        ("ldt_base", u64),
        ("ldt_ents", u64),
        ("gdt_frames", u64 * 16),
        ("gdt_ents", u64),
        ("kernel_ss", u64),
        ("kernel_sp", u64),
        ("ctrlreg", u64 * 8),
        ("debugreg", u64 * 8),
        ("event_callback_eip", u64),
        ("failsafe_callback_eip", u64),
        ("syscall_callback_eip", u64),
        ("vm_assist", u64),
        ("fs_base", u64),
        ("gs_base_kernel", u64),
        ("gs_base_user", u64),
    ]


class CompileInfo(C.LittleEndianStructure):
    _fields_ = [
        ("compiler", C.c_char * 64),
        ("compile_by", C.c_char * 16),
        ("compile_domain", C.c_char * 32),
        ("compile_date", C.c_char * 32),
    ]


class XenVersionDesc(C.LittleEndianStructure):
    """xg_core.h struct xen_dumpcore_elfnote_xen_version_desc."""

    _fields_ = [
        ("major_version", u64),
        ("minor_version", u64),
        ("extra_version", C.c_char * 16),
        ("compile_info", CompileInfo),
        ("capabilities", C.c_char * 1024),
        ("changeset", C.c_char * 64),
        ("virt_start", u64),  # xen_platform_parameters_t
        ("pagesize", u64),
    ]


class ElfNote(C.LittleEndianStructure):
    """xg_core.h struct elfnote: the header with the name "Xen" inside it."""

    _fields_ = [("namesz", u32), ("descsz", u32), ("type", u32), ("name", C.c_char * 4)]


class Elf64Ehdr(C.LittleEndianStructure):
    _fields_ = [
        ("e_ident", u8 * 16),
        ("e_type", u16),
        ("e_machine", u16),
        ("e_version", u32),
        ("e_entry", u64),
        ("e_phoff", u64),
        ("e_shoff", u64),
        ("e_flags", u32),
        ("e_ehsize", u16),
        ("e_phentsize", u16),
        ("e_phnum", u16),
        ("e_shentsize", u16),
        ("e_shnum", u16),
        ("e_shstrndx", u16),
    ]


class Elf64Shdr(C.LittleEndianStructure):
    _fields_ = [
        ("sh_name", u32),
        ("sh_type", u32),
        ("sh_flags", u64),
        ("sh_addr", u64),
        ("sh_offset", u64),
        ("sh_size", u64),
        ("sh_link", u32),
        ("sh_info", u32),
        ("sh_addralign", u64),
        ("sh_entsize", u64),
    ]


def _note(ntype: int, desc: bytes) -> bytes:
    return bytes(ElfNote(4, len(desc), ntype, b"Xen")) + desc


def write_dumpcore(
    path: Path,
    *,
    hvm: bool,
    pfns: list[int],
    read_page: Callable[[int], bytes],
    vcpus: list[bytes],
    mfns: dict[int, int] | None = None,
    nr_vcpus: int | None = None,
) -> Path:
    """Write a dump-core file holding the pages of `pfns` (read_page(pfn)),
    one context per `vcpus` entry; a PV file (hvm=False) gets .xen_p2m from
    `mfns` (pfn -> MFN). `nr_vcpus` overrides the header's count."""
    entries = len(pfns)
    names = b"\0"
    index: dict[str, int] = {}
    for name in (
        ".shstrtab",
        ".note.Xen",
        ".xen_prstatus",
        ".xen_shared_info",
        ".xen_pages",
        ".xen_pfn" if hvm else ".xen_p2m",
    ):
        index[name] = len(names)
        names += name.encode() + b"\0"
    version = XenVersionDesc(4, 17, b".0-fixture")
    version.capabilities = b"xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"
    version.pagesize = PAGE
    notes = (
        _note(NOTE_NONE, b"")
        + _note(
            NOTE_HEADER,
            struct.pack(
                "<4Q",
                MAGIC_HVM if hvm else MAGIC_PV,
                len(vcpus) if nr_vcpus is None else nr_vcpus,
                entries,
                PAGE,
            ),
        )
        + _note(NOTE_XEN_VERSION, bytes(version))
        + _note(NOTE_FORMAT_VERSION, struct.pack("<Q", 1))
    )
    ctx_size = C.sizeof(VcpuGuestContext)
    nsec = 7
    offset = C.sizeof(Elf64Ehdr) + nsec * C.sizeof(Elf64Shdr)
    shdrs = [Elf64Shdr(), Elf64Shdr(index[".shstrtab"], SHT_STRTAB)]
    shdrs.append(Elf64Shdr(index[".note.Xen"], SHT_NOTE, 0, 0, offset, len(notes)))
    offset += len(notes)
    prstatus = b"".join(vcpus)
    shdrs.append(
        Elf64Shdr(index[".xen_prstatus"], SHT_PROGBITS, 0, 0, offset, len(prstatus), 0, 0, 8)
    )
    shdrs[-1].sh_entsize = ctx_size
    offset += len(prstatus)
    shdrs.append(
        Elf64Shdr(index[".xen_shared_info"], SHT_PROGBITS, 0, 0, offset, PAGE, 0, 0, 8, PAGE)
    )
    offset += PAGE
    pad = -offset % PAGE
    offset += pad
    pages_at = offset
    shdrs.append(
        Elf64Shdr(index[".xen_pages"], SHT_PROGBITS, 0, 0, offset, entries * PAGE, 0, 0, PAGE)
    )
    shdrs[-1].sh_entsize = PAGE
    offset += entries * PAGE
    if hvm:
        table = struct.pack(f"<{entries}Q", *pfns)
        width = 8
    else:
        assert mfns is not None
        table = b"".join(struct.pack("<QQ", p, mfns[p]) for p in pfns)
        width = 16
    shdrs.append(
        Elf64Shdr(index[".xen_pfn" if hvm else ".xen_p2m"], SHT_PROGBITS, 0, 0, offset, len(table))
    )
    shdrs[-1].sh_addralign, shdrs[-1].sh_entsize = 8, width
    offset += len(table)
    shdrs[1].sh_offset, shdrs[1].sh_size = offset, len(names)
    ehdr = Elf64Ehdr()
    ehdr.e_ident[:8] = list(b"\x7fELF\x02\x01\x01\x00")
    ehdr.e_ident[8] = 1  # EI_ABIVERSION = EV_CURRENT, as xc_core_ehdr_init sets it
    ehdr.e_type, ehdr.e_machine, ehdr.e_version = 4, EM_X86_64, 1
    ehdr.e_shoff, ehdr.e_ehsize = C.sizeof(Elf64Ehdr), C.sizeof(Elf64Ehdr)
    ehdr.e_phentsize, ehdr.e_shentsize = 56, C.sizeof(Elf64Shdr)
    ehdr.e_shnum, ehdr.e_shstrndx = nsec, 1
    with open(path, "wb") as f:
        f.write(bytes(ehdr))
        f.write(b"".join(bytes(s) for s in shdrs))
        f.write(notes)
        f.write(prstatus)
        f.write(bytes(PAGE))  # shared_info: none in the source
        f.write(bytes(pad))
        assert f.tell() == pages_at
        for pfn in pfns:
            page = read_page(pfn)
            if page.count(0) == PAGE:
                f.seek(PAGE, 1)  # a hole reads as the zeros it is: keeps the copy sparse
            else:
                f.write(page)
        f.write(table)
        f.write(names)
    return path


# ------------------------------------------------------------ from a QEMU dump's vCPUs

#: Linux's user_regs_struct (x86_64), elf_prstatus.pr_reg at offset 112
USER_REGS = [
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
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
]
#: QEMUCPUState (QEMU target/i386/arch_dump.c): u32 version, size; 16 GPRs,
#: rip, rflags; 10 segments of {u32 selector, limit, flags, pad; u64 base};
#: u64 cr[5]; u64 kernel_gs_base
QEMU_GPRS = [
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rsp",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "rflags",
]
QEMU_SEGMENTS = ["cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt"]


def qemu_cpu_state(desc: bytes) -> dict[str, int]:
    out = dict(zip(QEMU_GPRS, struct.unpack_from("<18Q", desc, 8)))
    for i, seg in enumerate(QEMU_SEGMENTS):
        selector, _limit, _flags, _pad, base = struct.unpack_from("<4IQ", desc, 152 + 24 * i)
        out[seg], out[f"{seg}_base"] = selector, base
    for i, cr in enumerate(struct.unpack_from("<5Q", desc, 392)):
        out[f"cr{i}"] = cr
    out["kernel_gs_base"] = struct.unpack_from("<Q", desc, 432)[0] if len(desc) >= 440 else 0
    return out


#: Linux's i386 user_regs_struct, elf_prstatus.pr_reg at offset 72 (17 longs)
USER_REGS_I386 = [
    "ebx",
    "ecx",
    "edx",
    "esi",
    "edi",
    "ebp",
    "eax",
    "ds",
    "es",
    "fs",
    "gs",
    "orig_eax",
    "eip",
    "cs",
    "eflags",
    "esp",
    "ss",
]
#: the general registers of cpu_user_regs
GPRS = [name for name, _ in CpuUserRegs._fields_ if name[0] == "r" and name != "rflags"]


def prstatus_registers(desc: bytes) -> dict[str, int]:
    """NT_PRSTATUS's registers in x86_64 names, from either width's note."""
    if len(desc) == 336:
        regs = dict(zip(USER_REGS, struct.unpack_from("<27Q", desc, 112)))
        return {**regs, "rflags": regs["eflags"]}
    assert len(desc) == 144, f"an NT_PRSTATUS of {len(desc)} bytes"
    regs = dict(zip(USER_REGS_I386, struct.unpack_from("<17I", desc, 72)))
    return {("r" + k[1:] if k[0] == "e" and k != "es" else k): v for k, v in regs.items()}


def hvm_context(prstatus: bytes, qemu: bytes) -> bytes:
    """An HVM vcpu_guest_context as Xen's arch_get_info_guest would fill it for
    this vCPU: general registers from NT_PRSTATUS, the rest from QEMU's note."""
    regs = prstatus_registers(prstatus)
    q = qemu_cpu_state(qemu)
    ctx = VcpuGuestContext()
    ctx.flags = 1 | 1 << 5  # VGCF_i387_valid | VGCF_online
    for name in GPRS:
        setattr(ctx.user_regs, name, regs.get(name, q[name]))
    ctx.user_regs.rflags = regs["rflags"]
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        setattr(ctx.user_regs, seg, q[seg])
    for i in (0, 2, 3, 4):
        ctx.ctrlreg[i] = q[f"cr{i}"]
    ctx.fs_base = q["fs_base"]
    if q["cs"] & 3 == 0:  # ring_0(): GS.base is the kernel's
        ctx.gs_base_kernel, ctx.gs_base_user = q["gs_base"], q["kernel_gs_base"]
    else:
        ctx.gs_base_user, ctx.gs_base_kernel = q["gs_base"], q["kernel_gs_base"]
    return bytes(ctx)


def present_pfns(mem) -> list[int]:
    """The pfns whose pages the source holds (a filtered kdump leaves some out)."""
    out = []
    for rng in mem.ranges():
        for pa in range(rng.start, rng.end, PAGE):
            if not mem.is_excluded(pa):
                out.append(pa // PAGE)
    return out


def hvm_from_dump(src: Path, dst: Path, vcpus: Iterable[int] | None = None) -> Path:
    """Rewrap a real x86_64 QEMU dump (ELF or kdump-compressed, with its CORE
    and QEMU notes) as the dump-core file of an HVM guest; `vcpus` picks and
    orders the source's vCPUs written (all by default)."""
    mem = open_physical(str(src))
    try:
        prstatus = [n.desc for n in mem.notes if n.name == "CORE" and n.type == 1]
        qemu = [n.desc for n in mem.notes if n.name == "QEMU"]
        assert prstatus and len(prstatus) == len(qemu), f"{src}: needs CORE and QEMU notes"
        order = list(range(len(prstatus))) if vcpus is None else list(vcpus)
        contexts = [hvm_context(prstatus[i], qemu[i]) for i in order]

        def read_page(pfn: int) -> bytes:
            try:
                return mem.read_phys(pfn * PAGE, PAGE)
            except NotInDumpError:
                return bytes(PAGE)

        return write_dumpcore(
            dst, hvm=True, pfns=present_pfns(mem), read_page=read_page, vcpus=contexts
        )
    finally:
        mem.close()


# ------------------------------------------------------------ patching a copy


def sections(path: Path) -> dict[str, tuple[int, Elf64Shdr]]:
    """name -> (file offset of its section header, the header), read with
    ctypes from the ELF layout (no kvmcore)."""
    with open(path, "rb") as f:
        ehdr = Elf64Ehdr.from_buffer_copy(f.read(C.sizeof(Elf64Ehdr)))
        f.seek(ehdr.e_shoff)
        size = C.sizeof(Elf64Shdr)
        table = f.read(ehdr.e_shnum * size)
        headers = [Elf64Shdr.from_buffer_copy(table, i * size) for i in range(ehdr.e_shnum)]
        strtab = headers[ehdr.e_shstrndx]
        f.seek(strtab.sh_offset)
        names = f.read(strtab.sh_size)
    out = {}
    for i, sh in enumerate(headers):
        name = names[sh.sh_name :].split(b"\0", 1)[0].decode()
        if name:
            out[name] = (ehdr.e_shoff + i * size, sh)
    return out


def sparse_copy(src: Path, dst: Path, length: int | None = None) -> Path:
    """A copy of the first `length` bytes of `src` (all by default) whose
    zero pages stay holes: a patched copy of a fixture costs little disk."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        left = src.stat().st_size if length is None else length
        while left > 0:
            block = fin.read(min(left, 1 << 20))
            for at in range(0, len(block), PAGE):
                chunk = block[at : at + PAGE]
                if chunk.count(0) == len(chunk):
                    fout.seek(len(chunk), 1)
                else:
                    fout.write(chunk)
            left -= len(block)
        fout.truncate()
    return dst


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
