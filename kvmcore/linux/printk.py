"""The Linux kernel log, read from the dump.

Two layouts: the lockless printk ring buffer (Linux 5.10 and later), located
entirely through VMCOREINFO's SYMBOL()/OFFSET()/SIZE() helpers so that no
vmlinux is needed, and the older variable-length `log_buf` records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import AddressError, UnsupportedError

if TYPE_CHECKING:
    from ..dump import Dump
    from ..notes import VmcoreInfo

# desc_ring state bits live in the top two bits of state_var
DESC_COMMITTED, DESC_FINALIZED = 1, 2
LOG_CONT = 8  # printk_info.flags / printk_log.flags bit for continuation records


def flags_and_level(byte: int, byteorder: str) -> tuple[int, int]:
    """(flags, level) of the byte holding `u8 flags:5; u8 level:3;`: GCC
    allocates bit-fields from the low bits on a little-endian target and from
    the high bits on a big-endian one (s390x), so the level is the top three
    bits there and the bottom three here."""
    if byteorder == "little":
        return byte & 0x1F, byte >> 5
    return byte >> 3, byte & 0x07


@dataclass(frozen=True)
class LogRecord:
    """One kernel log record."""

    seq: int
    timestamp_ns: int
    level: int
    facility: int
    text: str
    caller_id: int = 0
    continuation: bool = False

    @property
    def caller(self) -> str:
        """'T<pid>' for a task, 'C<cpu>' for other contexts (the kernel's encoding)."""
        if self.caller_id & 0x80000000:
            return f"C{self.caller_id & ~0x80000000}"
        return f"T{self.caller_id}"

    def format(self) -> str:
        secs, nsec = divmod(self.timestamp_ns, 1_000_000_000)
        return "\n".join(f"[{secs:5d}.{nsec // 1000:06d}] {line}" for line in self.text.split("\n"))


@dataclass
class KernelLog:
    records: list[LogRecord]
    layout: str
    partial: bool = False
    problem: str | None = None


class _Helpers:
    """VMCOREINFO lookups that fail with a message naming what is missing."""

    def __init__(self, dump: Dump) -> None:
        self.info = dump.vmcoreinfo
        self.path = dump.path

    def off(self, struct: str, member: str) -> int:
        value = self.info.offset(struct, member) if self.info else None
        if value is None:
            raise UnsupportedError(f"VMCOREINFO lacks OFFSET({struct}.{member})", self.path)
        return value

    def symbol(self, name: str) -> int:
        value = self.info.symbol(name) if self.info else None
        if value is None:
            raise UnsupportedError(f"VMCOREINFO lacks SYMBOL({name})", self.path)
        return value

    def size(self, name: str) -> int:
        value = self.info.size(name) if self.info else None
        if value is None:
            raise UnsupportedError(f"VMCOREINFO lacks SIZE({name})", self.path)
        return value


def read_kernel_log(dump: Dump) -> KernelLog:
    """The whole kernel log, oldest record first."""
    info = dump.vmcoreinfo
    if info is None:
        raise UnsupportedError("no VMCOREINFO in the dump: cannot find the kernel log", dump.path)
    if info.symbol("prb") is not None:
        return _read_ringbuffer(dump, info)
    if info.symbol("log_buf") is not None:
        return _read_log_buf(dump)
    raise UnsupportedError("VMCOREINFO names neither prb nor log_buf", dump.path)


def _read_ringbuffer(dump: Dump, info: VmcoreInfo) -> KernelLog:
    h = _Helpers(dump)
    word = dump.word_size
    counter = info.offset("atomic_long_t", "counter") or 0
    prb = dump.read_ptr(h.symbol("prb"))
    desc_ring = prb + h.off("printk_ringbuffer", "desc_ring")
    data_ring = prb + h.off("printk_ringbuffer", "text_data_ring")
    count_bits = dump.read_u32(desc_ring + h.off("prb_desc_ring", "count_bits"))
    if not 0 < count_bits < 32:
        raise UnsupportedError(f"printk ring buffer: impossible count_bits {count_bits}", dump.path)
    descs = dump.read_ptr(desc_ring + h.off("prb_desc_ring", "descs"))
    infos = dump.read_ptr(desc_ring + h.off("prb_desc_ring", "infos"))
    head_id = dump.read_ptr(desc_ring + h.off("prb_desc_ring", "head_id") + counter)
    tail_id = dump.read_ptr(desc_ring + h.off("prb_desc_ring", "tail_id") + counter)
    size_bits = dump.read_u32(data_ring + h.off("prb_data_ring", "size_bits"))
    # the kernel caps log_buf_len at 2 GiB (LOG_BUF_LEN_MAX) and sizes the
    # descriptor ring from it (count_bits = size_bits - PRB_AVGBITS)
    if not 0 < size_bits < 32 or count_bits > size_bits:
        raise UnsupportedError(
            f"printk ring buffer: impossible size_bits {size_bits} (count_bits {count_bits})",
            dump.path,
        )
    data = dump.read_ptr(data_ring + h.off("prb_data_ring", "data"))

    ndescs = 1 << count_bits
    data_size = 1 << size_bits
    desc_size = h.size("prb_desc")
    info_size = h.size("printk_info")
    sv_off = h.off("prb_desc", "state_var") + counter
    lpos_off = h.off("prb_desc", "text_blk_lpos")
    begin_off = lpos_off + h.off("prb_data_blk_lpos", "begin")
    next_off = lpos_off + h.off("prb_data_blk_lpos", "next")
    seq_off = h.off("printk_info", "seq")
    ts_off = h.off("printk_info", "ts_nsec")
    len_off = h.off("printk_info", "text_len")
    caller_off = h.off("printk_info", "caller_id")
    # facility (u8) and flags:5/level:3 follow the u16 text_len: not exported as
    # helpers, so take them from types when known, else from that fixed layout.
    # Loading types just for this would cost more than the whole log read.
    fac_off, flags_off = len_off + 2, len_off + 3
    _check_layout(
        dump,
        "prb_desc",
        desc_size,
        {
            "state_var": (sv_off, word),
            "text_blk_lpos.begin": (begin_off, word),
            "text_blk_lpos.next": (next_off, word),
        },
    )
    _check_layout(
        dump,
        "printk_info",
        info_size,
        {
            "seq": (seq_off, 8),
            "ts_nsec": (ts_off, 8),
            "text_len": (len_off, 4),
            "caller_id": (caller_off, 4),
        },
    )

    bits = word * 8
    flags_shift = bits - 2
    id_mask = (1 << flags_shift) - 1
    # Read both arrays and the data ring in one go each: far faster than per record.
    desc_blob = dump.read(descs, ndescs * desc_size)
    info_blob = dump.read(infos, ndescs * info_size)
    text_blob = dump.read(data, data_size)
    bo = dump.byteorder

    def field(blob: bytes, off: int, size: int) -> int:
        return int.from_bytes(blob[off : off + size], bo)

    records: list[LogRecord] = []
    problem = None
    ident = tail_id & id_mask
    head = head_id & id_mask
    for _ in range(ndescs + 1):
        idx = ident % ndescs
        d = idx * desc_size
        sv = field(desc_blob, d + sv_off, word)
        state = sv >> flags_shift
        if (sv & id_mask) == ident and state in (DESC_COMMITTED, DESC_FINALIZED):
            begin = field(desc_blob, d + begin_off, word)
            nxt = field(desc_blob, d + next_off, word)
            i = idx * info_size
            text_len = field(info_blob, i + len_off, 2)
            text = _block_text(text_blob, begin, nxt, data_size, word, text_len)
            flags, level = flags_and_level(info_blob[i + flags_off], bo)
            records.append(
                LogRecord(
                    seq=field(info_blob, i + seq_off, 8),
                    timestamp_ns=field(info_blob, i + ts_off, 8),
                    level=level,
                    facility=info_blob[i + fac_off],
                    text=text.decode("utf-8", "replace"),
                    caller_id=field(info_blob, i + caller_off, 4),
                    continuation=bool(flags & LOG_CONT),
                )
            )
        if ident == head:
            break
        ident = (ident + 1) & id_mask
    else:
        problem = "descriptor ids never reached head_id: stopped after one lap of the ring"
    records.sort(key=lambda r: r.seq)
    return KernelLog(records, "printk_ringbuffer", partial=problem is not None, problem=problem)


MAX_STRUCT_SIZE = 4096  # prb_desc and printk_info are tens of bytes


def _check_layout(dump: Dump, struct: str, size: int, fields: dict[str, tuple[int, int]]) -> None:
    """VMCOREINFO's SIZE()/OFFSET() must describe a struct its fields fit in:
    corrupt helpers give an error naming them, not an index out of range."""
    if not 0 < size <= MAX_STRUCT_SIZE:
        raise UnsupportedError(f"VMCOREINFO SIZE({struct})={size} is impossible", dump.path)
    for name, (off, width) in fields.items():
        if not 0 <= off <= size - width:
            raise UnsupportedError(
                f"VMCOREINFO puts {struct}.{name} at {off}, outside SIZE({struct})={size}",
                dump.path,
            )


def _block_text(blob: bytes, begin: int, nxt: int, size: int, word: int, text_len: int) -> bytes:
    """Text of a data block [begin, next) given as logical positions."""
    if begin & 1 or begin == nxt:  # data-less block (FAILED_LPOS / EMPTY_LINE_LPOS)
        return b""
    start = begin % size
    # wrapped (else): the block was placed at the start of the ring
    block = (
        blob[start : start + (nxt - begin)] if begin // size == nxt // size else blob[: nxt % size]
    )
    return block[word : word + text_len]  # skip the descriptor id the block starts with


def _read_log_buf(dump: Dump) -> KernelLog:
    """Pre-5.10 `struct printk_log` records in `log_buf`."""
    h = _Helpers(dump)
    buf = dump.read_ptr(h.symbol("log_buf"))
    buf_len = dump.read_u32(h.symbol("log_buf_len"))
    first = dump.read_u32(h.symbol("log_first_idx"))
    nxt = dump.read_u32(h.symbol("log_next_idx"))
    if not 0 < buf_len <= 1 << 28 or first >= buf_len:
        raise UnsupportedError(f"log_buf: impossible length {buf_len} or index {first}", dump.path)
    blob = dump.read(buf, buf_len)
    hdr = h.size("printk_log")
    ts_off = h.off("printk_log", "ts_nsec")
    len_off = h.off("printk_log", "len")
    tlen_off = h.off("printk_log", "text_len")
    _check_layout(
        dump,
        "printk_log",
        hdr,
        {"ts_nsec": (ts_off, 8), "len": (len_off, 2), "text_len": (tlen_off, 6)},
    )
    bo = dump.byteorder
    records: list[LogRecord] = []
    idx, seq, problem = first, 0, None
    for _ in range(buf_len // max(hdr, 1) + 1):
        if idx == nxt:
            break
        if idx + hdr > buf_len:
            problem = f"record header at {idx} runs past the buffer"
            break
        length = int.from_bytes(blob[idx + len_off : idx + len_off + 2], bo)
        if length == 0:  # wrap marker: continue from the start
            idx = 0
            continue
        text_len = int.from_bytes(blob[idx + tlen_off : idx + tlen_off + 2], bo)
        ts = int.from_bytes(blob[idx + ts_off : idx + ts_off + 8], bo)
        # u16 text_len, u16 dict_len, u8 facility, u8 flags:5 level:3 (not exported
        # as helpers; the layout is fixed from 3.11 to 5.9)
        fac_at = idx + tlen_off + 4
        facility = blob[fac_at] if fac_at < buf_len else 0
        flags, level = flags_and_level(blob[fac_at + 1] if fac_at + 1 < buf_len else 0, bo)
        text = blob[idx + hdr : idx + hdr + text_len].decode("utf-8", "replace")
        records.append(
            LogRecord(seq, ts, level, facility, text, continuation=bool(flags & LOG_CONT))
        )
        seq += 1
        idx += length
        if idx >= buf_len:
            problem = f"record length {length} runs past the buffer"
            break
    else:
        problem = "log_buf walk did not reach log_next_idx"
    return KernelLog(records, "log_buf", partial=problem is not None, problem=problem)


__all__ = ["LogRecord", "KernelLog", "read_kernel_log", "AddressError"]
