"""Recovery from the journal alone: journals written by the real engine, then rebuilt and compared.

The rig is test_engine's (real segments, a real journal, paper venues, a driven
clock). A "restart" is a new Journal connection on the same file, fresh paper
venues seeded from the journal, and a fresh Engine given `recover()`'s result:
what a restarted exec process does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal as D
from typing import Any

import pytest
import test_engine
from test_engine import RUN, HookedVenue, Rig

from perpbot.exec.engine import Engine, Trade
from perpbot.exec.journal import Journal, OrderIntent
from perpbot.exec.positions import Position
from perpbot.exec.recovery import (
    RecoveredState,
    RecoveredTrade,
    RecoveryError,
    attempt_of,
    reconcile,
    record_resolutions,
    recover,
    resolve_intents,
)
from perpbot.exec.risk import Reason
from perpbot.exec.venues.base import OrderRequest, OrderStatus, Side, Venue
from perpbot.exec.venues.paper import Fault, FaultKind, PaperVenue

# test_engine's rig fixtures, shared: the same real segments, journal and paper venues
make_rig = test_engine.make_rig
rig = test_engine.rig


def _as_recovered(e: Engine, t: Trade) -> RecoveredTrade:
    v, s = e.cfg.venue_names, e.cfg.symbol_names
    return RecoveredTrade(
        t.trade_id, t.opp_id, s[t.symbol], v[t.buy_venue], v[t.sell_venue], t.entry_edge_bps,
        t.open_ns, t.buy_order, t.sell_order, t.state, t.long_qty, t.short_qty, t.hedged_qty,
        t.buy_cost, t.buy_filled, t.entry_notional, t.cash, t.fees, t.funding,
        {k: n for k, n in t.attempts.items() if n},
    )


def _positions(e: Engine) -> dict[tuple[str, str], Position]:
    v, s = e.cfg.venue_names, e.cfg.symbol_names
    return {(v[vi], s[si]): p for (vi, si), p in e.book.items()}


def _coids(r: Rig) -> list[str]:
    con = r.db()
    try:
        return [c for (c,) in con.execute("SELECT client_order_id FROM orders")]
    finally:
        con.close()


def _spread(r: Rig, sell_size: float = 1.0) -> None:
    r.quote(0, 59999.9, 60000.0)
    r.quote(1, 60300.0, 60300.1, size=sell_size)


def _converged(r: Rig, okx_size: float = 1.0) -> None:
    r.quote(0, 60150.0, 60150.1)
    r.quote(1, 60149.9, 60150.0, size=okx_size)


def _busy_journal(r: Rig) -> None:
    """Trades 1 closed, 2 half-closed (open), 3 open after a hedged partial leg, 4 failed, 5 naked."""
    assert r.on_opp(r.opp(1)) is Reason.OK
    assert asyncio.run(r.engine.flatten()) == 1  # trade 1: closed
    assert r.on_opp(r.opp(2)) is Reason.OK  # trade 2
    _converged(r, okx_size=0.005)  # its close-buy on okx fills 0.005 of 0.016, and the unwind
    assert r.check() == 0  # of the rest sent at once fills 0.005 more: still open, short 0.006
    _spread(r)

    def thin_out(req: OrderRequest) -> None:
        if req.client_order_id.endswith("open-sell"):
            r.quote(1, 60300.0, 60300.1, size=0.010)

    r.venues[1].before = thin_out
    assert r.on_opp(r.opp(3)) is Reason.OK  # trade 3: open at 0.016 after a hedge of 0.006
    _spread(r)
    r.venues[1].before = None
    r.venues[1].inject(Fault(FaultKind.REJECT, count=2))  # the open sell and its hedge
    assert r.on_opp(r.opp(4)) is Reason.OK  # trade 4: failed, unwound
    _spread(r)

    def naked(req: OrderRequest) -> None:
        if req.client_order_id.endswith("open-sell"):
            r.venues[1].inject(Fault(FaultKind.REJECT, count=4))  # the open sell and every hedge
            r.quote(0, 59999.9, 60000.0, age_ms=5000)  # the unwind is refused: stale

    r.venues[1].before = naked
    assert r.on_opp(r.opp(5)) is Reason.OK  # trade 5: opening, long leg naked
    r.venues[1].before = None


def _restart(r: Rig, state: RecoveredState | None = None) -> tuple[Engine, Journal, list[PaperVenue]]:
    """A new exec on the same journal and segments: fresh venues seeded from the journal."""
    r.journal.flush()
    state = state or recover(r.jpath)
    cfg = r.engine.cfg
    venues = [PaperVenue(n, i, cfg, r.board, clock=r.clock) for i, n in enumerate(cfg.venue_names)]
    for v in venues:
        asyncio.run(v.connect())
        v.restore(state.fills_on(v.name))
    journal = Journal(r.jpath, run_id=RUN, clock=r.clock)
    engine = Engine(cfg, r.board, r.status, journal, venues, run_id=RUN, clock=r.clock)
    engine.restore(state)
    asyncio.run(engine.start())  # as the exec process does: balances and funding once recovered
    return engine, journal, venues


def test_recovery_reproduces_the_engines_open_trades_and_positions(rig: Rig) -> None:
    _busy_journal(rig)
    live = rig.engine
    assert sorted(live.trades) == [2, 3, 5]
    assert live.trades[2].attempts == {"close": 1, "unwind": 1}
    assert live.trades[5].state == "opening" and not live.trades[5].balanced

    state = recover(rig.jpath)
    assert [t.trade_id for t in state.trades] == [2, 3, 5]
    for got in state.trades:
        assert got == _as_recovered(live, live.trades[got.trade_id]), got.trade_id
    assert dict(state.positions) == _positions(live)
    assert state.pending == ()
    assert state.next_trade_id == 6

    engine, journal, venues = _restart(rig, state)
    try:
        assert sorted(engine.trades) == sorted(live.trades)
        for tid, t in live.trades.items():
            # last_refusal only throttles log lines: a new process says it once more
            assert engine.trades[tid] == dataclasses.replace(t, last_refusal=Reason.OK), tid
        assert list(engine.book.items()) == list(live.book.items())
        for (v, s), p in live.book.items():
            assert float(rig.status.positions[v, s]["qty"]) == float(p.qty)
        # the seeded paper venues hold what the old ones held
        for old, new in zip(rig.venues, venues):
            assert asyncio.run(new.positions()) == asyncio.run(old.positions())
            assert new.ledger == old.ledger
    finally:
        journal.close()


def test_after_recovery_no_client_order_id_repeats_and_trades_close(rig: Rig) -> None:
    _busy_journal(rig)
    before = set(_coids(rig))
    rig.journal.close()
    engine, journal, venues = _restart(rig)
    rig.journal = journal  # the fixture closes it
    sent: list[str] = []
    for v in venues:
        orig = v.place_order

        async def spy(req: OrderRequest, orig: Any = orig) -> Any:
            sent.append(req.client_order_id)
            return await orig(req)

        v.place_order = spy  # type: ignore[method-assign]
    _spread(rig)  # fresh quotes: the naked leg's unwind goes through now
    asyncio.run(engine.check_open_trades())
    assert f"{RUN}-5-unwind-sell" in sent and f"{RUN}-2-unwind-buy-1" in sent
    rig.clock.advance_ms(5000)  # past max hold: trade 3 closes
    _spread(rig)
    for _ in range(5):
        asyncio.run(engine.check_open_trades())
    assert engine.trades == {}
    assert all(p.qty == 0 for _, p in engine.book.items())
    assert not before & set(sent)
    after = _coids(rig)
    assert len(after) == len(set(after))
    con = rig.db()
    states = dict(con.execute("SELECT trade_id, state FROM trades").fetchall())
    assert states == {1: "closed", 2: "closed", 3: "closed", 4: "failed", 5: "failed"}
    assert con.execute("SELECT COUNT(*) FROM orders WHERE status='intent'").fetchone()[0] == 0
    con.close()
    # a new trade continues the journal's ids
    assert asyncio.run(engine.on_opportunity(rig.opp(9), rig.clock.t)) is Reason.OK
    assert f"{RUN}-6-open-buy" in sent
    # and the journal still agrees with the venues, fill for fill
    final = recover(rig.jpath)
    assert reconcile(final.positions, {v.name: {s: p.qty for s, p in asyncio.run(v.positions()).items()}
                                       for v in venues}) == []


def _crash_after_intent(r: Rig, trade_id: int) -> list[OrderRequest]:
    """What exec leaves behind when it dies between journaling the intents and the results."""
    qty, sym = D("0.016"), "BTC-PERP"
    buy = OrderRequest(f"{RUN}-{trade_id}-open-buy", sym, Side.BUY, qty, D("60000.0"))
    sell = OrderRequest(f"{RUN}-{trade_id}-open-sell", sym, Side.SELL, qty, D("60300.0"))
    t = r.clock.t
    r.journal.record_open_intent(
        trade_id=trade_id, opp_id=trade_id, run_id=RUN, symbol=sym, buy_venue="binanceusdm",
        sell_venue="okx", qty=qty, entry_edge_bps=40.0,
        orders=[OrderIntent(buy.client_order_id, trade_id, trade_id, "binanceusdm", sym, "buy", qty,
                            buy.price, "open", "ioc", False, t),
                OrderIntent(sell.client_order_id, trade_id, trade_id, "okx", sym, "sell", qty,
                            sell.price, "open", "ioc", False, t)])
    r.journal.flush()  # what a restarted journal makes of the dead process's intent log
    return [buy, sell]


def test_an_intent_the_venue_never_saw_is_marked_not_sent_and_the_trade_failed(rig: Rig) -> None:
    _crash_after_intent(rig, 1)
    state = recover(rig.jpath)
    assert [p.client_order_id for p in state.pending] == [f"{RUN}-1-open-buy", f"{RUN}-1-open-sell"]
    (t,) = state.trades
    assert (t.state, t.long_qty, t.short_qty) == ("opening", 0, 0)
    # the restarted process's venues never received them (the paper venue died with exec)
    fresh = {v.name: PaperVenue(v.name, i, rig.engine.cfg, rig.board, clock=rig.clock)
             for i, v in enumerate(rig.venues)}
    resolutions = asyncio.run(resolve_intents(state.pending, fresh))
    assert [r.result for r in resolutions] == [None, None]
    record_resolutions(rig.journal, resolutions)
    state = recover(rig.jpath)
    assert state.pending == ()
    rig.journal.close()
    engine, journal, _ = _restart(rig, state)
    rig.journal = journal
    assert engine.trades == {}
    con = rig.db()
    assert {tuple(row) for row in con.execute("SELECT status FROM orders")} == {("not_sent",)}
    assert tuple(con.execute("SELECT state, close_reason FROM trades").fetchone()) == (
        "failed", "open_failed")
    con.close()


def test_an_intent_the_venue_filled_is_journaled_from_the_venue_and_the_trade_opens(rig: Rig) -> None:
    reqs = _crash_after_intent(rig, 1)
    # the orders reached the venues (which, like real ones, remember them) before exec died
    for v, req in zip(rig.venues, reqs):
        assert asyncio.run(PaperVenue.place_order(v, req)).status is OrderStatus.FILLED
    by_name: dict[str, Venue] = {v.name: v for v in rig.venues}
    resolutions = asyncio.run(resolve_intents(recover(rig.jpath).pending, by_name))
    assert [r.result.status for r in resolutions if r.result] == [OrderStatus.FILLED] * 2
    record_resolutions(rig.journal, resolutions)
    state = recover(rig.jpath)
    assert state.pending == ()
    assert state.positions[("binanceusdm", "BTC-PERP")].qty == D("0.016")
    assert state.positions[("okx", "BTC-PERP")].qty == D("-0.016")
    (t,) = state.trades
    assert (t.state, t.long_qty, t.short_qty, t.buy_cost / t.buy_filled) == ("opening", D("0.016"), D("0.016"),
                                                             D("60000.0"))
    rig.journal.close()
    engine, journal, _ = _restart(rig, state)
    rig.journal = journal
    (trade,) = engine.trades.values()
    assert (trade.state, trade.hedged_qty, trade.entry_notional) == (
        "open", D("0.016"), D("0.016") * D("60000.0"))
    con = rig.db()
    assert tuple(con.execute("SELECT state, qty FROM trades").fetchone()) == ("open", "0.016")
    assert con.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 2
    con.close()


def test_a_venue_that_cannot_look_orders_up_stops_recovery(rig: Rig) -> None:
    _crash_after_intent(rig, 1)

    class Blind:
        name = "binanceusdm"

    with pytest.raises(RecoveryError, match="cannot be asked"):
        asyncio.run(resolve_intents(recover(rig.jpath).pending, {"binanceusdm": Blind()}))  # type: ignore[dict-item]


def test_a_fresh_or_missing_journal_recovers_nothing(rig: Rig, tmp_path: Any) -> None:
    assert recover(tmp_path / "nope.sqlite") == RecoveredState((), {}, (), (), 1)
    assert not (tmp_path / "nope.sqlite").exists()
    state = recover(rig.jpath)
    assert (state.trades, state.fills, state.pending, state.next_trade_id) == ((), (), (), 1)


def test_attempt_numbers_are_read_from_the_end_of_a_dashed_run_id() -> None:
    assert attempt_of("20240101-120000-77-12-close-buy") == 0
    assert attempt_of("20240101-120000-77-12-close-buy-3") == 3
    assert attempt_of("r1-5-unwind-sell") == 0


def test_reconcile_names_every_disagreement() -> None:
    journal = {("okx", "BTC-PERP"): Position(D("-0.016"), D("60300")),
               ("bybit", "BTC-PERP"): Position(D("0.01"), D("1"))}
    assert reconcile(journal, {"okx": {"BTC-PERP": D("-0.016")}}) == []
    (m,) = reconcile(journal, {"okx": {"BTC-PERP": D("-0.010"), "ETH-PERP": D("0")}})
    assert (m.venue, m.symbol, m.journal_qty, m.venue_qty) == ("okx", "BTC-PERP", D("-0.016"),
                                                              D("-0.010"))
    (m,) = reconcile(journal, {"bybit": {}})
    assert (m.symbol, m.journal_qty, m.venue_qty) == ("BTC-PERP", D("0.01"), D("0"))


def test_paper_restore_remembers_positions_and_refuses_old_ids(rig: Rig) -> None:
    rig.on_opp()
    old = rig.venues[0]
    new = HookedVenue(old.name, 0, rig.engine.cfg, rig.board, clock=rig.clock)
    asyncio.run(new.connect())
    new.restore(old.ledger)
    assert asyncio.run(new.positions()) == asyncio.run(old.positions())
    assert asyncio.run(new.balances()) == asyncio.run(old.balances())
    again = asyncio.run(new.place_order(rig.sent()[0]))
    assert again.status is OrderStatus.REJECTED and "duplicate" in again.reason
    found = asyncio.run(new.fetch_order(f"{RUN}-1-open-buy", "BTC-PERP"))
    assert found is not None and found.fills == tuple(old.ledger)
    assert asyncio.run(new.fetch_order("never-sent", "BTC-PERP")) is None
    with pytest.raises(ValueError, match="already has fills"):
        new.restore(old.ledger)
    with pytest.raises(ValueError, match="not on"):
        HookedVenue("okx", 1, rig.engine.cfg, rig.board).restore(old.ledger)


def test_restore_only_into_a_fresh_engine(rig: Rig) -> None:
    rig.on_opp()
    with pytest.raises(RuntimeError, match="fresh engine"):
        rig.engine.restore(recover(rig.jpath))



# -- the launcher's side: pause while exec is down, resume once it has recovered -----------------


def _launcher_with_dead_exec(status: Any) -> tuple[Any, Any]:
    import io
    import subprocess
    import sys

    from kit import EXAMPLE_CONFIG, make_config

    from perpbot.launch import Child, Launcher

    launcher = Launcher(make_config(), EXAMPLE_CONFIG, out=io.StringIO())
    launcher.status = status
    c = Child("exec", "x", slot=2, restartable=True, recovers=True)
    c.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(9)"])
    c.proc.wait()
    return launcher, c


def _respawn(launcher: Any, c: Any, status: Any, now: float, *, recovered: bool) -> None:
    """What the serve loop does at restart time, with a stand-in child that stays alive."""
    import subprocess
    import sys

    from perpbot.shm.layout import ProcState

    c.restart_at = None
    c.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    launcher._restarted(c, now)
    rec = status.procs[c.slot]
    rec["pid"] = c.proc.pid
    rec["state"] = int(ProcState.RUNNING if recovered else ProcState.STARTING)


@pytest.mark.parametrize("meddle", [None, "pause", "kill"])
def test_launcher_pauses_while_exec_recovers_and_restores_the_state(meddle: str | None) -> None:
    from kit import make_config, segments

    from perpbot.shm.layout import ProcState, TradingState

    with segments(make_config()) as (_, status):
        status.set_trading_state(TradingState.RUNNING)
        status.procs[2]["state"] = int(ProcState.RUNNING)  # the dead exec's stale record
        status.procs[2]["pid"] = 1
        launcher, c = _launcher_with_dead_exec(status)
        launcher._child_exited(c, 100.0)
        assert c.restart_at is not None and status.trading_state() is TradingState.PAUSED
        launcher._check_recovery(100.1)  # not restarted yet: nothing changes
        assert status.trading_state() is TradingState.PAUSED
        try:
            _respawn(launcher, c, status, 101.0, recovered=False)
            status.procs[2]["pid"] = 1  # the old record still says RUNNING: not recovered
            status.procs[2]["state"] = int(ProcState.RUNNING)
            launcher._check_recovery(101.1)
            assert status.trading_state() is TradingState.PAUSED
            if meddle == "pause":
                launcher.handle_command("pause", {}, 0)
            elif meddle == "kill":
                status.set_halt()
            status.procs[2]["pid"] = c.proc.pid
            launcher._check_recovery(101.2)
            assert launcher.recovery is None
            expected = {None: TradingState.RUNNING, "pause": TradingState.PAUSED,
                        "kill": TradingState.HALTED}[meddle]
            assert status.trading_state() is expected
            assert "recovered" in launcher.out.getvalue()
        finally:
            c.proc.kill()
            c.proc.wait()


def test_an_exec_that_does_not_recover_in_time_is_killed_and_counted() -> None:
    from kit import make_config, segments

    from perpbot.shm.layout import TradingState

    with segments(make_config()) as (_, status):
        launcher, c = _launcher_with_dead_exec(status)
        launcher._child_exited(c, 100.0)
        _respawn(launcher, c, status, 101.0, recovered=False)
        launcher._check_recovery(101.0 + launcher.cfg.run.start_timeout_s + 1)
        assert c.proc.poll() is not None  # killed: the serve loop's next pass counts the crash
        launcher._child_exited(c, 110.0)
        assert len(c.crashes) == 2 and launcher.recovery is not None
        assert status.trading_state() is TradingState.PAUSED


def test_a_resting_order_is_cancelled_then_resolved(rig: Rig) -> None:
    from perpbot.exec.venues.base import OpenOrder, OrderResult

    _crash_after_intent(rig, 1)
    pending = recover(rig.jpath).pending[:1]

    class Resting:
        name = "binanceusdm"

        def __init__(self) -> None:
            self.cancelled: list[str] = []

        async def fetch_order(self, coid: str, symbol: str) -> OrderResult | OpenOrder | None:
            if self.cancelled:
                return OrderResult(coid, self.name, symbol, Side.BUY, D("0.016"), OrderStatus.EXPIRED)
            return OpenOrder(coid, symbol, Side.BUY, D("0.016"), D(0), D("60000.0"))

        async def cancel_order(self, coid: str, symbol: str) -> bool:
            self.cancelled.append(coid)
            return True

    venue = Resting()
    (res,) = asyncio.run(resolve_intents(pending, {"binanceusdm": venue}))  # type: ignore[dict-item]
    assert venue.cancelled == [f"{RUN}-1-open-buy"]
    assert res.result is not None and res.result.status is OrderStatus.EXPIRED
