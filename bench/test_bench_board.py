"""Hot-path micro-benchmarks: board write/read, change detection, one scanner pass, parse.

    .venv/bin/pytest bench --benchmark-enable --benchmark-columns=median,iqr,ops

Each hot-path operation is measured beside a baseline in the same run: numpy
per-element access to the same slot, which DESIGN.md's pitfalls say costs
about twice as much.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from kit import make_config, segments

from perpbot.feeds.binanceusdm import parse
from perpbot.scanner.process import Scanner
from perpbot.shm import QuoteBoard
from perpbot.shm.layout import SLOT_DTYPE, FeedState

FRAME = (b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":400900217,"E":1568014460893,'
         b'"T":1568014460891,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000",'
         b'"A":"40.66000000"}}')


@pytest.fixture
def board() -> Iterator[QuoteBoard]:
    cfg = make_config()
    with segments(cfg) as (b, status):
        for v in range(len(cfg.venues)):
            status.set_feed_state(v, FeedState.CONNECTED)
        yield b


def test_seqlock_write(benchmark, board: QuoteBoard) -> None:
    w = board.writer(0)
    benchmark(w.write, 1, 100.0, 100.5, 1.0, 2.0, 1, 2)
    w.release()


def test_baseline_numpy_slot_write(benchmark, board: QuoteBoard) -> None:
    view = np.ndarray((board.layout.n_venues, board.layout.n_symbols), SLOT_DTYPE,
                      buffer=board.segment.buf, offset=board.layout.slots)

    def write() -> None:
        slot = view[0, 1]
        slot["seq"] += 1
        slot["bid"] = 100.0
        slot["ask"] = 100.5
        slot["bid_size"] = 1.0
        slot["ask_size"] = 2.0
        slot["ts_exchange_ns"] = 1
        slot["ts_recv_ns"] = 2
        slot["ts_write_ns"] = 3
        slot["seq"] += 1

    benchmark(write)
    view = None  # release the export before the segment closes


def test_seqlock_read(benchmark, board: QuoteBoard) -> None:
    w = board.writer(0)
    w.write(1, 100.0, 100.5, 1.0, 2.0, 1, 2)
    benchmark(board.read, 0, 1)
    w.release()


def test_baseline_numpy_slot_read(benchmark, board: QuoteBoard) -> None:
    view = np.ndarray((board.layout.n_venues, board.layout.n_symbols), SLOT_DTYPE,
                      buffer=board.segment.buf, offset=board.layout.slots)

    def read() -> tuple:
        slot = view[0, 1]
        s1 = slot["seq"]
        out = (slot["bid"], slot["ask"], slot["bid_size"], slot["ask_size"], slot["ts_exchange_ns"],
               slot["ts_recv_ns"], slot["ts_write_ns"])
        return out if slot["seq"] == s1 else ()

    benchmark(read)
    view = None  # release the export before the segment closes


def test_parse_book_ticker(benchmark) -> None:
    benchmark(parse, FRAME)


def test_idle_scanner_pass(benchmark, board: QuoteBoard) -> None:
    cfg = make_config()
    from perpbot.shm import StatusBoard

    status = StatusBoard.attach(board.segment.name.replace("-board", "-status"), cfg.venue_names, cfg.symbol_names)
    sc = Scanner(cfg, board, status, None)
    benchmark(sc.scan_once)
    sc = None
    status.close()


def test_scanner_pass_one_change(benchmark, board: QuoteBoard) -> None:
    cfg = make_config()
    from perpbot.shm import StatusBoard

    status = StatusBoard.attach(board.segment.name.replace("-board", "-status"), cfg.venue_names, cfg.symbol_names)
    sc = Scanner(cfg, board, status, None)
    w = board.writer(1)
    from perpbot.clock import now_ns

    def one() -> None:
        t = now_ns()
        w.write(0, 60000.0, 60000.5, 1.0, 1.0, t, t)
        sc.scan_once()

    benchmark(one)
    w.release()
    sc = None
    status.close()
