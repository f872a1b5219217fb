"""Log-linear latency histograms (8 sub-buckets per power of two, ~12% resolution).

Pure functions; the counts live in the status segment (`Hop` rows) or in a
process-local `LocalHistogram` that is flushed there off the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

from perpbot.shm.layout import N_BUCKETS

_SUB_BITS = 3
_SUB = 1 << _SUB_BITS


def bucket_of(ns: int) -> int:
    """Bucket index for a non-negative duration in nanoseconds (negative counts as 0)."""
    if ns < 2 * _SUB:
        return max(0, ns)
    shift = ns.bit_length() - (_SUB_BITS + 1)
    idx = shift * _SUB + (ns >> shift)
    return idx if idx < N_BUCKETS else N_BUCKETS - 1


def bucket_bounds(idx: int) -> tuple[int, int]:
    """[low, high) nanoseconds covered by a bucket."""
    if idx < 2 * _SUB:
        return idx, idx + 1
    shift = idx // _SUB - 1
    mant = idx % _SUB + _SUB
    return mant << shift, (mant + 1) << shift


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) in ns, at the bucket midpoint; None if empty."""
    total = int(sum(counts))
    if total == 0:
        return None
    rank = q * (total - 1)
    run = 0
    for i, c in enumerate(counts):
        run += int(c)
        if run > rank:
            lo, hi = bucket_bounds(i)
            return (lo + hi - 1) / 2
    lo, hi = bucket_bounds(len(counts) - 1)
    return float(lo)


class LocalHistogram:
    """Process-local counts, cheap to add to; flushed into shared memory periodically."""

    __slots__ = ("counts", "dirty")

    def __init__(self) -> None:
        self.counts = [0] * N_BUCKETS
        self.dirty = False

    def add(self, ns: int) -> None:
        self.counts[bucket_of(ns)] += 1
        self.dirty = True

    def drain(self) -> list[int]:
        out = self.counts
        self.counts = [0] * N_BUCKETS
        self.dirty = False
        return out
