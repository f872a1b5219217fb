"""Scanner pass: change detection, fee-aware edge, staleness, thin books, halt, repeats."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq
from kit import make_config, segments

from perpbot.config import Config
from perpbot.messages import decode_opportunity
from perpbot.scanner.process import Scanner
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import FeedState, ScannerCounter, TradingState

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.t = 10_000 * MS

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def rig() -> Iterator[tuple[Config, QuoteBoard, StatusBoard, Scanner, zmq.Socket, FakeClock]]:
    cfg = make_config(scanner={"min_edge_bps": 1.0, "min_notional_usd": 100, "stale_after_ms": 500,
                               "repeat_interval_ms": 100})
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://opps")
    push = ctx.socket(zmq.PUSH)
    push.connect("inproc://opps")
    clock = FakeClock()
    with segments(cfg) as (board, status):
        for v in range(len(cfg.venues)):
            status.set_feed_state(v, FeedState.CONNECTED)
        sc = Scanner(cfg, board, status, push, None, clock)
        yield cfg, board, status, sc, pull, clock
        del sc
    push.close(0)
    pull.close(0)
    ctx.term()


def _quote(board: QuoteBoard, v: int, s: int, bid: float, ask: float, size: float, t: int) -> None:
    w = board.writer(v)
    w.write(s, bid, ask, size, size, t, t)
    w.release()


def _received(pull: zmq.Socket) -> list:
    out = []
    while pull.poll(0):
        out.append(decode_opportunity(pull.recv()))
    return out


def test_net_edge_above_threshold_is_pushed_with_stamps(rig) -> None:
    cfg, board, status, sc, pull, clock = rig
    t = clock.t
    # BTC: binanceusdm (5 bps) asks 60000, bitget (6 bps) bids 60090: 15 bps gross, ~4 bps net
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, t)
    _quote(board, 1, 0, 59995.0, 60005.0, 1.0, t)
    _quote(board, 3, 0, 60090.0, 60100.0, 1.0, t - MS)
    assert sc.scan_once() == 3
    (opp,) = _received(pull)
    assert (opp.symbol, opp.buy_venue, opp.sell_venue) == (0, 0, 3)
    assert opp.buy_price == 60000.0 and opp.sell_price == 60090.0
    assert opp.edge_bps == pytest.approx((60090 * (1 - 6e-4) - 60000 * (1 + 5e-4)) / (60000 * (1 + 5e-4)) * 1e4)
    assert opp.ts_recv_ns == t and opp.ts_detect_ns == clock.t  # newest leg triggered it
    assert status.recent("opps")[0]["opp_id"] == opp.opp_id
    # nothing changed: the next pass does nothing
    assert sc.scan_once() == 0


def test_edge_below_fees_is_not_an_opportunity(rig) -> None:
    cfg, board, status, sc, pull, clock = rig
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, clock.t)
    _quote(board, 3, 0, 60050.0, 60060.0, 1.0, clock.t)  # 8 bps gross < 11 bps of fees
    sc.scan_once()
    assert _received(pull) == []


def test_stale_disconnected_and_thin_quotes_are_ignored(rig) -> None:
    cfg, board, status, sc, pull, clock = rig
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, clock.t)
    _quote(board, 3, 0, 60090.0, 60100.0, 1.0, clock.t - 600 * MS)  # older than stale_after_ms
    sc.scan_once()
    assert _received(pull) == [] and sc.counters[ScannerCounter.STALE_SKIPS] >= 1
    _quote(board, 3, 0, 60090.0, 60100.0, 0.001, clock.t)  # fresh but $60 < min notional $100
    sc.scan_once()
    assert _received(pull) == [] and sc.counters[ScannerCounter.THIN_SKIPS] >= 1
    status.set_feed_state(3, FeedState.DOWN)
    _quote(board, 3, 0, 60090.0, 60100.0, 1.0, clock.t)  # fresh and thick, but its feed is down
    sc.scan_once()
    assert _received(pull) == []
    status.set_feed_state(3, FeedState.CONNECTED)
    _quote(board, 3, 0, 60090.0, 60100.0, 1.0, clock.t)
    sc.scan_once()
    assert len(_received(pull)) == 1


def test_repeats_are_rate_limited(rig) -> None:
    cfg, board, status, sc, pull, clock = rig
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, clock.t)
    _quote(board, 3, 0, 60090.0, 60100.0, 1.0, clock.t)
    sc.scan_once()
    _quote(board, 3, 0, 60091.0, 60100.0, 1.0, clock.t)
    sc.scan_once()
    assert len(_received(pull)) == 1
    assert sc.counters[ScannerCounter.REPEATS_SUPPRESSED] == 1
    clock.t += 101 * MS
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, clock.t)
    _quote(board, 3, 0, 60092.0, 60100.0, 1.0, clock.t)
    sc.scan_once()
    assert len(_received(pull)) == 1


@pytest.mark.parametrize("how", ["halt", "pause"])
def test_halt_and_pause_stop_signals(rig, how: str) -> None:
    cfg, board, status, sc, pull, clock = rig
    if how == "halt":
        status.set_halt()
    else:
        status.set_trading_state(TradingState.PAUSED)
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, clock.t)
    _quote(board, 3, 0, 60090.0, 60100.0, 1.0, clock.t)
    sc.scan_once()
    assert _received(pull) == []
    assert sc.counters[ScannerCounter.HALTED_SKIPS] == 1


def test_opportunity_carries_the_stamps_of_the_tick_that_triggered_it(rig) -> None:
    cfg, board, status, sc, pull, clock = rig
    # an edge between venues 0 and 3 is suppressed as a repeat, then a third venue ticks later
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, clock.t - 50 * MS)
    _quote(board, 3, 0, 60090.0, 60100.0, 1.0, clock.t - 40 * MS)
    sc.scan_once()
    assert len(_received(pull)) == 1
    clock.t += 200 * MS
    _quote(board, 0, 0, 59990.0, 60000.0, 1.0, clock.t - 5 * MS)
    _quote(board, 1, 0, 60000.0, 60010.0, 1.0, clock.t - 1 * MS)  # not a leg, but the newest change
    sc.scan_once()
    (opp,) = _received(pull)
    assert (opp.buy_venue, opp.sell_venue) == (0, 3)
    assert opp.ts_recv_ns == clock.t - 1 * MS  # tick->signal measures from the tick that woke us
