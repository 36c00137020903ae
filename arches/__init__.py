"""Architecture backends, one package each (installed as kvmcore.arches).

kvmcore imports every package found here; each registers itself with
kvmcore.registry, so a new architecture needs no edit outside its package.

What a new architecture must provide (see arches/x86_64/ for a full one):

- ``cpu.py``: an ``Arch`` (kvmcore.registry) with its CPU facts: name, word
  size, byte order, the pc/sp/fp register names, and as far as known the
  NT_PRSTATUS layout (``PrstatusLayout``), the DWARF register numbering and
  the gdb target description (kvmcore.cpu). ``Arch.probe`` claims dumps by the
  format's machine hint, VMCOREINFO keys or PRSTATUS note size; a
  ``probe_hook`` adds a test where two arches share a hint.
- ``mmu.py``: the page-table format as a ``RadixTable`` (kvmcore.pagetable):
  levels, entry size and how to decode an entry. The one generic walker
  does translation and page walks, bounded and cycle-checked.
- one module per dump flavour it reads, each registering a
  ``TranslatorFlavour``: a probe and ``build(ctx) -> Translator`` made from a
  ``TranslationContext`` alone (physical memory, VMCOREINFO, a symbol
  resolver, an explicit root), never from the Dump. ``linux.py`` for Linux
  full dumps; ``freebsd_full.py`` and ``freebsd_mini.py`` for FreeBSD.
- ``__init__.py``: calls ``register_arch(ARCH, __name__)``; the registry
  imports the package's other modules (and so registers the flavours) when
  a dump of this architecture is opened, not before.

What it may add later, each beside the code of its layer, not here:

- an unwinder, registered per (architecture, OS) in kvmcore/unwind/arch_<name>.py;
- Linux hooks (the context-switch frame of a sleeping task) in
  kvmcore/linux/switch_frame.py; FreeBSD's ``struct pcb`` in kvmcore/freebsd/pcb.py;
- unwind rows for ``kvmcore symfile`` (kvmcore/unwind).

Modules here import only the layers below translation (errors, formats, notes,
cpu, pagetable, translate, registry): never the symbols, the kernel model, the
unwinders or an OS personality. CI checks that with import-linter.
"""
