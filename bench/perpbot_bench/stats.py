"""The one result format every perpbot-bench measurement uses, and the arithmetic on it.

A latency measurement is a histogram of nanosecond durations in the project's
log-linear buckets (`perpbot.metrics`, ~12% resolution), the same buckets the
status segment keeps, so PerpBot's own stamps, the baseline's and the floors'
compare bucket for bucket. Summaries are in microseconds:

    {"count": 1234, "p50_us": 9.1, "p90_us": 14.0, "p99_us": 31.0, "p999_us": 88.0,
     "max_us": 120.0, "buckets": {"<bucket index>": <count>, ...}}

`max_us` is the upper bound of the highest non-empty bucket when only buckets
are known, the exact maximum when the samples were seen (`Hist.add`).

Hop names are `perpbot.shm.layout.Hop` names in lower case (`tick_to_order`, ...);
a design that has no such hop leaves it out.

A run's JSON (what `--out` writes and `--compare` reads):

    {"tool": "perpbot-bench", "version": 1, "machine": {...}, "params": {...},
     "results": {"<design>": {"hops": {"<hop>": <summary>, ...},
                              "frames": int, "frames_per_s": float, "opportunities": int,
                              "orders": int, "cpu_pct": {"<process>": float}, ...}},
     "floors": {"<floor>": <summary>, ...}, "sweep": [...], "head_of_line": {...}, ...}

`<design>` is `perpbot`, `baseline` (the seed's in-process bus) or `fused` (the
whole path inline in one callback: the floor for the path).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from perpbot.metrics import bucket_bounds, bucket_of, quantile
from perpbot.shm.layout import N_BUCKETS, Hop

#: the hop names a design reports, in path order
HOP_NAMES: tuple[str, ...] = tuple(h.name.lower() for h in Hop)
#: the quantiles every summary carries, with their keys
QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50_us", 0.50), ("p90_us", 0.90), ("p99_us", 0.99), ("p999_us", 0.999))


class Hist:
    """A histogram being filled with nanosecond durations (exact max kept)."""

    __slots__ = ("counts", "max_ns")

    def __init__(self) -> None:
        self.counts = [0] * N_BUCKETS
        self.max_ns = 0

    def add(self, ns: int) -> None:
        self.counts[bucket_of(ns)] += 1
        if ns > self.max_ns:
            self.max_ns = ns

    def extend(self, samples: Iterable[int]) -> None:
        for ns in samples:
            self.add(ns)

    def summary(self) -> dict[str, Any]:
        return summarize(self.counts, max_ns=self.max_ns or None)


def summarize(counts: Sequence[int], *, max_ns: int | None = None) -> dict[str, Any]:
    """The JSON summary of bucket counts (see the module docstring)."""
    total = int(sum(counts))
    out: dict[str, Any] = {"count": total}
    for key, q in QUANTILES:
        v = quantile(counts, q)
        if v is not None and max_ns is not None:
            v = min(v, max_ns)  # a bucket midpoint may lie above the exact maximum seen
        out[key] = None if v is None else round(v / 1000, 3)
    top = max((i for i, c in enumerate(counts) if c), default=None)
    if max_ns is not None:
        out["max_us"] = round(max_ns / 1000, 3)
    else:
        out["max_us"] = None if top is None else round(bucket_bounds(top)[1] / 1000, 3)
    out["buckets"] = {str(i): int(c) for i, c in enumerate(counts) if c}
    return out


def counts_of(summary: Mapping[str, Any]) -> list[int]:
    """Bucket counts back from a summary (to merge runs or re-quantile)."""
    counts = [0] * N_BUCKETS
    for k, c in summary.get("buckets", {}).items():
        counts[int(k)] += int(c)
    return counts


def merge(summaries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary from several (repeat runs of the same hop)."""
    counts = [0] * N_BUCKETS
    top: float | None = None
    for s in summaries:
        for i, c in enumerate(counts_of(s)):
            counts[i] += c
        m = s.get("max_us")
        if m is not None:
            top = m if top is None else max(top, m)
    out = summarize(counts)
    if top is not None:
        out["max_us"] = top
    return out


def text_histogram(summary: Mapping[str, Any], *, width: int = 40, rows: int = 16) -> list[str]:
    """A few lines of `#` bars over the populated range, for the human report."""
    counts = counts_of(summary)
    idx = [i for i, c in enumerate(counts) if c]
    if not idx:
        return ["(no samples)"]
    lo, hi = idx[0], idx[-1]
    # merge adjacent buckets so the range fits in `rows` lines
    step = max(1, -(-(hi - lo + 1) // rows))
    groups = [(i, min(i + step, hi + 1)) for i in range(lo, hi + 1, step)]
    sums = [sum(counts[a:b]) for a, b in groups]
    peak = max(sums) or 1
    lines = []
    for (a, b), n in zip(groups, sums):
        low_us = bucket_bounds(a)[0] / 1000
        high_us = bucket_bounds(b - 1)[1] / 1000
        bar = "#" * max(1 if n else 0, round(n / peak * width))
        lines.append(f"{low_us:>10.1f} - {high_us:<10.1f} us {n:>8d} {bar}")
    return lines
