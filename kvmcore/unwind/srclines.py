"""Source lines and inlined functions of code addresses, from DWARF.

For a pc, the compile unit (CU) holding it is found through `.debug_aranges`;
that CU's line table (`.debug_line`) gives the innermost file:line, and its
DW_TAG_subprogram / DW_TAG_inlined_subroutine scopes containing the pc give
the functions inlined there, each with the file:line it was called from
(DW_AT_call_file, DW_AT_call_line): the frames drgn's `stack_trace()` and
gdb show between two real frames.

pyelftools decodes a CU slowly (a few tenths of a second for a large one), so
only the CUs the pcs need are decoded, and what a CU gave (its line rows and
scopes, a few kB) is kept per build id in the index cache
(kvmcore.indexcache, `srclines-<CU offset>`): a later run reads that and does
not open the DWARF at all. `.debug_aranges` itself is parsed here with
`struct` (about 11,000 ranges for Debian's amd64 vmlinux, milliseconds).

Addresses are the file's link addresses. A vmlinux is a final link: its
DWARF needs no relocation. A module's debug file (ET_REL) has every section
at 0: kvmcore.unwind.modlines relocates its DWARF onto a layout of its own
and maps runtime pcs there (`ModuleSourceIndex`, a SourceIndex).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import indexcache
from ..errors import KvmcoreError
from ..symbols.elfmap import mapped_elf_file
from .linetable import Declined, line_rows

if TYPE_CHECKING:
    from ..dump import Dump
    from .model import Backtrace

CACHE_VERSION = b"srclines-4"
SHF_ALLOC, SHF_EXECINSTR = 2, 4
#: scopes a walk descends into (a lexical block holds inlined calls too)
_CODE_TAGS = ("DW_TAG_subprogram", "DW_TAG_inlined_subroutine", "DW_TAG_lexical_block")
MAX_DEPTH = 64


@dataclass(frozen=True)
class SourceLine:
    """One function at a pc: its name and where in it the pc is (for an
    inlined function's caller: the line of the inlined call)."""

    function: str | None
    file: str | None
    line: int | None


class _CuLines:
    """What one CU says about its code: line rows, and the code scopes at its
    top level (`roots`: [lo, hi, DIE offset] per span, a function each) whose
    nested scopes (inlined calls) are decoded only when a pc falls in them."""

    def __init__(self, files: list[str], rows: list[list[int]], roots: list[list[int]]) -> None:
        # rows: [address, file index (-1: end of a sequence), line], sorted by address
        self._set(files, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], roots)

    def _set(
        self,
        files: list[str],
        addrs: Sequence[int],
        row_files: Sequence[int],
        row_lines: Sequence[int],
        roots: list[list[int]],
    ) -> None:
        self.files = files
        # the rows as three columns (address, file index, line)
        self.addrs, self.row_files, self.row_lines = addrs, row_files, row_lines
        self.roots = roots

    def roots_at(self, pc: int) -> list[int]:
        """The DIE offsets of the top-level scopes holding `pc`."""
        return [off for lo, hi, off in self.roots if lo <= pc < hi]

    def to_bytes(self) -> bytes:
        """zlib of: the JSON of files and roots (its length first, u32), then the
        rows' three columns as little-endian 64-bit arrays (a large CU has ~35,000
        rows: as JSON they took 30 ms to read back, as arrays well under 1 ms)."""
        head = json.dumps({"files": self.files, "roots": self.roots}).encode()
        columns = [
            array(code, c) for code, c in zip("Qqq", (self.addrs, self.row_files, self.row_lines))
        ]
        if sys.byteorder != "little":
            for c in columns:
                c.byteswap()
        return zlib.compress(
            b"".join([struct.pack("<I", len(head)), head] + [c.tobytes() for c in columns]), 6
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> _CuLines:
        raw = zlib.decompress(data)
        (n,) = struct.unpack_from("<I", raw)
        obj = json.loads(raw[4 : 4 + n])
        body = raw[4 + n :]
        if len(body) % 24:
            raise ValueError("srclines rows of unequal columns")
        third = len(body) // 3
        columns = []
        for k, code in enumerate("Qqq"):
            c = array(code)
            c.frombytes(body[k * third : (k + 1) * third])
            if sys.byteorder != "little":
                c.byteswap()
            columns.append(c)
        cu = cls.__new__(cls)
        cu._set(obj["files"], columns[0], columns[1], columns[2], obj["roots"])
        return cu

    def file(self, index: int) -> str | None:
        return self.files[index] if 0 <= index < len(self.files) else None

    def line_at(self, pc: int) -> tuple[str | None, int | None]:
        i = bisect_right(self.addrs, pc) - 1
        if i < 0:
            return None, None
        file_index, line = self.row_files[i], self.row_lines[i]
        if file_index < 0:  # past the end of a sequence
            return None, None
        return self.file(file_index), line or None

    def lookup(self, pc: int, scopes: list[list[Any]]) -> list[SourceLine]:
        """Innermost first: the inlined functions at pc, then the function
        that holds them, from `scopes` (those of the roots holding pc); [] when
        no scope holds pc."""
        chain: dict[int, list[Any]] = {}
        for scope in scopes:
            if scope[0] <= pc < scope[1]:
                depth = scope[2]
                # two scopes at one depth: keep the narrower (a nested copy)
                old = chain.get(depth)
                if old is None or scope[1] - scope[0] < old[1] - old[0]:
                    chain[depth] = scope
        if 0 not in chain:
            file, line = self.line_at(pc)
            return [SourceLine(None, file, line)] if file else []
        out = []
        file, line = self.line_at(pc)
        depth = max(chain)
        for d in range(depth, -1, -1):
            found = chain.get(d)
            if found is None:
                continue
            out.append(SourceLine(found[3], file, line))
            file, line = self.file(found[4]), found[5] or None
        return out


class SourceIndex:
    """file:line and inlined functions at the link addresses of one ELF file
    (a vmlinux, or a module's debug file) with DWARF."""

    def __init__(self, path: str, cache_key: str | None, aranges: list[tuple[int, int, int]]):
        self.path = path
        self.cache_key = cache_key
        aranges.sort()
        self._starts = [a[0] for a in aranges]
        self._ranges = aranges
        self._cus: dict[int, _CuLines | None] = {}
        self._scopes: dict[tuple[int, int], list[list[Any]] | None] = {}
        self._dwarf: Any = None
        self._file: Any = None
        #: link-address ranges the index answers for (a vmlinux's code), or None: all
        self.text_ranges: list[tuple[int, int]] | None = None
        self.decoded = 0  # CUs decoded from DWARF (not read from the cache)
        self.error: str | None = None

    # -- building ----------------------------------------------------------------
    @classmethod
    def for_vmlinux(cls, path: str, build_id: str | None) -> SourceIndex:
        from ..symbols.vmlinux import VmlinuxFile

        image = VmlinuxFile(path)
        try:
            sec = image.section(".debug_aranges")
            if sec is None or not sec.size:
                raise KvmcoreError("the vmlinux has no .debug_aranges", path)
            data = bytes(image.section_bytes(sec))
            little = image.byteorder == "little"
        finally:
            image.close()
        return cls(path, build_id, parse_aranges(data, little))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._dwarf = None

    # -- lookups -----------------------------------------------------------------
    def cu_offset(self, pc: int) -> int | None:
        i = bisect_right(self._starts, pc) - 1
        # ranges of one CU do not overlap another's, but look back a little
        for j in range(i, max(i - 4, -1), -1):
            lo, hi, cu = self._ranges[j]
            if lo <= pc < hi:
                return cu
        return None

    def lookup(self, pc: int) -> list[SourceLine]:
        """Innermost first: the functions inlined at `pc` (a link address,
        already pc - 1 for a return address), then the function holding
        them, each with its file:line; [] when the DWARF does not say."""
        cu_off = self.cu_offset(pc)
        if cu_off is None:
            return []
        cu = self._cu(cu_off)
        if cu is None:
            return []
        scopes: list[list[Any]] = []
        for root in cu.roots_at(pc):
            found = self._root_scopes(cu_off, root)
            if found is None:
                return []
            scopes += found
        return cu.lookup(pc, scopes)

    def _root_scopes(self, cu_off: int, root: int) -> list[list[Any]] | None:
        """The scopes of the top-level DIE at `root` and those nested in it:
        [lo, hi, depth, name, call file index, call line], from the cache or
        decoded; None when its DWARF cannot be decoded."""
        key = (cu_off, root)
        if key in self._scopes:
            return self._scopes[key]
        name = f"srclines-{cu_off:x}-{root:x}"
        source = indexcache.source_digest(
            CACHE_VERSION, f"{cu_off}:{root}".encode(), self._identity()
        )
        scopes: list[list[Any]] | None = None
        raw = indexcache.load(self.cache_key, name, source)
        if raw is not None:
            try:
                scopes = json.loads(raw)
            except ValueError:
                scopes = None
        if not isinstance(scopes, list):
            try:
                scopes = self._decode_root(cu_off, root)
            except KvmcoreError as exc:
                self.error = str(exc)
                scopes = None
            except Exception as exc:  # pyelftools raises many kinds on bad input
                self.error = f"cannot decode the DWARF at {root:#x} (CU {cu_off:#x}): {exc}"
                scopes = None
            if scopes is not None:
                indexcache.store(self.cache_key, name, source, json.dumps(scopes).encode())
        self._scopes[key] = scopes
        return scopes

    def _cu(self, offset: int) -> _CuLines | None:
        if offset in self._cus:
            return self._cus[offset]
        name = f"srclines-{offset:x}"
        source = indexcache.source_digest(CACHE_VERSION, str(offset).encode(), self._identity())
        cu: _CuLines | None = None
        raw = indexcache.load(self.cache_key, name, source)
        if raw is not None:
            try:
                cu = _CuLines.from_bytes(raw)
            except (ValueError, KeyError, TypeError, struct.error, zlib.error):
                cu = None
        if cu is None:
            try:
                cu = self._decode(offset)
            except KvmcoreError as exc:
                self.error = str(exc)
                cu = None
            except Exception as exc:  # pyelftools raises many kinds on bad input
                self.error = f"cannot decode the DWARF of CU {offset:#x}: {exc}"
                cu = None
            if cu is not None:
                self.decoded += 1
                indexcache.store(self.cache_key, name, source, cu.to_bytes())
        self._cus[offset] = cu
        return cu

    def _identity(self) -> bytes:
        """What ties a cached CU to this file besides the cache key: its size."""
        try:
            return str(os.path.getsize(self.path)).encode()
        except OSError:
            return b""

    # -- decoding (pyelftools) ---------------------------------------------------
    def dwarf(self) -> Any:
        if self._dwarf is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open for pyelftools)
            elf = mapped_elf_file(self._file)
            if not elf.has_dwarf_info():
                raise KvmcoreError("no DWARF", self.path)
            self._dwarf = elf.get_dwarf_info(relocate_dwarf_sections=elf["e_type"] == "ET_REL")
        return self._dwarf

    def _decode(self, offset: int) -> _CuLines:
        dwarf = self.dwarf()
        cu = dwarf.get_CU_at(offset)
        top = cu.get_top_DIE()
        files: list[str] = []
        rows: list[list[int]] = []
        program = dwarf.line_program_for_CU(cu)
        file_base = 0
        if program is not None:
            files, file_base = _file_names(program, top)
            little = dwarf.config.little_endian
            rows = [
                [address, -1, 0] if end else [address, file - file_base, line]
                for address, file, line, end in _program_rows(program, little)
            ]
        # a stable sort keeps a sequence's rows in order; at one address the
        # last row wins (bisect_right), as in libdw
        rows.sort(key=lambda r: r[0])
        rows = _drop_discarded(rows)
        # the top-level code scopes, not what they hold (pyelftools skips a
        # DIE's subtree by its DW_AT_sibling): a pc's own function is decoded
        # when asked for (_root_scopes), not every function of the CU
        ranges = _Ranges(dwarf, cu, top)
        roots = [
            [lo, hi, die.offset]
            for die in _code_children(dwarf, cu, top)
            for lo, hi in ranges.of(die)
            if lo < hi and lo
        ]
        return _CuLines(files, rows, roots)

    def _decode_root(self, cu_off: int, root: int) -> list[list[Any]]:
        dwarf = self.dwarf()
        cu = dwarf.get_CU_at(cu_off)
        top = cu.get_top_DIE()
        program = dwarf.line_program_for_CU(cu)
        file_base = _file_names(program, top)[1] if program is not None else 0
        scopes: list[list[Any]] = []
        die = cu.get_DIE_from_refaddr(root)
        self._scope(die, 0, scopes, _Ranges(dwarf, cu, top), {}, file_base)
        return scopes

    def _walk(
        self,
        parent: Any,
        depth: int,
        scopes: list[list[Any]],
        ranges: _Ranges,
        names: dict[int, str | None],
        file_base: int,
    ) -> None:
        if depth > MAX_DEPTH:
            return
        for die in parent.iter_children():
            if die.tag in _CODE_TAGS:
                self._scope(die, depth, scopes, ranges, names, file_base)

    def _scope(
        self,
        die: Any,
        depth: int,
        scopes: list[list[Any]],
        ranges: _Ranges,
        names: dict[int, str | None],
        file_base: int,
    ) -> None:
        """The scopes of code DIE `die` (found at `depth`) and of those in it."""
        tag = die.tag
        spans = ranges.of(die)
        if not spans:
            return  # no code: an abstract instance or a declaration
        inner = depth
        if tag != "DW_TAG_lexical_block":
            inner = depth + 1 if tag == "DW_TAG_inlined_subroutine" else 0
            name = _die_name(die, names)
            at = die.attributes
            cf = at.get("DW_AT_call_file")
            call_file = cf.value - file_base if cf is not None else -1
            call_line = at["DW_AT_call_line"].value if "DW_AT_call_line" in at else 0
            for lo, hi in spans:
                if lo < hi and lo:
                    scopes.append([lo, hi, inner, name, call_file, call_line])
        self._walk(die, inner, scopes, ranges, names, file_base)


