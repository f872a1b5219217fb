#!/usr/bin/env python3
"""Run a recorded websocket session through a venue parser and report what came out.

    python tools/parse_recording.py binanceusdm tests/data/recorded/BINANCE_FUTURES.ws.1.0

Recording format: `perpbot-record`'s, which is cryptofeed's (see perpbot/record.py);
only received frames are parsed. Prints frames,
quotes per symbol, parse errors by kind with one example each, and the parse
cost per frame (median, p99) measured on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from perpbot.feeds.registry import FEEDS, get_feed
from perpbot.feeds.spec import ParseError, ParserContext
from perpbot.record import read_recording


def frames(path: Path) -> list[tuple[bytes, bool]]:
    """Every received frame of every connection in the recording, with its binary flag."""
    return [(f.payload, f.binary) for conn in read_recording(path) for f in conn.received]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("feed", choices=sorted(FEEDS))
    p.add_argument("recording", type=Path)
    args = p.parse_args(argv)
    parse = get_feed(args.feed).make_parser(ParserContext())
    data = frames(args.recording)
    quotes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    examples: dict[str, bytes] = {}
    costs = []
    for f, binary in data:
        t0 = time.perf_counter_ns()
        try:
            out = parse(f, True) if binary else parse(f)
        except ParseError as e:
            errors[e.kind] += 1
            examples.setdefault(e.kind, f[:100])
            continue
        finally:
            costs.append(time.perf_counter_ns() - t0)
        for q in out:
            quotes[q.symbol] += 1
    print(f"{len(data)} frames, {sum(quotes.values())} quotes, {sum(errors.values())} parse errors")
    for sym, n in quotes.most_common():
        print(f"  {sym:<14}{n:>8}")
    for kind, n in errors.most_common():
        print(f"  error {kind}: {n}  e.g. {examples[kind]!r}")
    if costs:
        costs.sort()
        print(f"parse cost per frame: median {statistics.median(costs) / 1000:.2f} us, "
              f"p99 {costs[int(len(costs) * 0.99)] / 1000:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
