"""Fidelity numbers, computed in float64 from running sums so a tensor can be fed in row chunks.

With `a` the reference and `b` the dequantized artifact (flattened):

    cosine    = sum(a*b) / sqrt(sum(a*a) * sum(b*b))        (1 when both are all zeros, 0 when one is)
    sqnr_db   = 10 * log10(sum(a*a) / sum((a-b)^2))         (clamped to [-SQNR_CAP_DB, SQNR_CAP_DB]:
                                                             identical tensors give +150, not infinity)
    rel_error = sqrt(sum((a-b)^2) / sum(a*a))               (relative L2 error; capped at REL_ERROR_CAP)
    max_abs_error = max |a-b|
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SQNR_CAP_DB = 150.0
REL_ERROR_CAP = 1e6


@dataclass
class Stats:
    dot: float = 0.0
    aa: float = 0.0
    bb: float = 0.0
    err: float = 0.0
    max_abs: float = 0.0
    count: int = 0
    nonfinite: int = 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float64).ravel()
        b = np.asarray(b, dtype=np.float64).ravel()
        d = a - b
        sums = (float(np.dot(a, b)), float(np.dot(a, a)), float(np.dot(b, b)), float(np.dot(d, d)))
        if not all(math.isfinite(x) for x in sums):
            # NaN/Inf somewhere (squares of float32 values cannot overflow float64 sums): count them
            # and measure the finite positions only; the fast path above skips this scan
            finite = np.isfinite(a) & np.isfinite(b)
            self.nonfinite += int(finite.size - np.count_nonzero(finite))
            a, b = a[finite], b[finite]
            d = a - b
            sums = (float(np.dot(a, b)), float(np.dot(a, a)), float(np.dot(b, b)), float(np.dot(d, d)))
        self.dot += sums[0]
        self.aa += sums[1]
        self.bb += sums[2]
        self.err += sums[3]
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()), -float(d.min()))
        self.count += int(a.size)

    def merge(self, other: Stats) -> None:
        self.dot += other.dot
        self.aa += other.aa
        self.bb += other.bb
        self.err += other.err
        self.max_abs = max(self.max_abs, other.max_abs)
        self.count += other.count
        self.nonfinite += other.nonfinite

    @property
    def cosine(self) -> float:
        if self.aa == 0.0 and self.bb == 0.0:
            return 1.0
        if self.aa == 0.0 or self.bb == 0.0:
            return 0.0
        return max(-1.0, min(1.0, self.dot / math.sqrt(self.aa * self.bb)))

    @property
    def sqnr_db(self) -> float:
        if self.err == 0.0:
            return SQNR_CAP_DB
        if self.aa == 0.0:
            return -SQNR_CAP_DB
        return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(self.aa / self.err)))

    @property
    def rel_error(self) -> float:
        if self.err == 0.0:
            return 0.0
        if self.aa == 0.0:
            return REL_ERROR_CAP
        return min(REL_ERROR_CAP, math.sqrt(self.err / self.aa))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cosine": round(self.cosine, 8),
            "sqnr_db": round(self.sqnr_db, 4),
            "rel_error": round(self.rel_error, 8),
            "max_abs_error": float(f"{self.max_abs:.8g}"),
        }


def compare(a: np.ndarray, b: np.ndarray) -> Stats:
    stats = Stats()
    stats.update(a, b)
    return stats


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of positions whose argmax over the last axis agrees; None when that axis has < 2 entries."""
    if a.ndim == 0 or a.shape[-1] < 2 or a.shape != b.shape:
        return None
    ia = np.argmax(a.reshape(-1, a.shape[-1]), axis=-1)
    ib = np.argmax(b.reshape(-1, b.shape[-1]), axis=-1)
    return float(np.mean(ia == ib)) if ia.size else None