def _code_children(dwarf: Any, cu: Any, top: Any) -> list[Any]:
    """The CU DIE's children that are code scopes (functions), as pyelftools
    DIEs: found by kvmcore.unwind.dwarfscan, which skips the rest of the unit
    undecoded, else by pyelftools' own walk."""
    # here, not at the top: it imports pyelftools' DWARF enums (~10 ms), which a
    # backtrace without DWARF never needs
    from ..symbols.dwarfscan import Unscannable, code_die_offsets

    try:
        stream = dwarf.debug_info_sec.stream
        stream.seek(cu.cu_offset)
        data = stream.read(cu.size)
        offsets = code_die_offsets(cu, data, _CODE_TAGS)
    except Unscannable:
        return [die for die in top.iter_children() if die.tag in _CODE_TAGS]
    return [cu.get_DIE_from_refaddr(off) for off in offsets]


def _program_rows(program: Any, little: bool) -> list[tuple[int, int, int, bool]]:
    """(address, file, line, end_sequence) of each row of a CU's line program:
    run by kvmcore.unwind.linetable, or by pyelftools where that declines."""
    start, end = program.program_start_offset, program.program_end_offset
    try:
        program.stream.seek(start)
        return line_rows(program.stream.read(end - start), program.header, little)
    except Declined:
        pass
    out = []
    for entry in program.get_entries():
        state = entry.state
        if state is not None:
            out.append((state.address, state.file, state.line, bool(state.end_sequence)))
    return out


