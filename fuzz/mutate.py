"""A deterministic byte mutator, for when atheris (libFuzzer) is not
installed: bit flips, interesting values at aligned offsets, chunk copies,
insertions, deletions and truncations, from a seeded random.Random."""

from __future__ import annotations

import random

INTERESTING = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    0x100000000,
    0x7FFFFFFFFFFFFFFF,
    0xFFFFFFFFFFFFFFFF,
    4096,
    512,
]


def mutate(data: bytes, rng: random.Random, max_len: int = 1 << 20) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
        op = rng.randrange(8)
        n = len(buf)
        if n == 0:
            buf += bytes([rng.randrange(256)])
            continue
        # mostly near the head, where the headers are
        at = min(int(rng.expovariate(1 / 512)), n - 1) if rng.random() < 0.6 else rng.randrange(n)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.randrange(256)
        elif op in (2, 3):
            width = rng.choice((2, 4, 8))
            at -= at % width
            value = rng.choice(INTERESTING) + rng.choice((0, 0, -1, 1))
            value &= (1 << (8 * width)) - 1
            buf[at : at + width] = value.to_bytes(width, rng.choice(("little", "big")))
        elif op == 4:
            src = rng.randrange(n)
            k = rng.randrange(1, 64)
            buf[at : at + k] = buf[src : src + k]
        elif op == 5:
            del buf[at : at + rng.randrange(1, 64)]
        elif op == 6:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        else:
            del buf[rng.randrange(n) :]
    return bytes(buf[:max_len])
