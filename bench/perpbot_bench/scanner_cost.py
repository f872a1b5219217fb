"""What one scanner pass costs as the board grows (venues x symbols).

The real pass, `perpbot.scanner.process.Scanner.scan_once`, over a real
QuoteBoard and StatusBoard (shared-memory segments of the given size, every
venue CONNECTED), in this process. Every slot is first filled with a quote
that leaves no edge (same prices on every venue, a 1 bp spread, so fees eat
it: the common case, where nothing is sent), and the scanner is given one
pass to take them in. Then, per size:

- `one_change`: before each pass one quote is written (venue and symbol drawn
  at random, prices nudged, still no edge); the pass that finds it is timed
  with `now_ns()` on either side of `scan_once`. That is: the venues' change
  counters, one ring entry, one seqlock read, and the symbol re-evaluated
  across every venue. The write itself is not timed.
- `idle`: the pass with nothing changed (the counters only).

Staleness is switched off (`stale_after_ms` of an hour) so the prefilled quotes
stay live however long a run takes. Cost per changed symbol flat from 10 to
500 symbols means `one_change` does not grow with `symbols`.
"""

from __future__ import annotations

import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from perpbot.clock import now_ns
from perpbot.config import Config, parse_config
from perpbot.feeds.registry import FEEDS
from perpbot.scanner.process import Scanner
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import FeedState, ScannerCounter, segment_names
from perpbot_bench.stats import Hist

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "config.yaml.example"
SIZES: tuple[tuple[int, int], ...] = ((2, 10), (4, 50), (8, 10), (8, 100), (8, 500))
PRICE = 100.0


def board_config(n_venues: int, n_symbols: int) -> Config:
    """The example config with `n_venues` venues (native feeds, cycled) each listing `n_symbols` symbols."""
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    feeds = sorted(FEEDS)
    symbols = {f"S{i}-PERP": {"lot_size": "0.001", "tick_size": "0.001", "min_notional_usd": 5}
               for i in range(n_symbols)}
    raw["symbols"] = symbols
    raw["venues"] = {
        f"v{v}": {"feed": feeds[v % len(feeds)], "taker_fee_bps": 5.0, "maker_fee_bps": 2.0,
                  "symbols": {s: f"S{i}USDT" for i, s in enumerate(symbols)}}
        for v in range(n_venues)
    }
    raw["demo"]["prices"] = dict.fromkeys(symbols, PRICE)
    raw["demo"]["venues"] = {}
    raw["scanner"]["stale_after_ms"] = 3_600_000
    return parse_config(raw)


def _cost(n_venues: int, n_symbols: int, n: int, seed: int) -> dict[str, Any]:
    cfg = board_config(n_venues, n_symbols)
    bname, sname = segment_names(f"b{os.getpid()}{uuid.uuid4().hex[:6]}")
    board = QuoteBoard.create(bname, cfg.venue_names, cfg.symbol_names)
    try:
        status = StatusBoard.create(sname, cfg.venue_names, cfg.symbol_names)
    except BaseException:
        board.close()
        board.segment.unlink()
        raise
    writers = [board.writer(v) for v in range(n_venues)]
    sc: Scanner | None = None
    try:
        for v in range(n_venues):
            status.set_feed_state(v, FeedState.CONNECTED)
        sc = Scanner(cfg, board, status, None)
        t = now_ns()
        for w in writers:
            for s in range(n_symbols):
                w.write(s, PRICE, PRICE + 0.01, 10.0, 10.0, t, t)
        sc.scan_once()  # takes the whole board in (a rescan where a ring was lapped)
        rng = random.Random(seed)
        picks = [(rng.randrange(n_venues), rng.randrange(n_symbols), rng.randrange(5) * 0.001) for _ in range(n)]
        scan = sc.scan_once
        clock = now_ns
        one = Hist()
        changes_before = sc.counters[ScannerCounter.CHANGES]
        opps_before = sc.counters[ScannerCounter.OPPORTUNITIES]
        for v, s, d in picks:
            ts = clock()
            writers[v].write(s, PRICE + d, PRICE + 0.01 + d, 10.0, 10.0, ts, ts)
            t0 = clock()
            scan()
            t1 = clock()
            one.add(t1 - t0)
        seen = sc.counters[ScannerCounter.CHANGES] - changes_before
        opportunities = sc.counters[ScannerCounter.OPPORTUNITIES] - opps_before
        idle = Hist()
        for _ in range(n):
            t0 = clock()
            scan()
            t1 = clock()
            idle.add(t1 - t0)
    finally:
        for w in writers:
            w.release()
        sc = None  # drops its views of the segments before they close
        board.close()
        board.segment.unlink()
        status.close()
        status.segment.unlink()
    one_s, idle_s = one.summary(), idle.summary()
    return {
        "venues": n_venues, "symbols": n_symbols, "passes": n,
        "one_change": one_s, "idle": idle_s,
        "per_change_p50_us": round(one_s["p50_us"] - idle_s["p50_us"], 3),
        "changes_seen": seen, "opportunities": opportunities,
    }


def scanner_cost(sizes: tuple[tuple[int, int], ...] = SIZES, n: int = 20_000, *, seed: int = 1) -> list[dict[str, Any]]:
    """Per board size (venues, symbols): the cost of a pass with one changed quote and of an idle pass.

    Each entry: {"venues", "symbols", "passes", "one_change": summary, "idle": summary,
    "per_change_p50_us" (one_change p50 minus idle p50), "changes_seen" (should equal
    passes), "opportunities" (should be 0)}.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    return [_cost(v, s, n, seed) for v, s in sizes]


def main() -> int:
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    for r in scanner_cost():
        o, i = r["one_change"], r["idle"]
        print(f"{r['venues']}x{r['symbols']:<4} one change p50 {o['p50_us']:>6} us p99 {o['p99_us']:>6} us   "
              f"idle p50 {i['p50_us']:>6} us   per change {r['per_change_p50_us']} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