def _drop_discarded(rows: list[list[int]]) -> list[list[int]]:
    """Sequences of code the linker discarded sit at address 0: drop rows
    below the first real address, keeping the order of the rest."""
    return [r for r in rows if r[0]]


def _file_names(program: Any, top: Any) -> tuple[list[str], int]:
    """The line program's file names as paths (the directory joined on, as
    drgn and gdb show them), and the index of the first file (1 before DWARF 5)."""
    header = program.header
    version = header["version"]
    dirs = [d.decode("utf-8", "replace") for d in header["include_directory"]]
    comp_dir_attr = top.attributes.get("DW_AT_comp_dir")
    comp_dir = comp_dir_attr.value.decode("utf-8", "replace") if comp_dir_attr else ""
    if version < 5:
        dirs = [comp_dir, *dirs]
    out = []
    for entry in header["file_entry"]:
        name = entry.name.decode("utf-8", "replace")
        d = entry.dir_index
        if not name.startswith("/") and 0 < d < len(dirs):
            name = f"{dirs[d]}/{name}"
        elif not name.startswith("/") and d == 0 and version < 5 and comp_dir:
            name = f"{comp_dir}/{name}"
        out.append(os.path.normpath(name) if name else name)
    return out, (0 if version >= 5 else 1)


def _die_name(die: Any, names: dict[int, str | None], hops: int = 0) -> str | None:
    hit = names.get(die.offset, "")
    if hit != "":
        return hit
    at = die.attributes
    name = None
    if "DW_AT_name" in at:
        name = at["DW_AT_name"].value.decode("utf-8", "replace")
    elif hops < 8:
        for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if ref in at:
                try:
                    target = die.get_DIE_from_attribute(ref)
                except Exception:  # a reference pyelftools cannot follow
                    break
                name = _die_name(target, names, hops + 1)
                break
    names[die.offset] = name
    return name


