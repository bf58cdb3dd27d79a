"""The default seed: the same request to the same model gives the same numbers, in any process, in any batch.

Each row draws its noise from a generator of its own, seeded by a digest of
- the model's identity (its artifact checksum), or the caller's explicit `seed` in its place,
- what the request asks (the operation and the options that shape the draws: samples, target, method, candidates),
- the row as the engine encoded it (float32 on the normalised scale, and which cells are observed), so cells the API
  treats as equal (1 and 1.0, a number written with more digits than float32 holds) give one seed.
Nothing else: not the row's position in the request, not the other rows, not the process (hashlib over a canonical
encoding; Python's `hash()` is salted per process).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def row_seeds(source: Mapping[str, Any], request: Mapping[str, Any], *encoded: np.ndarray) -> list[int]:
    """One 128-bit seed per row of the `encoded` arrays ([rows, ...] each), from `source` ({"model": checksum} or
    {"seed": n}) and `request` (JSON values)."""
    header = json.dumps({**request, **source}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    base = hashlib.blake2b(header.encode(), digest_size=16)
    # Little-endian float32 whatever the machine; + 0 turns -0.0 into 0.0 (they encode the same value).
    parts = [np.ascontiguousarray(a, dtype="<f4") + np.float32(0) for a in encoded]
    seeds = []
    for i in range(len(parts[0])):
        h = base.copy()
        for p in parts:
            h.update(p[i].tobytes())
        seeds.append(int.from_bytes(h.digest(), "little"))
    return seeds
