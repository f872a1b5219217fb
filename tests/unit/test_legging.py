"""Each venue failure injected into the paper venue while a trade opens: exposure comes back level.

The engine runs on test_engine's rig (real segments, a real journal, real paper
venues, a driven clock whose sleeps are the engine's waits). After every
scenario the trade is flattened and three things must hold: every venue
reports flat, the engine's book agrees with every venue, and the journal holds
exactly the paper venues' fills (each fill once, same quantity, price, fee).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal as D

import test_engine
from test_engine import BTC, RUN, Rig

from perpbot.events import EventType
from perpbot.exec.engine import Engine
from perpbot.exec.ratelimit import RateBudget, RateLimit
from perpbot.exec.risk import Reason
from perpbot.exec.venues.base import OrderRequest, OrderType
from perpbot.exec.venues.paper import Fault, FaultKind

make_rig = test_engine.make_rig
rig = test_engine.rig

Q = D("0.016")  # the rig's trade size: 1000 USD at 60300 rounded to the 0.001 lot


def _incidents(r: Rig) -> list[str]:
    con = r.db()
    try:
        return [k for (k,) in con.execute("SELECT kind FROM incidents ORDER BY id")]
    finally:
        con.close()


def _statuses(r: Rig) -> dict[str, str]:
    con = r.db()
    try:
        return dict(con.execute("SELECT client_order_id, status FROM orders").fetchall())
    finally:
        con.close()


def _journal_fills(r: Rig) -> set[tuple[str, str, D, D, D]]:
    con = r.db()
    try:
        return {(f, v, D(q), D(p), D(fee)) for f, v, q, p, fee in
                con.execute("SELECT fill_id, venue, qty, price, fee FROM fills")}
    finally:
        con.close()


def _venue_fills(r: Rig) -> set[tuple[str, str, D, D, D]]:
    return {(f.fill_id, f.venue, f.qty, f.price, f.fee) for v in r.venues for f in v.ledger
            if not f.client_order_id.startswith("external-")}


def _book_agrees(r: Rig) -> None:
    for i, v in enumerate(r.venues):
        reported = asyncio.run(v.positions())
        got = reported["BTC-PERP"].qty if "BTC-PERP" in reported else D(0)
        assert r.engine.book.qty(i, BTC) == got, v.name


def _flat_and_reconciled(r: Rig) -> None:
    """Flatten, then: every venue flat, book == venues, journal fills == venue ledgers."""
    for v in r.venues:
        v.before = None
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    r.quote(2, 60290.0, 60290.1)
    asyncio.run(r.engine.flatten())
    assert r.engine.trades == {}
    for v in r.venues:
        assert asyncio.run(v.positions()) == {}, v.name
    _book_agrees(r)
    assert _journal_fills(r) == _venue_fills(r)
    test_engine._assert_journal_consistent(r)


# -- a leg that does not fill as sent -----------------------------------------------------------


def test_a_leg_that_never_fills_is_cancelled_at_its_deadline_then_hedged(rig: Rig) -> None:
    rig.venues[1].inject(Fault(FaultKind.NEVER_FILL))
    t0 = rig.clock.t
    assert rig.on_opp() is Reason.OK
    # the open sell rested until exec.order_timeout_ms (on the rig's clock), then was cancelled
    assert rig.clock.t - t0 >= rig.engine.cfg.exec.order_timeout_ms * test_engine.MS
    st = _statuses(rig)
    assert st["r1-1-open-sell"] == "expired" and st["r1-1-hedge-sell"] == "filled"
    (trade,) = rig.engine.trades.values()
    assert trade.balanced and trade.long_qty == Q
    _book_agrees(rig)
    _flat_and_reconciled(rig)


def test_a_partly_filled_leg_is_hedged_for_the_rest(rig: Rig) -> None:
    rig.venues[1].inject(Fault(FaultKind.PARTIAL, fraction=D("0.25")))
    assert rig.on_opp() is Reason.OK
    hedge = rig.venues[1].sent[-1]
    assert (hedge.client_order_id, hedge.qty) == ("r1-1-hedge-sell", Q - D("0.004"))
    (trade,) = rig.engine.trades.values()
    assert trade.balanced and trade.hedged_qty == Q
    _flat_and_reconciled(rig)


def test_a_timeout_after_the_venue_executed_is_answered_by_asking_never_by_resending(rig: Rig) -> None:
    rig.venues[1].inject(Fault(FaultKind.TIMEOUT, executed=True))
    assert rig.on_opp() is Reason.OK
    sells = [r.client_order_id for r in rig.venues[1].sent]
    assert sells == ["r1-1-open-sell"]  # sent once: fetch_order found it filled
    assert _statuses(rig)["r1-1-open-sell"] == "filled"
    (trade,) = rig.engine.trades.values()
    assert trade.balanced and trade.short_qty == Q
    assert "resent" not in _incidents(rig)
    _flat_and_reconciled(rig)


def test_a_timeout_before_the_venue_got_it_is_resent_with_the_same_client_order_id(rig: Rig) -> None:
    rig.venues[1].inject(Fault(FaultKind.TIMEOUT, executed=False))
    assert rig.on_opp() is Reason.OK
    sells = [r.client_order_id for r in rig.venues[1].sent]
    assert sells == ["r1-1-open-sell", "r1-1-open-sell"]
    assert len([f for f in rig.venues[1].ledger if f.client_order_id == "r1-1-open-sell"]) == 1
    assert "resent" in _incidents(rig)
    (trade,) = rig.engine.trades.values()
    assert trade.balanced
    _flat_and_reconciled(rig)


def test_a_fill_racing_the_cancel_is_settled_by_the_venues_answer(rig: Rig) -> None:
    rig.venues[1].inject(Fault(FaultKind.LATE_FILL))
    assert rig.on_opp() is Reason.OK
    st = _statuses(rig)
    assert st["r1-1-open-sell"] == "filled"  # the cancel lost: the venue filled it first
    assert "r1-1-hedge-sell" not in st  # so nothing was hedged twice
    assert "cancel_race" in _incidents(rig)
    (trade,) = rig.engine.trades.values()
    assert trade.balanced and trade.short_qty == Q
    _flat_and_reconciled(rig)


def test_a_leg_its_venue_keeps_refusing_is_hedged_on_the_next_best_venue(rig: Rig) -> None:
    rig.quote(2, 60280.0, 60280.1)  # bybit: a fresh bid, below okx's but the best left
    rig.quote(3, 60100.0, 60100.1)  # bitget: worse
    rig.venues[1].inject(Fault(FaultKind.REJECT, count=2))  # the open sell and its hedge there
    assert rig.on_opp() is Reason.OK
    (trade,) = rig.engine.trades.values()
    assert trade.sell_venue == 2 and trade.balanced
    assert rig.venues[2].sent[-1].client_order_id == "r1-1-hedge-sell-1"
    assert rig.engine.book.qty(2, BTC) == -Q and rig.engine.book.qty(1, BTC) == 0
    con = rig.db()
    assert con.execute("SELECT sell_venue FROM trades").fetchone()[0] == "bybit"
    con.close()
    assert "leg_moved" in _incidents(rig)
    actions = [p["action"] for k, p in rig.events.seen if k is EventType.LEGGING]
    assert actions == ["leg_mismatch", "hedge", "leg_moved", "hedge", "legs_level"]
    _flat_and_reconciled(rig)


def test_a_naked_leg_is_never_older_than_the_deadline_while_quotes_allow(rig: Rig) -> None:
    # every hedge refused by the venue: the filled leg is unwound within the same decision
    rig.venues[1].inject(Fault(FaultKind.REJECT, count=10))
    t0 = rig.clock.t
    assert rig.on_opp() is Reason.OK
    assert rig.engine.trades == {}
    assert rig.clock.t - t0 <= rig.engine.cfg.exec.legging_deadline_ms * test_engine.MS
    _flat_and_reconciled(rig)


# -- maker first ----------------------------------------------------------------------------------


def _cross_on_first_sleep(r: Rig, venue: int, bid: float, ask: float) -> None:
    """Move venue's book once the engine starts waiting on a resting order."""
    r.clock.on_sleep.append(lambda: r.quote(venue, bid, ask))


