"""The invariant checker against small hand-made runs: it passes a clean one and names each break.

A journal written through `Journal` (as exec writes it) and paper ledgers in the
venues' format, for one trade opened on okx/bybit and closed; then one thing at
a time is broken.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from invariants import check_run

from perpbot.exec.journal import Journal, OrderIntent
from perpbot.exec.venues.base import Fill, OrderResult, OrderStatus, Side

RUN = "20260101-000000-1"
S = 1_000_000_000
Q = Decimal("0.010")


def _order(coid: str, venue: str, side: Side, price: str, t: int) -> tuple[OrderIntent, Fill]:
    intent = OrderIntent(coid, 1, 7, venue, "BTC-PERP", side.value, Q, Decimal(price), coid.split("-")[-2],
                         "ioc", False, t)
    return intent, Fill(f"{coid}-1", coid, venue, "BTC-PERP", side, Q, Decimal(price), Decimal("0.03"), t + 1000)


def make_run(tmp: Path, *, bybit_open_fill_delay_ns: int = 0, close_s: int = 3,
             ledger: Callable[[list[dict[str, Any]]], None] | None = None) -> Path:
    """One trade: open (buy okx, sell bybit) at 1 s, close at `close_s`; returns the data folder."""
    run_dir = tmp / "data" / RUN
    j = Journal(run_dir / "journal.sqlite", run_id=RUN, clock=lambda: 1 * S)
    ob, fb = _order(f"{RUN}-1-open-buy", "okx", Side.BUY, "60000.0", 1 * S)
    os_, fs = _order(f"{RUN}-1-open-sell", "bybit", Side.SELL, "60100.0", 1 * S)
    fs = Fill(fs.fill_id, fs.client_order_id, fs.venue, fs.symbol, fs.side, fs.qty, fs.price, fs.fee,
              fs.ts_ns + bybit_open_fill_delay_ns)
    j.record_open_intent(trade_id=1, opp_id=7, run_id=RUN, symbol="BTC-PERP", buy_venue="okx", sell_venue="bybit",
                         qty=Q, entry_edge_bps=5.0, orders=[ob, os_])
    j.record_results([OrderResult(ob.client_order_id, "okx", "BTC-PERP", Side.BUY, Q, OrderStatus.FILLED, (fb,)),
                      OrderResult(os_.client_order_id, "bybit", "BTC-PERP", Side.SELL, Q, OrderStatus.FILLED, (fs,))],
                     1 * S)
    cs, fcs = _order(f"{RUN}-1-close-sell", "okx", Side.SELL, "60050.0", close_s * S)
    cb, fcb = _order(f"{RUN}-1-close-buy", "bybit", Side.BUY, "60060.0", close_s * S)
    j.record_intents([cs, cb])
    j.record_results([OrderResult(cs.client_order_id, "okx", "BTC-PERP", Side.SELL, Q, OrderStatus.FILLED, (fcs,)),
                      OrderResult(cb.client_order_id, "bybit", "BTC-PERP", Side.BUY, Q, OrderStatus.FILLED, (fcb,))],
                     close_s * S)
    j.update_trade(1, state="closed", qty=Q, realized_pnl=Decimal("0"), fees=Decimal("0.12"), closed=True)
    j.close()
    events: list[dict[str, Any]] = []
    for intent, fill in ((ob, fb), (os_, fs), (cs, fcs), (cb, fcb)):
        events.append({"e": "order", "venue": intent.venue, "coid": intent.client_order_id, "symbol": "BTC-PERP",
                       "side": intent.side, "ts_ns": intent.ts_decide_ns + 500, "never_fill": False,
                       "late_fill": False, "note": ""})
        events.append({"e": "fill", "venue": fill.venue, "fill_id": fill.fill_id, "coid": fill.client_order_id,
                       "symbol": "BTC-PERP", "side": fill.side.value, "qty": str(fill.qty), "price": str(fill.price),
                       "fee": str(fill.fee), "ts_ns": fill.ts_ns})
        events.append({"e": "state", "venue": intent.venue, "coid": intent.client_order_id, "status": "filled",
                       "reason": ""})
    if ledger is not None:
        ledger(events)
    (run_dir / "paper").mkdir()
    for venue in ("okx", "bybit"):
        lines = [{"e": "venue", "v": 1, "venue": venue, "funded_until_ms": 0}]
        lines += [{k: v for k, v in ev.items() if k != "venue"} for ev in events if ev["venue"] == venue]
        (run_dir / "paper" / f"{venue}.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return tmp / "data"


def _check(data: Path, **kw: Any) -> list[str]:
    return check_run(data, RUN, legging_deadline_ms=2000, **kw)


def test_a_clean_run_holds(tmp_path: Path) -> None:
    assert _check(make_run(tmp_path)) == []


@pytest.mark.parametrize(("breakage", "named"), [
    (lambda ev: ev.pop(1), "fill in the journal that no venue booked"),
    (lambda ev: ev.append({**ev[1], "fill_id": "x-2"}), "fill in a venue's ledger missing from the journal"),
    (lambda ev: ev.append(dict(ev[0])), "client order id received more than once"),
    (lambda ev: ev.append({**ev[0], "coid": f"{RUN}-1-open-buy-1"}), "order a venue received that the journal"),
])
def test_each_break_is_named(tmp_path: Path, breakage: Callable[[list[dict[str, Any]]], None], named: str) -> None:
    problems = _check(make_run(tmp_path, ledger=breakage))
    assert any(p.startswith(named) for p in problems), problems


def test_a_leg_naked_longer_than_the_deadline(tmp_path: Path) -> None:
    data = make_run(tmp_path / "late", bybit_open_fill_delay_ns=2500 * 1_000_000, close_s=6)
    problems = _check(data)
    assert any(p.startswith("naked leg older than the legging deadline") and "2500 ms" in p for p in problems), \
        problems
    assert _check(data, round_trip_ms=600) == []  # within the deadline plus one venue round trip
    assert _check(make_run(tmp_path / "ok", bybit_open_fill_delay_ns=1500 * 1_000_000, close_s=6)) == []


def test_orders_after_the_halt_or_on_bad_quotes(tmp_path: Path) -> None:
    data = make_run(tmp_path)
    after = _check(data, halted_after_ns=2 * S)
    assert any(p.startswith("order sent after the kill switch") and "close" in p for p in after), after
    assert _check(data, halted_after_ns=4 * S) == []
    bad = _check(data, bad_quote_windows=[("okx", "BTC-PERP", int(2.5 * S), int(3.5 * S), "stale")])
    assert any("order sent on okx BTC-PERP while its quotes were stale" in p for p in bad), bad
    assert _check(data, bad_quote_windows=[("okx", "ETH-PERP", 0, 4 * S, "stale")]) == []
    paused = _check(data, paused_windows=[(int(0.5 * S), int(1.5 * S))])
    assert any(p.startswith("opening order sent while trading was paused") for p in paused), paused
