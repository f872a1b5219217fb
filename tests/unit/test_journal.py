"""The SQLite journal: schema, intents durable before send, fills reference orders, reopen."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal as D
from pathlib import Path

import pytest

from perpbot.exec.journal import SCHEMA_VERSION, Journal, OrderIntent
from perpbot.exec.venues.base import Fill, OrderResult, OrderStatus, Side


def _intent(coid: str, trade_id: int = 1, side: str = "buy", venue: str = "okx") -> OrderIntent:
    return OrderIntent(coid, trade_id, 77, venue, "BTC-PERP", side, D("0.016"), D("60000.1"),
                       "open", "ioc", False, 123)


def _open(j: Journal, trade_id: int = 1) -> None:
    j.record_open_intent(
        trade_id=trade_id, opp_id=77, run_id="r1", symbol="BTC-PERP", buy_venue="okx",
        sell_venue="bybit", qty=D("0.016"), entry_edge_bps=6.5,
        orders=[_intent(f"r1-{trade_id}-open-buy", trade_id),
                _intent(f"r1-{trade_id}-open-sell", trade_id, "sell", "bybit")],
    )


def _reader(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    return db


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    return tmp_path / "data" / "run" / "journal.sqlite"  # parents do not exist yet


def test_schema_and_pragmas(jpath: Path) -> None:
    j = Journal(jpath, run_id="r1", clock=lambda: 5)
    try:
        db = _reader(jpath)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "orders", "fills", "trades", "skips", "incidents"} <= tables
        cols = {r[1] for r in db.execute("PRAGMA table_info(orders)")}
        assert {"client_order_id", "trade_id", "opp_id", "venue", "symbol", "side", "qty", "price",
                "purpose", "status", "ts_decide_ns", "ts_dispatch_ns", "wall_time"} <= cols
        cols = {r[1] for r in db.execute("PRAGMA table_info(fills)")}
        assert {"fill_id", "client_order_id", "venue", "symbol", "side", "qty", "price", "fee",
                "ts_ns"} <= cols
        cols = {r[1] for r in db.execute("PRAGMA table_info(trades)")}
        assert {"trade_id", "symbol", "buy_venue", "sell_venue", "qty", "state", "open_ns",
                "close_ns", "entry_edge_bps", "realized_pnl"} <= cols
        cols = {r[1] for r in db.execute("PRAGMA table_info(skips)")}
        assert {"opp_id", "reason", "ts_ns"} <= cols
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        assert meta == {"schema_version": str(SCHEMA_VERSION), "run_id": "r1"}
        fks = db.execute("PRAGMA foreign_key_list(fills)").fetchall()
        assert [(r["table"], r["from"]) for r in fks] == [("orders", "client_order_id")]
        db.close()
    finally:
        j.close()


def test_intent_is_durable_before_anything_is_sent_and_settled_by_the_next_commit(jpath: Path) -> None:
    j = Journal(jpath, run_id="r1", clock=lambda: 5)
    try:
        _open(j)
        # durable: one line in the intent log, written before record_open_intent returned
        (line,) = j.intent_log_path.read_bytes().splitlines()
        assert b"r1-1-open-buy" in line and b"r1-1-open-sell" in line
        db = _reader(jpath)  # SQLite has them once the next transaction commits
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0
        j.flush()
        rows = db.execute("SELECT client_order_id, status, qty, price, ts_decide_ns, "
                          "ts_dispatch_ns FROM orders ORDER BY client_order_id").fetchall()
        assert [tuple(r) for r in rows] == [
            ("r1-1-open-buy", "intent", "0.016", "60000.1", 123, None),
            ("r1-1-open-sell", "intent", "0.016", "60000.1", 123, None),
        ]
        assert db.execute("SELECT state FROM trades").fetchone()[0] == "opening"
        db.close()
    finally:
        j.close()
    assert j.intent_log_path.read_bytes() == b""  # closed: SQLite holds everything


_CRASHER = """
import os, sys
from decimal import Decimal as D
from perpbot.exec.journal import Journal, OrderIntent
j = Journal(__import__("pathlib").Path(sys.argv[1]), run_id="r1")
o = [OrderIntent(f"r1-1-open-{s}", 1, 77, "okx", "BTC-PERP", s, D("0.016"), D("60000.1"), "open", "ioc",
                 False, 123) for s in ("buy", "sell")]
