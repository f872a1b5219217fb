"""The trade lifecycle against real segments, a real journal and paper venues, on a driven clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from kit import make_config, segments

from perpbot.events import EventType, check_event
from perpbot.exec.engine import Engine
from perpbot.exec.journal import Journal
from perpbot.exec.risk import Reason
from perpbot.exec.venues.base import OrderRequest, OrderResult
from perpbot.exec.venues.paper import Fault, FaultKind, PaperVenue
from perpbot.messages import Opportunity
from perpbot.shm import BoardWriter, QuoteBoard, StatusBoard
from perpbot.shm.layout import ExecCounter, FeedState, Hop, TradingState

MS = 1_000_000
T0 = 10**15
RUN = "r1"
BTC = 0
FEE_5 = D("0.0005")  # binanceusdm and okx taker fee, 5 bps


class Clock:
    def __init__(self) -> None:
        self.t = T0
        self.on_sleep: list[Callable[[], None]] = []

    def __call__(self) -> int:
        return self.t

    def advance_ms(self, ms: int) -> None:
        self.t += ms * MS

    async def sleep(self, seconds: float) -> None:
        """The engine's waits (following a resting order) pass on this clock, not the wall's.

        `on_sleep` callbacks run (once each) at the first wait: a test moves the market there.
        """
        while self.on_sleep:
            self.on_sleep.pop(0)()
        self.t += int(seconds * 1e9)
        await asyncio.sleep(0)


class Events:
    """Records what the engine publishes; every payload must carry the seed's fields."""

    def __init__(self) -> None:
        self.seen: list[tuple[EventType, dict[str, Any]]] = []

    def publish(self, kind: EventType, payload: dict[str, Any]) -> None:
        check_event(kind.value, payload)
        self.seen.append((kind, payload))

    def kinds(self) -> list[EventType]:
        return [k for k, _ in self.seen]


