"""kallsyms decoded from the dump's own memory.

VMCOREINFO (Linux 6.0+) gives the addresses of the kernel's compressed
symbol table. Layout (as built by scripts/kallsyms.c):

* ``kallsyms_num_syms``: symbol count (unsigned int; unsigned long before 6.x
  but the low half reads the same on little-endian machines).
* ``kallsyms_names``: one entry per symbol: a length byte (when its top bit
  is set, a second byte holds bits 7..14: "big symbols", 6.1+), then that
  many token indexes. The expanded text's first char is the nm type letter.
* ``kallsyms_token_table``: 256 NUL-terminated strings back to back;
  ``kallsyms_token_index``: 256 u16 offsets into it.
* ``kallsyms_offsets`` (s32 each) + ``kallsyms_relative_base`` with
  KALLSYMS_BASE_RELATIVE: address = base + (u32)offset, except with
  KALLSYMS_ABSOLUTE_PERCPU (x86_64 SMP) where a non-negative offset is an
  absolute value and a negative one means base - 1 - offset. Older kernels
  store ``kallsyms_addresses`` (unsigned long each) instead.
"""

from __future__ import annotations

import re
import struct
from itertools import compress
from operator import itemgetter
from typing import TYPE_CHECKING

from .. import indexcache
from ..errors import KvmcoreError, SymbolError
from .frozen import FrozenSymbols
from .table import SymbolColumns

if TYPE_CHECKING:
    from ..dump import Dump
    from ..notes import VmcoreInfo

MAX_SYMBOLS = 2_000_000
MAX_NAMES_BYTES = 64 << 20
#: the expanded names in the build-id index cache (kvmcore.indexcache)
CACHE_NAME = "kallsyms-names.v1"


def _need(dump: Dump, name: str) -> int:
    info = dump.vmcoreinfo
    addr = info.symbol(name) if info else None
    if addr is None:
        raise SymbolError(
            f"VMCOREINFO has no SYMBOL({name}): cannot decode kallsyms "
            "(needs Linux 6.0+ or a vmlinux/System.map)",
            dump.path,
        )
    return addr


def _info(dump: Dump) -> VmcoreInfo:
    """The dump's VMCOREINFO, for decoders that run once _need found a symbol in it."""
    info = dump.vmcoreinfo
    if info is None:
        raise SymbolError("no VMCOREINFO: cannot decode kallsyms", dump.path)
    return info


def _read(dump: Dump, addr: int, length: int, what: str) -> bytes:
    try:
        return dump.read(addr, length)
    except KvmcoreError as exc:
        raise SymbolError(f"cannot read {what} at {addr:#x}: {exc.message}", dump.path) from None


def read_tokens(dump: Dump) -> list[bytes]:
    """The 256 tokens names are expanded from, read once per open dump."""
    tokens = dump.layer_cache.get(_TOKENS)
    if tokens is None:
        tokens = dump.layer_cache[_TOKENS] = _read_tokens(dump)
    return tokens


_TOKENS = "kallsyms-tokens"


def _read_tokens(dump: Dump) -> list[bytes]:
    index_addr = _need(dump, "kallsyms_token_index")
    table_addr = _need(dump, "kallsyms_token_table")
    index = struct.unpack(dump._e + "256H", _read(dump, index_addr, 512, "kallsyms_token_index"))
    table = _read(dump, table_addr, max(index) + 256, "kallsyms_token_table")
    tokens = []
    for off in index:
        end = table.find(b"\0", off)
        if end < 0:
            raise SymbolError("kallsyms token table is not NUL-terminated", dump.path)
        tokens.append(table[off:end])
    return tokens


def _read_num_syms(dump: Dump) -> int:
    addr = _need(dump, "kallsyms_num_syms")
    n = dump.read_u32(addr)
    if n == 0 and dump.byteorder == "big" and dump.word_size == 8:
        n = dump.read_u64(addr)
    if not 0 < n <= MAX_SYMBOLS:
        raise SymbolError(f"kallsyms_num_syms={n} is implausible", dump.path)
    return n