class _Ranges:
    """A DIE's code ranges: DW_AT_low_pc/high_pc or DW_AT_ranges."""

    def __init__(self, dwarf: Any, cu: Any, top: Any) -> None:
        self.dwarf = dwarf
        self.cu = cu
        low = top.attributes.get("DW_AT_low_pc")
        self.base = low.value if low is not None else 0
        self._lists: Any = None

    def of(self, die: Any) -> list[tuple[int, int]]:
        at = die.attributes
        low = at.get("DW_AT_low_pc")
        if low is not None:
            high = at.get("DW_AT_high_pc")
            if high is None:
                return [(low.value, low.value + 1)]
            if high.form == "DW_FORM_addr":
                return [(low.value, high.value)]
            return [(low.value, low.value + high.value)]
        rng = at.get("DW_AT_ranges")
        if rng is None:
            return []
        if self._lists is None:
            self._lists = self.dwarf.range_lists()
            if self._lists is None:
                return []
        out = []
        base = self.base
        for entry in self._lists.get_range_list_at_offset(rng.value, cu=self.cu):
            if hasattr(entry, "base_address"):
                base = entry.base_address
            elif entry.is_absolute:
                out.append((entry.begin_offset, entry.end_offset))
            else:
                out.append((base + entry.begin_offset, base + entry.end_offset))
        return out