class HookedVenue(PaperVenue):
    """A paper venue that lets a test move the board just before an order fills."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.before: Callable[[OrderRequest], None] | None = None
        self.sent: list[OrderRequest] = []

    async def place_order(self, req: OrderRequest) -> OrderResult:
        self.sent.append(req)
        if self.before is not None:
            self.before(req)
        return await super().place_order(req)


@dataclass
class Rig:
    board: QuoteBoard
    status: StatusBoard
    clock: Clock
    journal: Journal
    jpath: Path
    venues: list[HookedVenue]
    writers: list[BoardWriter]
    events: Events
    engine: Engine

    def quote(self, venue: int, bid: float, ask: float, size: float = 1.0,
              age_ms: int = 0, symbol: int = BTC) -> None:
        self.writers[venue].write(symbol, bid, ask, size, size, 1, self.clock.t - age_ms * MS)

    def opp(self, opp_id: int = 1, buy: int = 0, sell: int = 1, age_ms: int = 0) -> Opportunity:
        t = self.clock.t - age_ms * MS
        return Opportunity(opp_id, BTC, buy, sell, 60000.0, 60300.0, 1.0, 1.0, 40.0,
                           1, t - 30_000, t - 20_000, t)

    def on_opp(self, opp: Opportunity | None = None) -> Reason:
        opp = opp or self.opp()
        return asyncio.run(self.engine.on_opportunity(opp, self.clock.t))

    def check(self) -> int:
        return asyncio.run(self.engine.check_open_trades())

    def db(self) -> sqlite3.Connection:
        self.journal.flush()
        con = sqlite3.connect(self.jpath)
        con.row_factory = sqlite3.Row
        return con

    def sent(self) -> list[OrderRequest]:
        return [r for v in self.venues for r in v.sent]


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []
    stack: list[Any] = []

    def build(**sections: dict[str, Any]) -> Rig:
        cfg = make_config(**sections)
        cm = segments(cfg)
        board, status = cm.__enter__()
        stack.append(cm)
        clock = Clock()
        jpath = tmp_path / "data" / "journal.sqlite"
        journal = Journal(jpath, run_id=RUN, clock=clock)
        venues = [HookedVenue(n, i, cfg, board, clock=clock) for i, n in enumerate(cfg.venue_names)]
        for v in venues:
            asyncio.run(v.connect())
            status.set_feed_state(cfg.venue_names.index(v.name), FeedState.CONNECTED)
        writers = [board.writer(i) for i in range(len(venues))]
        events = Events()
        engine = Engine(cfg, board, status, journal, venues, run_id=RUN, clock=clock,
                        events=events, sleep=clock.sleep)
        asyncio.run(engine.start())
        rig = Rig(board, status, clock, journal, jpath, venues, writers, events, engine)
        made.append(rig)
        return rig

    yield build
    for r in made:
        r.journal.close()
        for w in r.writers:
            w.release()
    for cm in stack:
        cm.__exit__(None, None, None)


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    r = make_rig()
    # binanceusdm (0) is cheap, okx (1) is dear: 50 bps gross, 40 bps after both fees
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    return r


def _assert_journal_consistent(r: Rig) -> None:
    con = r.db()
    orphans = con.execute("SELECT COUNT(*) FROM fills f LEFT JOIN orders o"
                          " ON f.client_order_id = o.client_order_id"
                          " WHERE o.client_order_id IS NULL").fetchone()[0]
    assert orphans == 0
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("SELECT COUNT(*) FROM orders WHERE status='intent'").fetchone()[0] == 0
    con.close()
    st = r.engine.statistics()
    # every order sent passed the gate once; only a kill in between holds one back
    assert st.orders_sent + r.engine.gate.held == st.orders_approved
    # a resend (outcome unknown) reuses its client order id: one order, released by the gate once
    assert st.orders_sent == len({q.client_order_id for q in r.sent()})


# -- opening -----------------------------------------------------------------------------------


def test_an_opportunity_opens_a_hedged_trade(rig: Rig) -> None:
    assert rig.on_opp() is Reason.OK
    buy, sell = rig.venues[0].sent[0], rig.venues[1].sent[0]
    assert (buy.client_order_id, sell.client_order_id) == ("r1-1-open-buy", "r1-1-open-sell")
    assert (buy.qty, buy.price, sell.qty, sell.price) == (
        D("0.016"), D("60000.0"), D("0.016"), D("60300.0"))
    assert rig.engine.book.qty(0, BTC) == D("0.016")
    assert rig.engine.book.qty(1, BTC) == D("-0.016")
    assert float(rig.status.positions[1, BTC]["qty"]) == -0.016

    con = rig.db()
    t = con.execute("SELECT * FROM trades").fetchone()
    assert (t["trade_id"], t["state"], t["qty"], t["buy_venue"], t["sell_venue"]) == (
        1, "open", "0.016", "binanceusdm", "okx")
    from perpbot.scanner.edge import net_edge_bps
    assert t["entry_edge_bps"] == pytest.approx(net_edge_bps(60000.0, 60300.0, 5.0, 5.0))
    orders = con.execute("SELECT * FROM orders ORDER BY client_order_id").fetchall()
    assert [(o["purpose"], o["side"], o["status"]) for o in orders] == [
        ("open", "buy", "filled"), ("open", "sell", "filled")]
    assert all(o["ts_decide_ns"] <= o["ts_dispatch_ns"] for o in orders)
    assert con.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 2
    con.close()

    (ring,) = rig.status.recent("trades")
    assert (int(ring["trade_id"]), int(ring["state"]), float(ring["size"])) == (1, 1, 0.016)
    c = rig.engine.counters()
    assert c[ExecCounter.OPPS_RECEIVED] == 1 and c[ExecCounter.TRADES_OPENED] == 1
    assert c[ExecCounter.ORDERS_APPROVED] == 2 and c[ExecCounter.ORDERS_SENT] == 2
    assert c[ExecCounter.FILLS] == 2
    kinds = rig.events.kinds()
    assert kinds.count(EventType.ORDER_PLACED) == 2 and kinds.count(EventType.ORDER_FILLED) == 2
    pos = [p for k, p in rig.events.seen if k is EventType.POSITION_UPDATED][-1]
    assert pos["binanceusdm"]["BTC-PERP"] == 0.016 and pos["okx"]["BTC-PERP"] == -0.016
    _assert_journal_consistent(rig)


def test_latency_hops_reach_the_status_segment(rig: Rig) -> None:
    rig.on_opp()
    rig.engine.flush_histograms()
    for hop in (Hop.DETECT_TO_EXEC, Hop.EXEC_TO_DECIDE, Hop.DECIDE_TO_DISPATCH, Hop.TICK_TO_ORDER):
        assert sum(rig.status.histogram(hop)) == 1, hop
    rig.engine.flush_histograms()  # drained: nothing added twice
    assert sum(rig.status.histogram(Hop.TICK_TO_ORDER)) == 1


def test_an_old_opportunity_is_dropped_counted_and_journaled(rig: Rig) -> None:
    assert rig.on_opp(rig.opp(age_ms=101)) is Reason.TOO_OLD  # max_opportunity_age_ms 100
    assert rig.sent() == []
    assert rig.engine.counters()[ExecCounter.OPPS_TOO_OLD] == 1
    con = rig.db()
    assert tuple(con.execute("SELECT opp_id, reason FROM skips").fetchone()) == (1, "TOO_OLD")
    con.close()


def test_edge_is_recomputed_from_the_board_net_of_fees(rig: Rig) -> None:
    rig.quote(1, 60055.0, 60055.1)  # 9.2 bps gross, -0.8 after 10 bps of fees
    assert rig.on_opp() is Reason.EDGE_GONE
    assert rig.sent() == []
    assert rig.engine.statistics().skips == {"EDGE_GONE": 1}


def test_stale_quote_sends_nothing(rig: Rig) -> None:
    rig.quote(1, 60300.0, 60300.1, age_ms=1001)  # stale_after_ms 1000
    assert rig.on_opp() is Reason.STALE_QUOTE
    assert rig.sent() == []
    assert rig.engine.counters()[ExecCounter.RISK_REJECTS] == 1


def test_disconnected_feed_sends_nothing(rig: Rig) -> None:
    rig.status.set_feed_state(0, FeedState.DOWN)
    assert rig.on_opp() is Reason.FEED_DOWN
    assert rig.sent() == []


def test_missing_quote_and_bad_indices_are_skipped(rig: Rig) -> None:
    assert rig.on_opp(rig.opp(buy=2)) is Reason.NO_QUOTE  # bybit never quoted
    assert rig.on_opp(rig.opp(buy=1, sell=1)) is Reason.BAD_MESSAGE
    assert rig.on_opp(rig.opp(sell=9)) is Reason.BAD_MESSAGE
    assert rig.sent() == []


def test_halted_sends_no_order(rig: Rig) -> None:
    rig.status.set_halt()
    assert rig.on_opp() is Reason.HALTED
    assert rig.sent() == [] and all(v.ledger == [] for v in rig.venues)
    con = rig.db()
    assert con.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0
    con.close()


def test_paused_opens_nothing(rig: Rig) -> None:
    rig.status.set_trading_state(TradingState.PAUSED)
    assert rig.on_opp() is Reason.PAUSED
    assert rig.sent() == []


def test_max_open_trades_is_enforced(make_rig: Callable[..., Rig]) -> None:
    r = make_rig(risk={"max_open_trades": 1})
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    assert r.on_opp(r.opp(1)) is Reason.OK
    assert r.on_opp(r.opp(2)) is Reason.MAX_OPEN_TRADES
    assert len(r.sent()) == 2


def test_thin_book_caps_the_size(rig: Rig) -> None:
    rig.quote(1, 60300.0, 60300.1, size=0.0105)
    rig.on_opp()
    assert [r.qty for r in rig.sent()] == [D("0.010"), D("0.010")]


# -- closing -----------------------------------------------------------------------------------


def test_trade_closes_on_convergence_with_pnl_after_all_four_fees(rig: Rig) -> None:
    rig.on_opp()
    assert rig.check() == 0  # the spread has not moved: closing now loses the fees
    rig.clock.advance_ms(50)
    rig.quote(0, 60150.0, 60150.1)
    rig.quote(1, 60149.9, 60150.0)
    assert rig.check() == 1
    q = D("0.016")
    expected = (q * (D("60150.0") - D("60000.0")) + q * (D("60300.0") - D("60150.0"))
                - q * D("60000.0") * FEE_5 - q * D("60300.0") * FEE_5
                - q * D("60150.0") * FEE_5 - q * D("60150.0") * FEE_5)
    assert expected == D("2.8752")
    con = rig.db()
    t = con.execute("SELECT * FROM trades").fetchone()
    assert (t["state"], t["close_reason"], D(t["realized_pnl"])) == ("closed", "take_profit",
                                                                     expected)
    closes = con.execute("SELECT * FROM orders WHERE purpose='close' ORDER BY side").fetchall()
    assert [(o["client_order_id"], o["venue"], o["side"], o["reduce_only"]) for o in closes] == [
        ("r1-1-close-buy", "okx", "buy", 1), ("r1-1-close-sell", "binanceusdm", "sell", 1)]
    con.close()
    assert rig.engine.book.qty(0, BTC) == 0 and rig.engine.book.qty(1, BTC) == 0
    assert rig.engine.book.realized_pnl() == expected
    assert rig.engine.trades == {}
    (ring,) = rig.status.recent("trades")
    assert int(ring["state"]) == 2 and float(ring["realized_pnl"]) == pytest.approx(2.8752)
    done = [p for k, p in rig.events.seen if k is EventType.TRADE_COMPLETED]
    assert len(done) == 1 and done[0]["buy_order"] == "r1-1-open-buy"
    assert done[0]["sell_order"] == "r1-1-open-sell"
    assert done[0]["realized_pnl"] == pytest.approx(2.8752)
    st = rig.engine.statistics()
    assert (st.trades_opened, st.trades_closed, st.open_trades) == (1, 1, 0)
    _assert_journal_consistent(rig)


def test_take_profit_threshold_is_in_bps_of_notional(make_rig: Callable[..., Rig]) -> None:
    r = make_rig(exec={"take_profit_bps": 50.0})
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    r.on_opp()
    r.quote(0, 60150.0, 60150.1)
    r.quote(1, 60149.9, 60150.0)
    assert r.check() == 0  # 2.8752 on 960 USD is ~30 bps, below 50
    r.quote(0, 60300.0, 60300.1)  # buy venue rallies to the short's entry: ~48 bps + ...
    r.quote(1, 60000.0, 60000.1)  # ... and the sell venue drops to the long's entry
    assert r.check() == 1


def test_trade_closes_at_max_hold_whatever_the_pnl(rig: Rig) -> None:
    rig.on_opp()
    rig.clock.advance_ms(1999)
    rig.quote(0, 59999.9, 60000.0)
    rig.quote(1, 60300.0, 60300.1)
    assert rig.check() == 0
    rig.clock.advance_ms(1)  # max_hold_ms 2000
    assert rig.check() == 1
    q = D("0.016")
    expected = (q * (D("59999.9") - D("60000.0")) + q * (D("60300.0") - D("60300.1"))
                - q * (D("60000.0") + D("60300.0") + D("59999.9") + D("60300.1")) * FEE_5)
    con = rig.db()
    t = con.execute("SELECT state, close_reason, realized_pnl FROM trades").fetchone()
    assert (t[0], t[1], D(t[2])) == ("closed", "max_hold", expected)
    con.close()
    _assert_journal_consistent(rig)


def test_a_stale_board_holds_the_close_until_quotes_are_fresh(rig: Rig) -> None:
    rig.on_opp()
    rig.clock.advance_ms(3000)  # past max hold, and the quotes are 3 s old
    assert rig.check() == 0
    assert len(rig.sent()) == 2  # only the opening legs
    assert len(rig.engine.trades) == 1
    rig.quote(0, 59999.9, 60000.0)
    rig.quote(1, 60300.0, 60300.1)
    assert rig.check() == 1


def test_halted_sends_no_close_either(rig: Rig) -> None:
    rig.on_opp()
    rig.status.set_halt()
    rig.clock.advance_ms(5000)
    rig.quote(0, 60150.0, 60150.1)
    rig.quote(1, 60149.9, 60150.0)
    assert rig.check() == 0
    assert asyncio.run(rig.engine.flatten()) == 0
    assert len(rig.sent()) == 2
    assert len(rig.engine.trades) == 1


def test_paused_still_closes(rig: Rig) -> None:
    rig.on_opp()
    rig.status.set_trading_state(TradingState.PAUSED)
    rig.quote(0, 60150.0, 60150.1)
    rig.quote(1, 60149.9, 60150.0)
    assert rig.check() == 1


def test_flatten_closes_everything_now(rig: Rig) -> None:
    rig.on_opp()
    assert asyncio.run(rig.engine.flatten()) == 1
    con = rig.db()
    assert con.execute("SELECT close_reason FROM trades").fetchone()[0] == "flatten"
    con.close()


# -- failed and partial legs -------------------------------------------------------------------


def test_a_failed_leg_is_hedged_on_its_own_venue(rig: Rig) -> None:
    def book_runs_away(req: OrderRequest) -> None:
        if req.client_order_id.endswith("open-sell"):
            rig.quote(1, 60000.0, 60000.1)  # the bid drops below the IOC limit

    rig.venues[1].before = book_runs_away
    assert rig.on_opp() is Reason.OK
    hedge = rig.venues[1].sent[-1]
    assert (hedge.client_order_id, hedge.side.value, hedge.qty, hedge.reduce_only,
            hedge.price) == ("r1-1-hedge-sell", "sell", D("0.016"), False, None)
    assert rig.engine.book.qty(0, BTC) == D("0.016") and rig.engine.book.qty(1, BTC) == D("-0.016")
    (trade,) = rig.engine.trades.values()
    assert trade.state == "open" and trade.hedged_qty == D("0.016")
    con = rig.db()
    statuses = dict(con.execute("SELECT client_order_id, status FROM orders").fetchall())
    assert statuses == {"r1-1-open-buy": "filled", "r1-1-open-sell": "expired",
                        "r1-1-hedge-sell": "filled"}
    kinds = [r[0] for r in con.execute("SELECT kind FROM incidents")]
    assert kinds == ["leg_mismatch", "hedge", "legs_level"]
    con.close()
    actions = [p["action"] for k, p in rig.events.seen if k is EventType.LEGGING]
    assert actions == ["leg_mismatch", "hedge", "legs_level"]
    _assert_journal_consistent(rig)


def test_a_failed_leg_is_unwound_when_it_cannot_be_hedged(rig: Rig) -> None:
    rig.venues[1].inject(Fault(FaultKind.REJECT, count=2))  # the open sell and its hedge
    assert rig.on_opp() is Reason.OK
    unwind = rig.venues[0].sent[-1]
    assert (unwind.client_order_id, unwind.side.value, unwind.qty, unwind.reduce_only,
            unwind.price) == ("r1-1-unwind-sell", "sell", D("0.016"), True, None)
    assert rig.engine.book.qty(0, BTC) == 0 and rig.engine.book.qty(1, BTC) == 0
    assert rig.engine.trades == {}
    con = rig.db()
    t = con.execute("SELECT state, close_reason, realized_pnl FROM trades").fetchone()
    q = D("0.016")
    loss = q * (D("59999.9") - D("60000.0")) - q * (D("60000.0") + D("59999.9")) * FEE_5
    assert (t[0], t[1], D(t[2])) == ("failed", "open_failed", loss)
    statuses = dict(con.execute("SELECT client_order_id, status FROM orders").fetchall())
    assert statuses == {"r1-1-open-buy": "filled", "r1-1-open-sell": "rejected",
                        "r1-1-hedge-sell": "rejected", "r1-1-unwind-sell": "filled"}
    kinds = [r[0] for r in con.execute("SELECT kind FROM incidents")]
    assert kinds == ["leg_mismatch", "hedge", "legs_level"]
    con.close()
    st = rig.engine.statistics()
    assert (st.trades_opened, st.trades_closed) == (0, 0)
    (first, *_) = [p for k, p in rig.events.seen if k is EventType.LEGGING]
    assert (first["symbol"], first["action"]) == ("BTC-PERP", "leg_mismatch")
    _assert_journal_consistent(rig)


def test_a_partial_leg_is_hedged_to_the_same_size(rig: Rig) -> None:
    def thin_out(req: OrderRequest) -> None:
        if req.client_order_id.endswith("open-sell"):
            rig.quote(1, 60300.0, 60300.1, size=0.010)

    rig.venues[1].before = thin_out
    rig.on_opp()
    hedge = rig.venues[1].sent[-1]
    assert (hedge.client_order_id, hedge.qty) == ("r1-1-hedge-sell", D("0.006"))
    assert rig.engine.book.qty(0, BTC) == D("0.016")
    assert rig.engine.book.qty(1, BTC) == D("-0.016")
    (trade,) = rig.engine.trades.values()
    assert trade.state == "open" and trade.hedged_qty == D("0.016")
    con = rig.db()
    assert tuple(con.execute("SELECT state, qty FROM trades").fetchone()) == ("open", "0.016")
    con.close()
    assert rig.engine.counters()[ExecCounter.TRADES_OPENED] == 1
    _assert_journal_consistent(rig)


def test_a_naked_leg_is_reported_and_retried_until_flat(rig: Rig) -> None:
    def fail_sell_and_kill_quote(req: OrderRequest) -> None:
        if req.client_order_id.endswith("open-sell"):
            rig.venues[1].inject(Fault(FaultKind.REJECT, count=4))  # the open sell and every hedge
            rig.quote(0, 59999.9, 60000.0, age_ms=5000)  # the unwind's quote goes stale

    rig.venues[1].before = fail_sell_and_kill_quote
    rig.on_opp()
    assert rig.engine.book.qty(0, BTC) == D("0.016")  # naked, the unwind was refused
    con = rig.db()
    kinds = [r[0] for r in con.execute("SELECT kind FROM incidents ORDER BY id")]
    # three rounds of: hedge on its venue (rejected), unwind (refused: stale quote)
    assert kinds == ["leg_mismatch"] + ["hedge", "naked_leg"] * 3
    con.close()
    rig.venues[1].before = None
    rig.quote(0, 59999.9, 60000.0)  # fresh again
    rig.check()
    assert rig.engine.book.qty(0, BTC) == 0
    assert rig.engine.trades == {}
    assert rig.venues[0].sent[-1].client_order_id == "r1-1-unwind-sell"
    con = rig.db()
    assert con.execute("SELECT state FROM trades").fetchone()[0] == "failed"
    con.close()
    _assert_journal_consistent(rig)


def test_kill_switch_between_open_and_unwind_sends_nothing_more(rig: Rig) -> None:
    def fail_and_kill(req: OrderRequest) -> None:
        if req.client_order_id.endswith("open-sell"):
            rig.quote(1, 60000.0, 60000.1)
            rig.status.set_halt()

    rig.venues[1].before = fail_and_kill
    rig.on_opp()
    assert len(rig.sent()) == 2  # no unwind after the kill
    assert rig.engine.book.qty(0, BTC) == D("0.016")
    rig.quote(0, 59999.9, 60000.0)
    rig.check()
    assert len(rig.sent()) == 2


def test_client_order_ids_never_repeat_across_a_reopened_journal(rig: Rig,
                                                                 make_rig: Callable[..., Rig]) -> None:
    rig.on_opp()
    asyncio.run(rig.engine.flatten())
    rig.journal.close()
    journal = Journal(rig.jpath, run_id=RUN, clock=rig.clock)
    try:
        engine = Engine(rig.engine.cfg, rig.board, rig.status, journal, rig.venues, run_id=RUN,
                        clock=rig.clock)
        asyncio.run(engine.start())
        assert asyncio.run(engine.on_opportunity(rig.opp(2), rig.clock.t)) is Reason.OK
        assert rig.venues[0].sent[-1].client_order_id == "r1-2-open-buy"
    finally:
        journal.close()
    rig.journal = Journal(rig.jpath, run_id=RUN, clock=rig.clock)  # for the fixture to close
    ids = [r.client_order_id for r in rig.sent()]
    assert len(ids) == len(set(ids))


def test_drain_stops_new_decisions(rig: Rig) -> None:
    asyncio.run(rig.engine.drain())
    assert rig.on_opp() is Reason.STOPPING
    assert rig.sent() == []


def test_the_daily_loss_limit_stops_new_trades_and_is_reported_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(risk={"max_daily_loss_usd": 0.01})
    rig.quote(0, 59999.9, 60000.0)
    rig.quote(1, 60300.0, 60300.1)

    rig.venues[1].inject(Fault(FaultKind.REJECT, count=2))  # the sell and its hedge: unwound at a loss
    assert rig.on_opp() is Reason.OK
    loss = rig.db().execute("SELECT realized_pnl FROM trades").fetchone()[0]
    assert D(loss) < D("-0.01")
    rig.venues[1].before = None
    rig.quote(1, 60300.0, 60300.1)
    sent_before = len(rig.sent())
    assert rig.on_opp() is Reason.DAILY_LOSS
    assert rig.on_opp() is Reason.DAILY_LOSS
    assert len(rig.sent()) == sent_before  # nothing new left the process
    (event,) = [p for k, p in rig.events.seen if k is EventType.DAILY_LOSS_LIMIT]
    assert event["limit"] == 0.01 and event["realized_pnl"] == float(D(loss))


def test_the_daily_loss_limit_survives_a_restart(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(risk={"max_daily_loss_usd": 0.01})
    rig.quote(0, 59999.9, 60000.0)
    rig.quote(1, 60300.0, 60300.1)
    rig.venues[1].inject(Fault(FaultKind.REJECT, count=2))  # the sell and its hedge: unwound at a loss
    assert rig.on_opp() is Reason.OK
    rig.journal.flush()
    # a new engine on the same journal (what a restarted exec builds) remembers today's loss
    again = Engine(rig.engine.cfg, rig.board, rig.status, rig.journal, rig.venues, run_id=RUN, clock=rig.clock)
    rig.quote(1, 60300.0, 60300.1)
    rig.venues[1].before = None
    assert asyncio.run(again.on_opportunity(rig.opp(), rig.clock())) is Reason.DAILY_LOSS