def _maker_rig(make_rig: Callable[..., Rig]) -> Rig:
    r = make_rig(exec={"entry_mode": "maker_first", "maker_venue": "buy", "maker_timeout_ms": 200})
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    return r


def test_maker_first_rests_a_post_only_leg_then_hedges_taker(make_rig: Callable[..., Rig]) -> None:
    r = _maker_rig(make_rig)
    _cross_on_first_sleep(r, 0, 59999.0, 59999.5)  # a seller crosses our resting bid
    assert r.on_opp() is Reason.OK
    first = r.venues[0].sent[0]
    assert (first.client_order_id, first.order_type, first.price) == (
        "r1-1-open-buy", OrderType.POST_ONLY, D("59999.9"))
    assert r.venues[1].sent[-1].client_order_id == "r1-1-hedge-sell"
    (trade,) = r.engine.trades.values()
    assert trade.balanced and trade.long_qty == Q and trade.buy_avg == D("59999.9")
    _flat_and_reconciled(r)


def test_maker_first_falls_back_to_taker_when_the_maker_leg_does_not_fill(
        make_rig: Callable[..., Rig]) -> None:
    r = _maker_rig(make_rig)
    assert r.on_opp() is Reason.OK
    con = r.db()
    rows = con.execute("SELECT trade_id, state, close_reason FROM trades ORDER BY trade_id").fetchall()
    con.close()
    assert [tuple(x) for x in rows] == [(1, "failed", "maker_unfilled"), (2, "open", None)]
    st = _statuses(r)
    assert st["r1-1-open-buy"] == "expired"  # cancelled at the maker timeout, nothing filled
    assert st["r1-2-open-buy"] == "filled" and st["r1-2-open-sell"] == "filled"
    assert r.engine.statistics().trades_opened == 1
    _flat_and_reconciled(r)


