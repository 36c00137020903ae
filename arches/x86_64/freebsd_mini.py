"""FreeBSD amd64 minidumps (libkvm's kvm_minidump_amd64.c)."""

from collections.abc import Iterator

from kvmcore.errors import NotInDumpError, NotMappedError
from kvmcore.kernelmap import KernelMapTranslator
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator
from kvmcore.translate import MappedRange, Translation

from .mmu import PRESENT, PSE

# amd64 pmap constants (sys/amd64/include/pmap.h, lib/libkvm/kvm_amd64.h)
PG_FRAME = 0x000FFFFFFFFFF000
PG_PS_FRAME = 0x000FFFFFFFE00000


class FreeBSDAmd64MiniTranslator(KernelMapTranslator):
    """kva -> pa from an amd64 minidump's own kernel map (libkvm's
    _amd64_minidump_vatop): version 1 holds one 4K PTE per page from kernbase,
    version 2+ one PDE per 2 MB (a PS PDE is a 2 MB page, any other points at a
    page-table page that is itself among the dumped pages). The direct map
    [dmapbase, dmapend) is linear: pa = va - dmapbase."""

    def _entry(self, va: int, index: int, what: str) -> int:
        entry: int | None = self.mem.pmap_entry(index)  # FreeBSDMinidump.pmap_entry
        if entry is None:
            raise NotMappedError(
                f"virtual address {va:#x} lies past the minidump's kernel map "
                f"({self.mem.pmap_count} {what}s from {self.hdr.kernbase:#x})",
                va,
                self.path,
            )
        if not entry & PRESENT:
            raise NotMappedError(
                f"virtual address {va:#x} is not mapped ({what} {index} is invalid)", va, self.path
            )
        return entry

    def translate(self, va: int) -> Translation:
        hdr = self.hdr
        if va >= hdr.kernbase:
            if hdr.version == 1:
                pte = self._entry(va, (va - hdr.kernbase) >> 12, "PTE")
                return Translation(va, (pte & PG_FRAME) | (va & 0xFFF), 1 << 12)
            pde = self._entry(va, (va - hdr.kernbase) >> 21, "PDE")
            if pde & PSE:
                return Translation(va, (pde & PG_PS_FRAME) | (va & 0x1FFFFF), 1 << 21)
            table = pde & PG_FRAME
            try:
                raw = self.mem.read_phys(table + ((va >> 12) & 511) * 8, 8)
            except NotInDumpError:
                raise NotMappedError(
                    f"virtual address {va:#x}: its page-table page {table:#x} "
                    "is not in the minidump",
                    va,
                    self.path,
                ) from None
            pte = int.from_bytes(raw, "little")
            if not pte & PRESENT:
                raise NotMappedError(
                    f"virtual address {va:#x} is not mapped (PTE invalid)", va, self.path
                )
            return Translation(va, (pte & PG_FRAME) | (va & 0xFFF), 1 << 12)
        if hdr.dmapbase <= va < hdr.dmapend:
            return Translation(va, va - hdr.dmapbase, 1 << 12)
        raise NotMappedError(
            f"virtual address {va:#x} is neither in the minidump's kernel map "
            f"(from {hdr.kernbase:#x}) nor in the direct map",
            va,
            self.path,
        )

    def _kernel_map(self) -> Iterator[MappedRange]:
        hdr, mem = self.hdr, self.mem
        for index in range(mem.pmap_count):
            entry = mem.pmap_entry(index)
            if not entry & PRESENT:
                continue
            if hdr.version == 1:
                yield MappedRange(hdr.kernbase + (index << 12), entry & PG_FRAME, 1 << 12, 1 << 12)
                continue
            va = hdr.kernbase + (index << 21)
            if entry & PSE:
                yield MappedRange(va, entry & PG_PS_FRAME, 1 << 21, 1 << 21)
                continue
            try:
                raw = mem.read_phys(entry & PG_FRAME, 4096)
            except NotInDumpError:
                continue  # libkvm also skips page-table pages that were not dumped
            for i in range(512):
                pte = int.from_bytes(raw[i * 8 : i * 8 + 8], "little")
                if pte & PRESENT:
                    yield MappedRange(va + (i << 12), pte & PG_FRAME, 1 << 12, 1 << 12)


register_translator(
    TranslatorFlavour(
        "x86_64", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDAmd64MiniTranslator(ctx.mem)
    )
)