j.record_open_intent(trade_id=1, opp_id=77, run_id="r1", symbol="BTC-PERP", buy_venue="okx",
                     sell_venue="bybit", qty=D("0.016"), entry_edge_bps=6.5, orders=o)
os._exit(0)  # dies with the orders (maybe) sent: no flush, no close
"""


def test_intents_of_a_process_that_died_become_intent_rows_when_the_journal_is_opened(
        jpath: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    jpath.parent.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", _CRASHER, str(jpath)], check=True, timeout=60)
    db = _reader(jpath)
    assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0  # only in the log
    db.close()
    j = Journal(jpath, run_id="r1")
    try:
        db = _reader(jpath)
        rows = db.execute("SELECT client_order_id, status FROM orders ORDER BY 1").fetchall()
        assert [tuple(r) for r in rows] == [("r1-1-open-buy", "intent"), ("r1-1-open-sell", "intent")]
        assert db.execute("SELECT state FROM trades").fetchone()[0] == "opening"
        db.close()
        assert j.next_trade_id() == 2
        with pytest.raises(sqlite3.IntegrityError):  # and their ids stay taken
            _open(j, 1)
    finally:
        j.close()


def test_a_torn_last_line_is_ignored(jpath: Path) -> None:
    j = Journal(jpath, run_id="r1")
    _open(j, 1)
    log = j.intent_log_path.read_bytes()
    j._db.close()  # simulate the crash: nothing settled
    j.intent_log_path.write_bytes(log + log[: len(log) // 2])  # a second line cut by the crash
    j2 = Journal(jpath, run_id="r1")
    try:
        db = _reader(jpath)
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 2
        db.close()
    finally:
        j2.close()


def test_results_update_orders_and_insert_fills_that_reference_them(jpath: Path) -> None:
    j = Journal(jpath, clock=lambda: 5)
    try:
        _open(j)
        fill = Fill("r1-1-open-buy-1", "r1-1-open-buy", "okx", "BTC-PERP", Side.BUY, D("0.016"),
                    D("60000.1"), D("0.480000800"), 99)
        res = OrderResult("r1-1-open-buy", "okx", "BTC-PERP", Side.BUY, D("0.016"),
                          OrderStatus.FILLED, (fill,), "okx-1", 90, 99)
        j.record_results([res], ts_dispatch_ns=80)
        db = _reader(jpath)
        o = db.execute("SELECT * FROM orders WHERE client_order_id='r1-1-open-buy'").fetchone()
        assert (o["status"], o["ts_dispatch_ns"], o["filled_qty"], o["fee"], o["avg_price"]) == (
            "filled", 80, "0.016", "0.480000800", "60000.1")
        f = db.execute("SELECT * FROM fills").fetchone()
        assert (f["client_order_id"], f["qty"], f["price"], f["fee"]) == (
            "r1-1-open-buy", "0.016", "60000.1", "0.480000800")
        assert D(f["fee"]) == D("0.4800008")  # Decimals survive as exact text
        orphans = db.execute("SELECT COUNT(*) FROM fills LEFT JOIN orders USING(client_order_id)"
                             " WHERE orders.client_order_id IS NULL").fetchone()[0]
        assert orphans == 0
        db.close()
    finally:
        j.close()


def test_a_fill_for_an_unknown_order_is_refused_and_rolled_back(jpath: Path) -> None:
    j = Journal(jpath, clock=lambda: 5)
    try:
        j.record_skip(opp_id=1, reason="EDGE_GONE", ts_ns=1)
        stray = Fill("x-1", "nobody", "okx", "BTC-PERP", Side.BUY, D(1), D(1), D(0), 1)
        res = OrderResult("nobody", "okx", "BTC-PERP", Side.BUY, D(1), OrderStatus.FILLED,
                          (stray,))
        with pytest.raises(sqlite3.IntegrityError):
            j.record_results([res], ts_dispatch_ns=1)
        db = _reader(jpath)
        assert db.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 0
        db.close()
        _open(j)  # the journal is usable after the rollback
    finally:
        j.close()


def test_skips_are_committed_by_the_next_commit_or_flush(jpath: Path) -> None:
    j = Journal(jpath, clock=lambda: 5)
    try:
        j.record_skip(opp_id=3, reason="TOO_OLD", ts_ns=7, symbol="BTC-PERP", detail="150 ms")
        db = _reader(jpath)
        assert db.execute("SELECT COUNT(*) FROM skips").fetchone()[0] == 0
        j.flush()
        row = db.execute("SELECT opp_id, reason, ts_ns, detail FROM skips").fetchone()
        assert tuple(row) == (3, "TOO_OLD", 7, "150 ms")
        db.close()
    finally:
        j.close()


def test_trade_updates_mark_and_orders(jpath: Path) -> None:
    j = Journal(jpath, clock=lambda: 42)
    try:
        _open(j)
        j.update_trade(1, state="open", qty=D("0.016"), realized_pnl=D("-0.96"), fees=D("0.96"))
        j.update_trade(1, state="closed", qty=D("0.016"), realized_pnl=D("2.8752"),
                       fees=D("1.9248"), close_reason="take_profit", closed=True)
        j.mark_orders(["r1-1-open-sell"], "not_sent", "kill switch")
        j.record_incident(1, "naked_leg", "long 0.016 short 0")
        db = _reader(jpath)
        t = db.execute("SELECT * FROM trades").fetchone()
        assert (t["state"], t["realized_pnl"], t["close_ns"], t["close_reason"]) == (
            "closed", "2.8752", 42, "take_profit")
        o = db.execute("SELECT status, reason FROM orders WHERE client_order_id='r1-1-open-sell'")
        assert tuple(o.fetchone()) == ("not_sent", "kill switch")
        assert db.execute("SELECT kind FROM incidents").fetchone()[0] == "naked_leg"
        db.close()
    finally:
        j.close()


def test_reopen_keeps_everything_and_continues_trade_ids(jpath: Path) -> None:
    j = Journal(jpath, run_id="r1")
    assert j.next_trade_id() == 1
    _open(j, 1)
    _open(j, 2)
    j.close()
    j = Journal(jpath, run_id="r1")
    try:
        assert j.next_trade_id() == 3
        with pytest.raises(sqlite3.IntegrityError):  # a client order id is never reused
            _open(j, 2)
        db = _reader(jpath)
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 4
        db.close()
    finally:
        j.close()


def test_checkpoints_run_off_the_writer_and_lose_nothing(jpath: Path) -> None:
    j = Journal(jpath, run_id="r1")
    try:
        assert j._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        wal = jpath.with_name(jpath.name + "-wal")
        for t in range(1, 51):
            _open(j, t)
        assert wal.stat().st_size > 0
        worker = threading.Thread(target=j.checkpoint)
        worker.start()
        for t in range(51, 101):  # the writer keeps going while the checkpoint runs
            _open(j, t)
        worker.join()
        j.checkpoint()
    finally:
        j.close()
        j.close()  # idempotent
    assert not jpath.with_name(jpath.name + "-wal").exists() or \
        jpath.with_name(jpath.name + "-wal").stat().st_size == 0
    db = _reader(jpath)
    assert db.execute("SELECT COUNT(*) FROM trades").fetchone()[0] == 100
    db.close()


def test_a_failed_transaction_leaves_its_intents_to_the_next_one(jpath: Path) -> None:
    j = Journal(jpath, run_id="r1")
    try:
        _open(j, 1)
        bad = OrderResult("r1-1-open-buy", "okx", "BTC-PERP", Side.BUY, D("0.016"), OrderStatus.FILLED,
                          (Fill("f1", "r1-9-nope", "okx", "BTC-PERP", Side.BUY, D("0.016"), D("60000"),
                                D("0.1"), 1),))
        with pytest.raises(sqlite3.IntegrityError):
            j.record_results([bad], 1)  # a fill of an unknown order: rolled back, intents with it
        j.flush()
        db = _reader(jpath)
        assert db.execute("SELECT COUNT(*) FROM orders WHERE status='intent'").fetchone()[0] == 2
        db.close()
    finally:
        j.close()