# -- the account's view against ours -----------------------------------------------------------------


def test_a_position_mismatch_pauses_the_symbol_until_the_venue_agrees(rig: Rig) -> None:
    assert rig.on_opp() is Reason.OK
    assert asyncio.run(rig.engine.reconcile_positions()) == []
    rig.venues[0].inject(Fault(FaultKind.POSITION_DRIFT, symbol="BTC-PERP", qty=D("-0.005")))
    found = asyncio.run(rig.engine.reconcile_positions())
    assert found == [("binanceusdm", "BTC-PERP", Q, Q - D("0.005"))]
    assert rig.on_opp(rig.opp(2)) is Reason.SYMBOL_PAUSED
    (event,) = [p for k, p in rig.events.seen if k is EventType.POSITION_MISMATCH]
    assert (event["exchange"], event["symbol"], event["expected"], event["actual"]) == (
        "binanceusdm", "BTC-PERP", 0.016, 0.011)
    assert "position_mismatch" in _incidents(rig)
    # the operator (or an ADL reversal) puts the position back: trading the symbol resumes
    rig.venues[0].inject(Fault(FaultKind.POSITION_DRIFT, symbol="BTC-PERP", qty=D("0.005")))
    assert asyncio.run(rig.engine.reconcile_positions()) == []
    assert not rig.engine.paused_symbols
    assert rig.on_opp(rig.opp(3)) is Reason.OK


# -- money: funding, capital, rate budgets ------------------------------------------------------------


def test_expected_funding_over_the_hold_enters_the_entry_edge(make_rig: Callable[..., Rig]) -> None:
    # long on binanceusdm pays 50 bps per hour; held up to 8 h: -400 bps swamps the 40 bps edge
    r = make_rig(exec={"max_hold_ms": 8 * 3_600_000},
                 paper={"venues": {"binanceusdm": {"funding_rate_bps": 50.0, "funding_interval_h": 1}}})
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    asyncio.run(r.engine.refresh_funding())
    assert r.on_opp() is Reason.EDGE_GONE
    con = r.db()
    r.journal.flush()
    detail = con.execute("SELECT detail FROM skips").fetchone()[0]
    con.close()
    assert "funding -400.00 bps" in detail
    assert r.sent() == []


def test_booked_funding_is_in_the_trades_pnl_and_equals_the_venues(rig: Rig) -> None:
    assert rig.on_opp() is Reason.OK
    now_ms = int(time.time() * 1000)
    for v in rig.venues[:2]:
        v.book_funding(now_ms + 8 * 3_600_000)
    asyncio.run(rig.engine.refresh_funding())
    (trade,) = rig.engine.trades.values()
    paid = sum((p.amount for v in rig.venues[:2] for p in asyncio.run(v.funding_payments(0))), D(0))
    assert trade.funding == paid
    _flat_and_reconciled(rig)
    con = rig.db()
    pnl = D(con.execute("SELECT realized_pnl FROM trades").fetchone()[0])
    booked = sum((D(a) for (a,) in con.execute("SELECT amount FROM funding")), D(0))
    con.close()
    assert booked == paid
    realized = sum((asyncio.run(v.balances())["USD"].extra["realized_pnl"]
                    + asyncio.run(v.balances())["USD"].extra["funding"] for v in rig.venues), D(0))
    assert pnl == realized  # to the last digit: the journal's PnL is the venues'


def test_capital_that_cannot_cover_the_margin_refuses_the_trade(make_rig: Callable[..., Rig]) -> None:
    # 1000 USD equity: margin headroom is fine (192 USD needed), but the arbitrage pool has 100
    r = make_rig(paper={"initial_balance_usd": 1000.0},
                 capital={"volume_pct": 0.0, "arbitrage_pct": 10.0, "reserve_pct": 90.0})
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    assert r.on_opp() is Reason.CAPITAL
    assert r.sent() == []
    assert r.engine.gate.approved == r.engine.gate.sent == 0


