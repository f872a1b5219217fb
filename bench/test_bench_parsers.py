"""Parse cost per frame for every venue in the registry, on the venue's own quote frames.

The frames come from each venue's simulator protocol (the same bytes the demo
market sends), so every venue is measured on its real wire format, contract
sizes included. For snapshot/delta protocols the measured frame is the
snapshot: a delta cannot be replayed without breaking its sequence check.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "conformance"))

from test_venues import VENUE_SYMBOLS, instruments, scripted_quotes, venue_config

from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import ParserContext
from perpbot.sim.protocols import get_protocol


@pytest.mark.parametrize("feed", [f for f in sorted(FEEDS) if f in VENUE_SYMBOLS])
def test_parse(benchmark, feed: str) -> None:
    cfg = venue_config(feed)
    vc = cfg.venues["under_test"]
    proto = get_protocol(feed)(FEEDS[feed].demo_path)
    board, inst = next(iter(instruments(cfg, proto).items()))
    q = scripted_quotes(cfg, board, 2)
    snap = proto.snapshot(inst, q[0], 1, 1_790_000_000_000)
    frame = snap if snap is not None else proto.quote(inst, q[1], 2, 1_790_000_000_000)
    parser = FEEDS[feed].make_parser(ParserContext({vc.symbols[b]: c for b, c in vc.contract_sizes.items()}))
    binary = frame.binary
    payload = frame.payload
    out = parser(payload, True) if binary else parser(payload)
    assert len(out) == 1
    if binary:
        benchmark(parser, payload, True)
    else:
        benchmark(parser, payload)
