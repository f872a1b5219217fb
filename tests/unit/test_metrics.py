"""Latency histogram buckets and quantiles."""

from __future__ import annotations

import random

from perpbot.metrics import LocalHistogram, bucket_bounds, bucket_of, quantile
from perpbot.shm.layout import N_BUCKETS


def test_every_value_falls_inside_its_bucket() -> None:
    rng = random.Random(1)
    values = list(range(5000)) + [rng.randrange(1, 10**12) for _ in range(20000)]
    for v in values:
        lo, hi = bucket_bounds(bucket_of(v))
        assert lo <= v < hi, v


def test_buckets_are_contiguous_and_resolution_is_within_13_percent() -> None:
    for i in range(1, N_BUCKETS):
        assert bucket_bounds(i)[0] == bucket_bounds(i - 1)[1]
    for i in range(16, N_BUCKETS):
        lo, hi = bucket_bounds(i)
        assert (hi - lo) / lo <= 0.125


def test_quantiles_of_known_distribution() -> None:
    h = LocalHistogram()
    for v in range(1, 10001):
        h.add(v * 1000)  # 1 us .. 10 ms uniform
    counts = h.drain()
    p50 = quantile(counts, 0.5)
    p99 = quantile(counts, 0.99)
    assert p50 is not None and abs(p50 - 5_000_000) / 5_000_000 < 0.07
    assert p99 is not None and abs(p99 - 9_900_000) / 9_900_000 < 0.07
    assert quantile([0] * N_BUCKETS, 0.5) is None
    assert not h.dirty and sum(h.counts) == 0
