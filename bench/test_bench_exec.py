"""The exec side's per-decision pieces: the opportunity message, the risk gate, the capital reservation.

Baselines measured in the same run: the opportunity as orjson (what a JSON
message would cost) against our fixed binary layout; the gate against the
bare `choose_size` it runs beside (the sizing every decision needs anyway).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from kit import make_config, segments

from perpbot.clock import now_ns
from perpbot.exec.capital import CapitalOrchestrator, Pool
from perpbot.exec.engine import Engine
from perpbot.exec.journal import Journal
from perpbot.exec.risk import Purpose
from perpbot.exec.sizing import choose_size
from perpbot.exec.venues.base import Side
from perpbot.exec.venues.paper import PaperVenue
from perpbot.messages import Opportunity, decode_opportunity, encode_opportunity
from perpbot.shm.layout import FeedState

OPP = Opportunity(7, 0, 0, 1, 60000.0, 60300.0, 1.0, 1.0, 40.0, 1, 2, 3, 4)


def test_opportunity_encode_decode(benchmark) -> None:
    benchmark(lambda: decode_opportunity(encode_opportunity(OPP)))


def test_baseline_opportunity_as_json(benchmark) -> None:
    benchmark(lambda: Opportunity(*orjson.loads(orjson.dumps(OPP._asdict())).values()))


@pytest.fixture
def engine() -> Iterator[Engine]:
    cfg = make_config()
    with segments(cfg) as (board, status), tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "j.sqlite", run_id="b")
        venues = [PaperVenue(n, i, cfg, board) for i, n in enumerate(cfg.venue_names)]
        writers = [board.writer(i) for i in range(len(venues))]
        t = now_ns()
        for i in range(len(venues)):
            status.set_feed_state(i, FeedState.CONNECTED)
            for s in range(len(cfg.symbol_names)):
                writers[i].write(s, 60000.0, 60000.1, 1.0, 1.0, 1, t)
        for v in venues:
            asyncio.run(v.connect())
        e = Engine(cfg, board, status, journal, venues, run_id="b")
        asyncio.run(e.start())
        for v in range(4):  # some positions held, as in a running system
            e.book.apply(v, 0, Side.BUY if v % 2 else Side.SELL, Decimal("0.016"), Decimal("60000"),
                         Decimal(0))
        yield e
        journal.close()
        for w in writers:
            w.release()


def _legs(e: Engine) -> tuple:
    t = now_ns()
    return (e._leg(0, 0, Side.BUY, Decimal("0.016"), Decimal("60000.1"), Purpose.OPEN, t, Decimal("60000.1")),
            e._leg(1, 0, Side.SELL, Decimal("0.016"), Decimal("60000.0"), Purpose.OPEN, t, Decimal("60000.0")))


def test_risk_gate_pair(benchmark, engine: Engine) -> None:
    legs = _legs(engine)
    got = benchmark(lambda: engine.gate.check(legs, open_trades=1, now_ns=legs[0].quote_ts_recv_ns, view=engine))
    assert got.ok


def test_baseline_choose_size(benchmark, engine: Engine) -> None:
    m = engine.market(0, 0)
    assert m is not None
    benchmark(lambda: choose_size(trade_notional_usd=Decimal(1000), buy_price=Decimal("60000.1"),
                                  sell_price=Decimal("60000.0"), buy_top_size=Decimal(1),
                                  sell_top_size=Decimal(1), buy_market=m, sell_market=m))


def test_capital_reserve_and_close(benchmark) -> None:
    orch = CapitalOrchestrator(make_config().capital)
    orch.on_equity("a", Decimal(100000))
    orch.on_equity("b", Decimal(100000))
    margins = {"a": Decimal("192.01"), "b": Decimal("192.00")}
    n = [0]

    def one() -> None:
        n[0] += 1
        orch.reserve(str(n[0]), Pool.ARBITRAGE, margins)
        orch.close(str(n[0]))

    benchmark(one)
