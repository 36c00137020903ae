"""BTF (BPF Type Format) reader: the kernel's compact type table.

Layout (include/uapi/linux/btf.h): a header {u16 magic 0xeB9F, u8 version,
u8 flags, u32 hdr_len, u32 type_off, u32 type_len, u32 str_off, u32 str_len}
(offsets counted from the end of the header), then the type section: per
type {u32 name_off, u32 info (vlen bits 0-15, kind bits 24-28, kind_flag bit
31), u32 size_or_type} followed by kind-specific records. Type ids count from
1; id 0 is void. One pass records where each type starts (a tight loop over
the section as u32 words); names are found by searching the string section
for the name and then the types that point at that string, so no name is
decoded until asked for, and types are decoded only when asked for.
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from collections.abc import Hashable

from .. import indexcache
from ..errors import TypeInfoError
from .model import VOID, Member, Type

BTF_MAGIC = 0xEB9F
KINDS = {
    1: "int",
    2: "ptr",
    3: "array",
    4: "struct",
    5: "union",
    6: "enum",
    7: "fwd",
    8: "typedef",
    9: "volatile",
    10: "const",
    11: "restrict",
    12: "func",
    13: "func_proto",
    14: "var",
    15: "datasec",
    16: "float",
    17: "decl_tag",
    18: "type_tag",
    19: "enum64",
}
# bytes of kind-specific data after the 12-byte common record: (fixed, per vlen)
_EXTRA = {
    1: (4, 0),
    3: (12, 0),
    4: (0, 12),
    5: (0, 12),
    6: (0, 8),
    13: (0, 8),
    14: (4, 0),
    15: (0, 12),
    17: (4, 0),
    19: (0, 12),
}
# kinds whose names go into the lookup index, under the name space C uses
_INDEXED = {
    1: "base",
    16: "base",
    4: "struct",
    5: "union",
    6: "enum",
    19: "enum",
    7: "fwd",
    8: "typedef",
    12: "func",
    14: "var",
}
MAX_TYPES = 5_000_000


def _little_endian(words: array[int]) -> array[int]:
    """`words` as stored in the cache (little-endian), or back; swapped in place."""
    if sys.byteorder != "little":
        words.byteswap()
    return words


#: the type scan in the build-id index cache (kvmcore.indexcache)
CACHE_NAME = "btf-scan.v3"
# record size in u32 words after the 3-word common part, by kind: fixed + per * vlen;
# an unknown kind jumps past any section so that the scan stops and says so
_UNKNOWN_STEP = 1 << 40
_FIXED_WORDS = [(_EXTRA.get(k, (0, 0))[0] // 4 if k in KINDS else _UNKNOWN_STEP) for k in range(32)]
_PER_WORDS = [_EXTRA.get(k, (0, 0))[1] // 4 for k in range(32)]


class BtfTypes:
    """Types of one BTF blob. `origin` says where the blob came from."""

    name = "btf"

    def __init__(
        self,
        blob: bytes,
        word_size: int = 8,
        origin: str | None = None,
        build_id: str | None = None,
    ) -> None:
        """`build_id` (the kernel's) lets the type scan be kept in the
        on-disk index cache (kvmcore.indexcache)."""
        self.blob = blob
        self.build_id = build_id
        self.word_size = word_size
        self.origin = origin
        if len(blob) < 24:
            raise TypeInfoError("BTF blob shorter than its header", origin)
        if int.from_bytes(blob[:2], "little") == BTF_MAGIC:
            self._e = "<"
        elif int.from_bytes(blob[:2], "big") == BTF_MAGIC:
            self._e = ">"
        else:
            raise TypeInfoError(f"bad BTF magic {blob[:2].hex()}", origin)
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(self._e + "5I", blob, 4)
        self.version = blob[2]
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(blob) or s0 + str_len > len(blob):
            raise TypeInfoError("BTF sections extend past the end of the blob", origin)
        self._strings = blob[s0 : s0 + str_len]
        self._t0 = t0
        self._cache: dict[int, Type] = {0: VOID}
        self._enum_ids: list[int] | None = None
        self._enumerator_index: dict[str, tuple[int, int]] | None = None
        self._lookups: dict[tuple[str, str], int | None] = {}
        self._scan(t0, type_len)

    # -- pass one ----------------------------------------------------------
    def _scan(self, t0: int, type_len: int) -> None:
        """Record each type's start (in u32 words from the section start)
        and sort the types by name offset, or take both from the cache."""
        if type_len % 4:
            raise TypeInfoError("BTF type section does not end on a record boundary", self.origin)
        section = self.blob[t0 : t0 + type_len]
        words = array("I", section)
        if (self._e == "<") != (sys.byteorder == "little"):
            words.byteswap()
        build_id = self.build_id if indexcache.enabled() else None
        scan = None
        if build_id:
            source = indexcache.source_digest(section)
            scan = self._cached_scan(indexcache.load(build_id, CACHE_NAME, source), words)
        if scan is None:
            scan = self._index(self._walk(words, t0), words, self._strings)
            if build_id:
                indexcache.store(
                    build_id,
                    CACHE_NAME,
                    source,
                    b"".join(_little_endian(array("I", part)).tobytes() for part in scan),
                )
        self._words = words
        # id -> start word (id 0 is void); type name offsets sorted, and the
        # type ids in that order (ascending among equal names)
        self._starts, self._sorted_name_offs, self._ids_by_name = scan

    @staticmethod
    def _index(
        starts: list[int], words: array[int], strings: bytes
    ) -> tuple[array[int], array[int], array[int]]:
        """(type starts with void first, name offsets sorted by the names they
        point at, the type ids in that order: ascending among equal names),
        so that a lookup is a binary search by name, not a scan of the string
        section for it."""
        name_offs = list(map(words.__getitem__, starts))
        text = strings.decode("latin-1")
        names: dict[int, str] = {}
        for off in set(name_offs):
            end = text.find("\0", off)
            names[off] = text[off:end] if end >= 0 else text[off:]
        order = sorted(range(len(starts)), key=lambda i: names[name_offs[i]])
        return (
            array("I", [0] + starts),
            array("I", map(name_offs.__getitem__, order)),
            array("I", map((1).__add__, order)),
        )

    def _walk(self, words: array[int], t0: int) -> list[int]:
        n = len(words)
        starts: list[int] = []
        append = starts.append
        fixed, per = _FIXED_WORDS, _PER_WORDS
        i = 0
        try:
            while i < n:
                append(i)
                info = words[i + 1]
                kind = info >> 24 & 0x1F
                i += 3 + fixed[kind] + per[kind] * (info & 0xFFFF)
        except IndexError:
            i = n + 1  # the last record is cut short
        if starts and i > n:
            last_kind = words[starts[-1] + 1] >> 24 & 0x1F if starts[-1] + 1 < n else None
            if last_kind is not None and last_kind not in KINDS:
                raise TypeInfoError(
                    f"unknown BTF kind {last_kind} at offset {t0 + 4 * starts[-1]:#x}", self.origin
                )
        if i != n:
            raise TypeInfoError("BTF type section does not end on a record boundary", self.origin)
        if len(starts) > MAX_TYPES:
            raise TypeInfoError(f"more than {MAX_TYPES} BTF types", self.origin)
        return starts

    @staticmethod
    def _cached_scan(
        payload: bytes | None, words: array[int]
    ) -> tuple[array[int], array[int], array[int]] | None:
        """The scan from the cache, if the payload is plausible for `words`
        (the source hash already matched; this guards against our own bugs).
        Payload: starts with void (n + 1 u32), name offsets (n), ids (n)."""
        if payload is None or len(payload) % 4:
            return None
        total = len(payload) // 4
        n = (total - 1) // 3
        if total != 3 * n + 1 or not 0 < n <= MAX_TYPES:
            return None
        flat = _little_endian(array("I", payload))
        starts, names, ids = flat[: n + 1], flat[n + 1 : 2 * n + 1], flat[2 * n + 1 :]
        last = starts[-1]
        if (
            starts[0] != 0
            or starts[1] != 0
            or last + 1 >= len(words)
            or min(ids) < 1
            or max(ids) > n
        ):
            return None
        info = words[last + 1]
        kind = info >> 24 & 0x1F
        if kind not in KINDS or last + 3 + _FIXED_WORDS[kind] + _PER_WORDS[kind] * (
            info & 0xFFFF
        ) != len(words):
            return None
        return starts, names, ids

    def _str(self, off: int) -> str:
        stop = self._strings.find(b"\0", off)
        return self._strings[off : stop if stop >= 0 else len(self._strings)].decode("latin-1")

    def __len__(self) -> int:
        return len(self._starts) - 1

    def _kind(self, tid: int) -> int:
        return self._words[self._starts[tid] + 1] >> 24 & 0x1F

    def kind_of(self, tid: int) -> str | None:
        """The BTF kind name of type `tid` ("struct", "func", ...), from its
        header only; None for void (0) or an id out of range."""
        if not 0 < tid < len(self._starts):
            return None
        return KINDS.get(self._kind(tid))

    def int_encoding(self, tid: int) -> int:
        """An int type's BTF_INT_ENCODING bits (1 signed, 2 char, 4 bool);
        0 for any other kind."""
        if self.kind_of(tid) != "int":
            return 0
        return self._words[self._starts[tid] + 3] >> 24 & 0x0F

    def array_index_type(self, tid: int) -> int:
        """An array type's index type id (BTF keeps it; the model does not);
        0 for any other kind."""
        if self.kind_of(tid) != "array":
            return 0
        return self._words[self._starts[tid] + 4]

    def names(self, space: str) -> list[str]:
        """Sorted names of the named types of one C name space ("struct",
        "union", "enum", "typedef"), for completion; from the type headers
        only (each type's first word is its name's offset)."""
        kinds = {k for k, v in _INDEXED.items() if v == space}
        words, starts = self._words, self._starts
        out = {
            self._str(words[starts[tid]])
            for tid in range(1, len(starts))
            if (words[starts[tid] + 1] >> 24 & 0x1F) in kinds and words[starts[tid]]
        }
        return sorted(out)

    def _ids_named(self, name: str) -> list[int]:
        """Type ids called `name`, ascending."""
        offs, key = self._sorted_name_offs, self._str
        lo = bisect.bisect_left(offs, name, key=key)
        hi = bisect.bisect_right(offs, name, lo, key=key)
        return list(self._ids_by_name[lo:hi])

    # -- decoding ----------------------------------------------------------
    def type_by_id(self, tid: Hashable) -> Type | None:
        if not isinstance(tid, int) or not 0 <= tid < len(self._starts):
            return None
        return self._type(tid)

    def _type(self, tid: int) -> Type:
        """Type `tid`, a valid id, decoded once."""
        t = self._cache.get(tid)
        if t is None:
            t = self._decode(tid)
            self._cache[tid] = t
        return t

    def _decode(self, tid: int) -> Type:
        e, blob, pos = self._e, self.blob, self._t0 + 4 * self._starts[tid]
        name_off, info, sz = struct.unpack_from(e + "III", blob, pos)
        kind_no = (info >> 24) & 0x1F
        kind, vlen, kflag = KINDS[kind_no], info & 0xFFFF, info >> 31
        name = self._str(name_off) if name_off else None
        body = pos + 12
        r = self.type_by_id
        if kind == "int":
            (enc,) = struct.unpack_from(e + "I", blob, body)
            return Type(
                "int",
                name,
                sz,
                key=tid,
                signed=bool((enc >> 24) & 1),
                bit_size=enc & 0xFF,
                resolve=r,
            )
        if kind == "float":
            return Type("float", name, sz, key=tid, resolve=r)
        if kind == "ptr":
            return Type("ptr", None, self.word_size, key=tid, target_key=sz, resolve=r)
        if kind == "array":
            elem, _index_type, nelems = struct.unpack_from(e + "III", blob, body)
            return Type("array", None, None, key=tid, target_key=elem, length=nelems, resolve=r)
        if kind in ("struct", "union"):
            members = []
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from(e + "III", blob, body + 12 * i)
                bits, off = (m_off >> 24, m_off & 0xFFFFFF) if kflag else (0, m_off)
                members.append(Member(self._str(m_name) if m_name else None, m_type, off, bits, r))
            return Type(kind, name, sz, key=tid, members=members, resolve=r)
        if kind in ("enum", "enum64"):
            values: dict[str, int] = {}
            signed = bool(kflag)
            for i in range(vlen):
                if kind == "enum":
                    n_off, val = struct.unpack_from(
                        e + ("Ii" if signed else "II"), blob, body + 8 * i
                    )
                else:
                    n_off, lo, hi = struct.unpack_from(e + "III", blob, body + 12 * i)
                    val = (hi << 32) | lo
                    if signed and val >> 63:
                        val -= 1 << 64
                values[self._str(n_off)] = val
            return Type("enum", name, sz, key=tid, enumerators=values, signed=signed, resolve=r)
        if kind == "fwd":
            return Type(
                "fwd", name, None, key=tid, resolve=r, enumerators={"union": 1} if kflag else {}
            )
        if kind in (
            "typedef",
            "volatile",
            "const",
            "restrict",
            "type_tag",
            "func",
            "var",
            "decl_tag",
        ):
            model_kind = "func" if kind == "func" else kind
            return Type(model_kind, name, None, key=tid, target_key=sz, resolve=r)
        if kind == "func_proto":
            params = []
            for i in range(vlen):
                p_name, p_type = struct.unpack_from(e + "II", blob, body + 8 * i)
                params.append(Member(self._str(p_name) if p_name else None, p_type, 0, 0, r))
            return Type("func_proto", None, None, key=tid, target_key=sz, members=params, resolve=r)
        if kind == "datasec":
            vars_ = []
            for i in range(vlen):
                v_type, v_off, _v_size = struct.unpack_from(e + "III", blob, body + 12 * i)
                vars_.append(Member(None, v_type, v_off * 8, 0, r))
            return Type("datasec", name, sz, key=tid, members=vars_, resolve=r)
        raise TypeInfoError(f"BTF kind {kind} of type {tid} not decoded", self.origin)

    # -- lookups -----------------------------------------------------------
    def lookup(self, space: str, name: str) -> Type | None:
        """A named type: space is struct, union, enum, typedef, base, func, var.
        A complete definition wins over a forward declaration."""
        key = (space, name)
        if key in self._lookups:
            tid = self._lookups[key]
        else:
            tid = None
            if name:
                for cand in self._ids_named(name):
                    if _INDEXED.get(self._kind(cand)) == space:
                        tid = cand
                        break
            self._lookups[key] = tid
        return None if tid is None else self.type_by_id(tid)

    def find_enumerator(self, name: str) -> tuple[Type, int] | None:
        if self._enumerator_index is None:
            if self._enum_ids is None:
                self._enum_ids = [
                    tid for tid in range(1, len(self._starts)) if self._kind(tid) in (6, 19)
                ]
            idx: dict[str, tuple[int, int]] = {}
            for tid in self._enum_ids:
                t = self._type(tid)
                for key, val in t.enumerators.items():
                    idx.setdefault(key, (tid, val))
            self._enumerator_index = idx
        hit = self._enumerator_index.get(name)
        return (self._type(hit[0]), hit[1]) if hit else None
