"""A small, fast, deterministic mutation fuzzer: valid inputs, broken in the ways parsers trip on.

Hypothesis explores structure well but spends about a millisecond per example;
the bulk of the suite's cases come from here at a few microseconds each. Each
case starts from a valid seed and applies one to four mutations: bit flips,
boundary bytes, boundary integers written over 1/2/4-byte fields (lengths,
counts, types), insertions, deletions, truncations, duplication of a slice,
and splices of two seeds; JSON seeds also get value-level mutations (a key
dropped or added, a value replaced by one of another type, nesting). The
random source is seeded, so a failure names its case and repeats exactly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)
BOUNDARY = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _mutate_bytes(rng: random.Random, data: bytearray, seeds: list[bytes]) -> None:
    op = rng.randrange(9)
    size = len(data)
    if op == 0 and size:
        pos = rng.randrange(size)
        data[pos] ^= 1 << rng.randrange(8)
    elif op == 1 and size:
        data[rng.randrange(size)] = rng.choice(INTERESTING)
    elif op == 2 and size >= 2:
        width = rng.choice((1, 2, 4))
        pos = rng.randrange(max(1, size - width + 1))
        value = rng.choice(BOUNDARY + (size, size - 1, size + 1)) & ((1 << (8 * width)) - 1)
        data[pos:pos + width] = value.to_bytes(width, rng.choice(("big", "little")))
    elif op == 3:
        pos = rng.randrange(size + 1)
        data[pos:pos] = rng.randbytes(rng.randint(1, 8))
    elif op == 4 and size:
        start = rng.randrange(size)
        del data[start:start + rng.randint(1, 16)]
    elif op == 5 and size:
        del data[rng.randrange(size):]
    elif op == 6 and size:
        start = rng.randrange(size)
        piece = data[start:start + rng.randint(1, 32)]
        pos = rng.randrange(size + 1)
        data[pos:pos] = piece * rng.randint(1, 4)
    elif op == 7:
        other = rng.choice(seeds)
        cut_a = rng.randrange(size + 1)
        cut_b = rng.randrange(len(other) + 1)
        data[cut_a:] = other[cut_b:]
    elif size:
        data[rng.randrange(size)] = rng.randrange(256)


def byte_cases(seeds: list[bytes], n: int, seed: int) -> Iterator[bytes]:
    """``n`` mutants of ``seeds`` (the seeds themselves come first)."""
    rng = random.Random(seed)
    yield from seeds[:n]
    for _ in range(max(0, n - len(seeds))):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            _mutate_bytes(rng, data, seeds)
        yield bytes(data)


def _odd_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [None, True, False, 0, -1, 2**53, 2**64, 1.5, -0.0, "",
                          "x" * rng.choice((1, 64, 2000)), "\u0000", "mesh1" + "a" * 80, [], {}]
    if depth < 2:
        choices += [[_odd_value(rng, depth + 1)], {"t": _odd_value(rng, depth + 1)}]
    return rng.choice(choices)


def _mutate_json(rng: random.Random, obj: Any) -> Any:
    if not isinstance(obj, dict) or not obj:
        return _odd_value(rng)
    obj = dict(obj)
    op = rng.randrange(4)
    key = rng.choice(list(obj))
    if op == 0:
        del obj[key]
    elif op == 1:
        obj[key] = _odd_value(rng)
    elif op == 2:
        obj[rng.choice(("t", "type", "x", key + "_", ""))] = _odd_value(rng)
    else:
        obj[key] = _mutate_json(rng, obj[key]) if isinstance(obj[key], dict) else str(obj[key])
    return obj


def json_cases(seeds: list[dict[str, Any]], n: int, seed: int) -> Iterator[str]:
    """``n`` texts: half JSON-level mutants of ``seeds``, half byte-level mutants of their
    encodings (so both broken values and broken syntax arrive)."""
    rng = random.Random(seed)
    texts = [json.dumps(s) for s in seeds]
    raw = [t.encode() for t in texts]
    mutant = byte_cases(raw, n // 2, seed + 1)
    for i in range(n):
        if i % 2:
            yield next(mutant).decode("utf-8", "replace")
        else:
            obj: Any = rng.choice(seeds)
            for _ in range(rng.randint(1, 3)):
                obj = _mutate_json(rng, obj)
            yield json.dumps(obj)