def _names_bytes(dump: Dump, num: int) -> bytes:
    key = f"kallsyms-names-bytes:{num}"
    data = dump.layer_cache.get(key)
    if data is None:
        data = dump.layer_cache[key] = _read_names_bytes(dump, num)
    return data


def _read_names_bytes(dump: Dump, num: int) -> bytes:
    names_addr = _need(dump, "kallsyms_names")
    # The names end before kallsyms_markers, which the linker places before
    # the token table; read up to there when it lies after the names.
    info = _info(dump)
    limit = (info.symbol("kallsyms_token_table") or 0) - names_addr
    if not 0 < limit <= MAX_NAMES_BYTES:
        limit = min(num * 64, MAX_NAMES_BYTES)
    return _read(dump, names_addr, limit, "kallsyms_names")


def _entry_starts(data: bytes, num: int, path: str) -> list[int]:
    """Where each entry's length prefix starts, plus where the last one ends."""
    starts = [0] * (num + 1)
    pos = 0
    size = len(data)
    for i in range(num):
        if pos >= size:
            raise SymbolError(f"kallsyms_names ends after {i} of {num} symbols", path)
        starts[i] = pos
        length = data[pos]
        if length & 0x80:  # "big symbol": a second byte holds bits 7..14
            if pos + 1 >= size:
                raise SymbolError(f"kallsyms_names ends after {i} of {num} symbols", path)
            pos += 2 + ((length & 0x7F) | (data[pos + 1] << 7))
        else:
            pos += 1 + length
    starts[num] = min(pos, size)  # a last name cut short decodes as far as it goes
    return starts


def _expanded_text(dump: Dump, num: int, tokens: list[bytes]) -> str:
    """Every symbol's expanded text (type letter, then name), each preceded
    by a newline; from the build-id cache when it holds the expansion of
    exactly these bytes."""
    data = _names_bytes(dump, num)
    info = dump.vmcoreinfo
    build_id = info.build_id if info is not None and indexcache.enabled() else None
    if build_id:
        source = indexcache.source_digest(num.to_bytes(4, "little"), b"\0".join(tokens), data)
        cached = indexcache.load(build_id, CACHE_NAME, source)
        if cached is not None:
            text = cached.decode("latin-1")
            if text.count("\n") == num:
                return text
    text = _expand(data, num, tokens, dump.path)
    if build_id:
        indexcache.store(build_id, CACHE_NAME, source, text.encode("latin-1"))
    return text


def _expand(data: bytes, num: int, tokens: list[bytes], path: str) -> str:
    starts = _entry_starts(data, num, path)
    if any(b"\n" in t for t in tokens):
        raise SymbolError("a kallsyms token holds a newline: not a symbol table", path)
    # Expand every byte through the token table at once, with each entry's
    # length prefix expanding to a newline instead: one join, one split
    # (per-symbol joins cost 5x more; str.join beats bytes.join several times).
    text_tokens = [t.decode("latin-1") for t in tokens]
    parts = list(map(text_tokens.__getitem__, data[: starts[num]]))
    for pos in starts[:num]:
        parts[pos] = "\n"
        if data[pos] & 0x80:
            parts[pos + 1] = ""
    return "".join(parts)


def _decode_one(dump: Dump, index: int, absolute_percpu: bool) -> int:
    """decode_addresses(...)[index], reading one entry."""
    info = _info(dump)
    mask = (1 << (dump.word_size * 8)) - 1
    if info.symbol("kallsyms_offsets") is None and info.symbol("kallsyms_addresses") is not None:
        return dump.read_ptr(_need(dump, "kallsyms_addresses") + index * dump.word_size)
    raw = _read(dump, _need(dump, "kallsyms_offsets") + 4 * index, 4, "kallsyms_offsets")
    (off,) = struct.unpack(f"{dump._e}i", raw)
    base_addr = info.symbol("kallsyms_relative_base")
    base = dump.read_ptr(base_addr) if base_addr is not None else (info.symbol("_text") or 0)
    if not absolute_percpu:
        return (base + (off & 0xFFFFFFFF)) & mask
    return off if off >= 0 else (base - 1 - off) & mask


