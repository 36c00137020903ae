"""AMD SME: page-table entries carry the encryption bit (the C-bit, Linux's
sme_me_mask, exported as VMCOREINFO's NUMBER(sme_mask)) inside their address
field, and the x86_64 walk must mask it out, as makedumpfile and crash do.

A constructed case (no SME host to make a real one): the committed sample's
real page tables, read through a layer that sets bit 47 in every present
entry, with its VMCOREINFO's `NUMBER(sme_mask)=0` changed to that bit. Every
address must translate as the unmodified dump translates it; without the
mask the same tables translate elsewhere (the test can fail)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvmcore
from kvmcore.arches.x86_64.linux import build
from kvmcore.errors import KvmcoreError
from kvmcore.notes import VmcoreInfo
from kvmcore.translate import TranslationContext

COMMITTED = Path(__file__).resolve().parent.parent / "sample_dumps/committed/x86_64-small"
C_BIT = 1 << 47
PRESENT = 1


class CBitMemory:
    """The dump's physical memory with the C-bit set in every present 8-byte
    word (what the walk reads are page-table entries)."""

    def __init__(self, mem) -> None:
        self.mem = mem
        self.path = mem.path

    def read_phys(self, pa: int, size: int) -> bytes:
        raw = bytearray(self.mem.read_phys(pa, size))
        for off in range(0, len(raw) - 7, 8):
            word = int.from_bytes(raw[off : off + 8], "little")
            if word & PRESENT:
                raw[off : off + 8] = (word | C_BIT).to_bytes(8, "little")
        return bytes(raw)


def translator(dump, sme_mask: int):
    text = dump.vmcoreinfo.text
    assert "NUMBER(sme_mask)=0" in text.splitlines()
    info = VmcoreInfo(text.replace("NUMBER(sme_mask)=0", f"NUMBER(sme_mask)={sme_mask}"))
    ctx = TranslationContext(CBitMemory(dump.mem), info, dump.resolve_symbol)
    return build(ctx)


@pytest.mark.fast
def test_c_bit_is_masked_out_of_entries():
    with kvmcore.open(str(COMMITTED / "vmcore.mdf-d31-c")) as dump:
        kernel = dump.kernel
        vas = [dump.symbols.lookup(n) for n in ("_stext", "init_uts_ns", "jiffies_64")]
        vas += [t.address for t in kernel.tasks()[:20]]  # slab: the direct map
        vas += [
            dump.read_ptr(t.address + dump.types.offsetof("struct task_struct", "stack"))
            for t in kernel.tasks()[:20]
        ]  # vmalloc'd stacks
        want = {va: dump.translate(va).pa for va in vas}
        masked = translator(dump, C_BIT)
        assert {va: masked.translate(va).pa for va in vas} == want
        unmasked = translator(dump, 0)
        wrong = 0
        for va in vas:
            try:
                wrong += unmasked.translate(va).pa != want[va]
            except KvmcoreError:
                wrong += 1
        assert wrong == len(vas)