def test_spent_entry_budget_skips_entries_but_never_blocks_the_exit(rig: Rig) -> None:
    # one order per minute for entries (50 % headroom of 2): the exits still have theirs
    budgets = {n: RateBudget((RateLimit(2, 60_000, "orders"),), headroom_pct=50, clock=rig.clock)
               for n in rig.engine.cfg.venue_names}
    engine = Engine(rig.engine.cfg, rig.board, rig.status, rig.journal, rig.venues, run_id=RUN,
                    clock=rig.clock, budgets=budgets, sleep=rig.clock.sleep)
    asyncio.run(engine.start())
    rig.engine = engine
    assert rig.on_opp() is Reason.OK
    assert rig.on_opp(rig.opp(2)) is Reason.RATE_LIMIT
    assert asyncio.run(engine.flatten()) == 1
    assert engine.trades == {}
    g = engine.gate  # a skip for budget happens before the gate: approved orders are all sent
    assert g.approved == g.sent == 4


def test_every_order_sent_was_checked_and_approved(rig: Rig) -> None:
    rig.venues[1].inject(Fault(FaultKind.REJECT, count=2))
    rig.on_opp()
    rig.on_opp(rig.opp(2))
    asyncio.run(rig.engine.flatten())
    g = rig.engine.gate
    sent = [r for v in rig.venues for r in v.sent]
    ids = [r.client_order_id for r in sent]
    # resends reuse their id; every distinct order was released by the gate exactly once
    assert g.sent == len(set(ids)) and g.sent + g.held == g.approved <= g.checked



def test_readonly_mode_journals_opportunities_and_sends_nothing(make_rig: Callable[..., Rig]) -> None:
    r = make_rig(mode="readonly")
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1)
    assert r.on_opp() is Reason.READ_ONLY
    assert r.sent() == [] and r.engine.gate.checked == 0
    r.journal.flush()
    con = r.db()
    assert con.execute("SELECT reason FROM skips").fetchone()[0] == "READ_ONLY"
    con.close()


def test_balances_are_read_again_after_fills(rig: Rig) -> None:
    before = rig.engine.margin_free(0)

    async def trade_and_settle() -> None:
        assert await rig.engine.on_opportunity(rig.opp(), rig.clock.t) is Reason.OK
        await rig.engine.capital_settled()

    asyncio.run(trade_and_settle())
    after = rig.engine.margin_free(0)
    assert before is not None and after is not None and after < before  # margin now locked
    assert float(after) == float(rig.status.capital[0]["free"])
    snaps = [p for k, p in rig.events.seen if k is EventType.CAPITAL_SNAPSHOT_UPDATE]
    assert "binanceusdm" in snaps[-1] and "okx" in snaps[-1]


def test_stopping_unwinds_a_leg_left_naked_but_keeps_hedged_trades(rig: Rig) -> None:
    assert rig.on_opp() is Reason.OK  # trade 1: hedged, stays open through the stop

    def naked(req: OrderRequest) -> None:
        if req.client_order_id.endswith("2-open-sell"):
            rig.venues[1].inject(Fault(FaultKind.REJECT, count=4))  # the open sell and every hedge
            rig.quote(0, 59999.9, 60000.0, age_ms=5000)  # the unwind is refused: stale quote

    rig.venues[1].before = naked
    rig.on_opp(rig.opp(2))
    assert not rig.engine.trades[2].balanced
    rig.venues[1].before = None
    rig.quote(0, 59999.9, 60000.0)
    asyncio.run(rig.engine.drain())
    assert sorted(rig.engine.trades) == [1] and rig.engine.trades[1].balanced
    assert rig.venues[0].sent[-1].client_order_id == "r1-2-unwind-sell"
    _book_agrees(rig)


def test_a_leg_partly_hedged_on_its_venue_is_never_moved_to_another(rig: Rig) -> None:
    rig.quote(2, 60280.0, 60280.1)  # a next-best venue is there, but must not be used
    rig.venues[1].inject(Fault(FaultKind.REJECT))  # the open sell
    rig.venues[1].inject(Fault(FaultKind.PARTIAL, fraction=D("0.5")))  # its hedge: half
    assert rig.on_opp() is Reason.OK
    (trade,) = rig.engine.trades.values()
    assert trade.sell_venue == 1 and trade.balanced and trade.hedged_qty == D("0.008")
    assert rig.venues[2].sent == [] and "leg_moved" not in _incidents(rig)
    assert rig.venues[0].sent[-1].client_order_id == "r1-1-unwind-sell"  # the excess came down
    assert (rig.engine.book.qty(0, BTC), rig.engine.book.qty(1, BTC)) == (D("0.008"), D("-0.008"))
    _flat_and_reconciled(rig)