def stext_address(dump: Dump) -> int:
    """`_stext`'s address as read_kallsyms_columns decodes it (the first
    symbol of that name, its address mode confirmed by VMCOREINFO's
    SYMBOL(_stext)), decoding one address instead of every one: the KASLR
    check needs only this when a vmlinux gives the symbols."""
    cols = dump.layer_cache.get(_MEMO)
    if cols is None:
        num = _read_num_syms(dump)
        found = _stext_entry(dump, num, read_tokens(dump))
        if found is not None and found[1] == "T":
            absolute = dump.arch.kallsyms_absolute_percpu
            index = found[0]
            addr = _decode_one(dump, index, absolute)
            stext = _info(dump).symbol("_stext")
            if stext is None or addr == stext:
                return addr
            if _decode_one(dump, index, not absolute) == stext:
                return stext
            raise SymbolError(
                f"kallsyms decodes _stext to {addr:#x}, VMCOREINFO says {stext:#x}", dump.path
            )
        cols = read_kallsyms_columns(dump)  # no T _stext: as the whole table says
    return cols.addresses[cols.names.index("_stext")]


#: the first entry named _stext in the expanded text, and its type letter
_FIRST_STEXT = re.compile(r"\n(.)_stext(?=\n|$)")
#: (index, type letter) of the first _stext entry in the build-id index cache
STEXT_CACHE_NAME = "kallsyms-stext.v1"


def _stext_entry(dump: Dump, num: int, tokens: list[bytes]) -> tuple[int, str] | None:
    """The index and type letter of the first kallsyms entry named _stext:
    kept per build, since finding it means expanding every name."""
    info = dump.vmcoreinfo
    build_id = info.build_id if info is not None and indexcache.enabled() else None
    source = None
    if build_id:
        source = indexcache.source_digest(
            STEXT_CACHE_NAME.encode(),
            num.to_bytes(4, "little"),
            b"\0".join(tokens),
            _names_bytes(dump, num),
        )
        cached = indexcache.load(build_id, STEXT_CACHE_NAME, source)
        if cached is not None:
            index, _, letter = cached.decode("latin-1").partition(" ")
            if index.isdigit() and int(index) < num and len(letter) == 1:
                return int(index), letter
    text = _expanded_text(dump, num, tokens)
    first = _FIRST_STEXT.search(text)
    if first is None:
        return None
    found = text.count("\n", 0, first.start() + 1) - 1, first[1]
    if source is not None:
        indexcache.store(build_id, STEXT_CACHE_NAME, source, f"{found[0]} {found[1]}".encode())
    return found


def decode_addresses(dump: Dump, num: int, absolute_percpu: bool) -> list[int]:
    info = _info(dump)
    mask = (1 << (dump.word_size * 8)) - 1
    if info.symbol("kallsyms_offsets") is None and info.symbol("kallsyms_addresses") is not None:
        return dump.read_ptrs(_need(dump, "kallsyms_addresses"), num)
    raw = _read(dump, _need(dump, "kallsyms_offsets"), num * 4, "kallsyms_offsets")
    offsets = struct.unpack(f"{dump._e}{num}i", raw)
    base_addr = info.symbol("kallsyms_relative_base")
    # Newest kernels dropped kallsyms_relative_base: offsets then count from _text.
    base = dump.read_ptr(base_addr) if base_addr is not None else (info.symbol("_text") or 0)
    if not absolute_percpu:
        return [(base + (off & 0xFFFFFFFF)) & mask for off in offsets]
    return [off if off >= 0 else (base - 1 - off) & mask for off in offsets]