def parse_aranges(data: bytes, little: bool = True) -> list[tuple[int, int, int]]:
    """(start, end, CU offset) of every range in a `.debug_aranges` section."""
    e = "<" if little else ">"
    out: list[tuple[int, int, int]] = []
    off, n = 0, len(data)
    while off + 4 <= n:
        (length,) = struct.unpack_from(e + "I", data, off)
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from(e + "Q", data, off + 4)
            head, offset_fmt = off + 12, "Q"
        else:
            head, offset_fmt = off + 4, "I"
        end = head + length
        if length < 4 or end > n:
            break
        _version, cu_off = struct.unpack_from(e + "H" + offset_fmt, data, head)
        pos = head + 2 + struct.calcsize(offset_fmt)
        address_size, segment_size = data[pos], data[pos + 1]
        pos += 2
        if address_size not in (4, 8) or segment_size:
            off = end
            continue
        tuple_size = 2 * address_size
        pos = off + -(-(pos - off) // tuple_size) * tuple_size  # aligned from the unit's start
        fmt = e + ("QQ" if address_size == 8 else "II")
        count = (end - pos) // tuple_size
        for start, size in struct.iter_unpack(fmt, data[pos : pos + count * tuple_size]):
            if start == 0 and size == 0:
                break
            if start and size:
                out.append((start, start + size, cu_off))
        off = end
    return out


# -- backtraces --------------------------------------------------------------------
_CACHE_KEY = "srclines"


def vmlinux_index(dump: Dump) -> SourceIndex | None:
    """The dump's vmlinux source index (built on first use, kept by the dump),
    or None without a usable vmlinux."""
    cache = dump.layer_cache
    if _CACHE_KEY in cache:
        cached: SourceIndex | None = cache[_CACHE_KEY]
        return cached
    index = None
    if dump.vmlinux and dump.os == "linux":
        info = dump.vmcoreinfo
        build_id = info.build_id.lower() if info is not None and info.build_id else None
        try:
            index = SourceIndex.for_vmlinux(dump.vmlinux, build_id)
        except KvmcoreError:
            index = None
        if index is not None:
            index.text_ranges = _text_ranges(dump.vmlinux)
    cache[_CACHE_KEY] = index
    return index


def _text_ranges(path: str) -> list[tuple[int, int]]:
    from ..symbols.vmlinux import VmlinuxFile

    image = VmlinuxFile(path)
    try:
        return [
            (s.addr, s.addr + s.size)
            for s in image.sections
            if s.flags & SHF_ALLOC and s.flags & SHF_EXECINSTR and s.size
        ]
    finally:
        image.close()


def frame_is_exact(frame: Any) -> bool:
    """Whether a frame's pc is the interrupted instruction (the first frame,
    or one entered through saved registers) rather than a return address."""
    return frame.method == "registers" or frame.regs is not None


def annotate(dump: Dump, bt: Backtrace) -> None:
    """Give each frame of `bt` its file:line and the functions inlined at its
    pc, from the vmlinux's DWARF (and modules' debug files, when given)."""
    from .model import InlinedFrame
    from .modlines import module_lines

    index = vmlinux_index(dump)
    modules = module_lines(dump)
    if index is None and modules is None:
        return
    try:
        offset = dump.kernel_offset
    except KvmcoreError:
        return
    for frame in bt.frames:
        pc = frame.pc if frame_is_exact(frame) else frame.pc - 1
        found: list[SourceLine] = []
        if frame.module:
            if modules is not None:
                found = modules.lookup(frame.module, pc)
        elif index is not None:
            link = (pc - offset) & 0xFFFFFFFFFFFFFFFF
            ranges = index.text_ranges
            if not ranges or any(lo <= link < hi for lo, hi in ranges):
                found = index.lookup(link)
        if not found:
            continue
        outer = found[-1]
        frame.file, frame.line = outer.file, outer.line
        frame.inlined = [InlinedFrame(s.function or "?", s.file, s.line) for s in found[:-1]]