def _address_source(dump: Dump, num: int, slide: int) -> list[bytes]:
    """What the decoded addresses less `slide` depend on: the offsets (or
    addresses) array and the link-time base, the address mode's inputs."""
    info = _info(dump)
    mask = (1 << (dump.word_size * 8)) - 1
    if info.symbol("kallsyms_offsets") is None and info.symbol("kallsyms_addresses") is not None:
        addr = _need(dump, "kallsyms_addresses")
        return [_read(dump, addr, num * dump.word_size, "kallsyms_addresses"), b"%x" % slide]
    raw = _read(dump, _need(dump, "kallsyms_offsets"), num * 4, "kallsyms_offsets")
    base_addr = info.symbol("kallsyms_relative_base")
    base = dump.read_ptr(base_addr) if base_addr is not None else (info.symbol("_text") or 0)
    stext = info.symbol("_stext")
    link = [(base - slide) & mask, ((stext - slide) & mask) if stext is not None else -1]
    return [raw, repr(link).encode()]


def kallsyms_symbols(dump: Dump, slide: int) -> FrozenSymbols:
    """Every kallsyms entry as FrozenSymbols stored `slide`-free (`slide`:
    the dump's kernel offset), from the build-id index cache when it holds
    the same kallsyms bytes at the same link-time base; else decoded."""
    info = dump.vmcoreinfo
    build_id = info.build_id if info is not None and indexcache.enabled() else None
    floor = dump.arch.kernel_start
    source = None
    if build_id:
        num = _read_num_syms(dump)
        source = indexcache.source_digest(
            FROZEN_CACHE_NAME.encode(),
            repr((num, dump.word_size, floor, dump.arch.kallsyms_absolute_percpu)).encode(),
            b"\0".join(read_tokens(dump)),
            _names_bytes(dump, num),
            *_address_source(dump, num, slide),
        )
        cached = indexcache.load(build_id, FROZEN_CACHE_NAME, source)
        frozen = FrozenSymbols.from_bytes(cached) if cached is not None else None
        if frozen is not None and frozen.word_size == dump.word_size:
            return frozen
    frozen = FrozenSymbols.freeze(read_kallsyms_columns(dump), slide, dump.word_size, floor)
    if source is not None:
        indexcache.store(build_id, FROZEN_CACHE_NAME, source, frozen.to_bytes())
    return frozen


#: the frozen symbols in the build-id index cache
FROZEN_CACHE_NAME = "kallsyms-symbols.v1"


def read_kallsyms_columns(dump: Dump) -> SymbolColumns:
    """Decode every kallsyms entry from dumped memory (runtime addresses),
    once per open dump (the KASLR check and the symbol table both need them);
    the columns are shared: read only."""
    cols = dump.layer_cache.get(_MEMO)
    if cols is None:
        cols = dump.layer_cache[_MEMO] = _decode_columns(dump)
    return cols


_MEMO = "kallsyms-columns"


def _decode_columns(dump: Dump) -> SymbolColumns:
    num = _read_num_syms(dump)
    tokens = read_tokens(dump)
    entries = _expanded_text(dump, num, tokens).split("\n")[1:]
    absolute = dump.arch.kallsyms_absolute_percpu
    addrs = decode_addresses(dump, num, absolute)
    stext = _info(dump).symbol("_stext")
    if stext is not None:
        # Confirm the address mode with _stext; flip it if the other fits.
        try:
            i = entries.index("T_stext")
        except ValueError:
            i = -1
        if i >= 0 and addrs[i] != stext:
            other = decode_addresses(dump, num, not absolute)
            if other[i] == stext:
                addrs = other
            else:
                raise SymbolError(
                    f"kallsyms decodes _stext to {addrs[i]:#x}, VMCOREINFO says {stext:#x}",
                    dump.path,
                )
    if "" in entries:  # empty entries name nothing
        keep = list(map(bool, entries))
        entries, addrs = list(compress(entries, keep)), list(compress(addrs, keep))
    return SymbolColumns(
        names=list(map(itemgetter(slice(1, None)), entries)),
        addresses=addrs,
        types=list(map(itemgetter(0), entries)),
    )
