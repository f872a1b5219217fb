"""The money proof: a 60-second demo run, then the journal against the paper venues' own ledgers.

Everything is real: `perpbot-launch` on the demo market, the feeds, the scanner,
exec with paper venues that add latency, reject some orders, fill some partly,
leave some resting and lose some answers (`paper:` fault rates), so the hedge,
unwind, retry and cancel-race paths run while trading. Each paper venue keeps
its own account record (`<data>/<run>/paper/<venue>.jsonl`), written before it
answers, like a real venue's. After the run, to the smallest unit:

- every fill in the ledgers is in the journal and vice versa (id, venue,
  symbol, side, quantity, price, fee), so no fill is lost or invented;
- fees per venue, positions per venue and symbol (quantity, average price,
  realized PnL after fees) rebuilt from the journal equal the ledgers';
- each finished trade's realized PnL in the journal equals the cash its fills
  moved in the ledgers, and its fills net to zero on every venue;
- no client order id was sent twice as two orders;
- what is still held is hedged (net zero per symbol across venues).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit import example_raw

from perpbot.exec.edge import leg_cash
from perpbot.exec.positions import FLAT, Position, add_funding, apply_fill
from perpbot.exec.recovery import recover
from perpbot.exec.venues.paper import read_ledger

pytestmark = pytest.mark.slow

RUN_S = 60


@pytest.fixture
def run(tmp_path: Path) -> Iterator[dict[str, Any]]:
    run_root = Path(tempfile.mkdtemp(prefix="pb"))  # ipc:// paths must stay short
    raw = example_raw()
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp_path / "data"))
    raw["demo"].update(dislocations_per_s=6.0, dislocation_bps=40)
    raw["exec"].update(max_hold_ms=400)
    raw["scanner"].update(core=(os.cpu_count() or 1) - 1)
    raw["paper"] = {"latency_ms": 0.5, "latency_jitter_ms": 0.5, "reject_rate": 0.03,
                    "partial_fill_rate": 0.05, "never_fill_rate": 0.01, "timeout_rate": 0.01,
                    "late_fill_rate": 0.01, "seed": 11}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    log = tmp_path / "launch.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "perpbot.launch", "--config", str(cfg), "--duration", str(RUN_S)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=RUN_S + 120)
    assert proc.returncode == 0, log.read_text()[-4000:]
    (journal,) = (tmp_path / "data").glob("*/journal.sqlite")
    yield {"journal": journal, "paper": journal.parent / "paper", "log": log}
    shutil.rmtree(run_root, ignore_errors=True)


def _journal_fills(con: sqlite3.Connection) -> set[tuple[str, ...]]:
    return {tuple(r) for r in con.execute(
        "SELECT fill_id, client_order_id, venue, symbol, side, qty, price, fee FROM fills")}


def test_the_journal_equals_the_paper_ledgers_after_a_demo_run(run: dict[str, Any]) -> None:
    con = sqlite3.connect(run["journal"])
    con.row_factory = sqlite3.Row
    ledger_fills = []
    ledger_funding = []
    for path in sorted(run["paper"].glob("*.jsonl")):
        fills, funding = read_ledger(path)
        ledger_fills += fills
        ledger_funding += funding
    assert len(ledger_fills) > 100, "the run traded too little to prove anything"

    # every fill, both ways, exactly (Decimals as text: "0.0160" would differ from "0.016")
    journal = _journal_fills(con)
    ledger = {(f.fill_id, f.client_order_id, f.venue, f.symbol, f.side.value, str(f.qty),
               str(f.price), str(f.fee)) for f in ledger_fills}
    assert journal == ledger

    # fees per venue
    fees: dict[str, Decimal] = {}
    for f in ledger_fills:
        fees[f.venue] = fees.get(f.venue, Decimal(0)) + f.fee
    jfees = {v: sum((Decimal(x) for (x,) in con.execute("SELECT fee FROM fills WHERE venue=?", (v,))),
                    Decimal(0)) for v in fees}
    assert jfees == fees

    # positions, average prices and realized PnL after fees per venue and symbol
    book: dict[tuple[str, str], Position] = {}
    for f in ledger_fills:
        key = (f.venue, f.symbol)
        book[key] = apply_fill(book.get(key, FLAT), f.side, f.qty, f.price, f.fee)
    for p in ledger_funding:
        key = (p.venue, p.symbol)
        book[key] = add_funding(book.get(key, FLAT), p.amount)
    state = recover(run["journal"])
    assert dict(state.positions) == book

    # each finished trade's realized PnL is the cash its fills moved at the venues
    by_trade: dict[int, Decimal] = {}
    run_id = con.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()[0]
    for f in ledger_fills:
        tid = int(f.client_order_id.removeprefix(f"{run_id}-").split("-")[0])
        by_trade[tid] = by_trade.get(tid, Decimal(0)) + leg_cash(f.side.sign, f.qty, f.price, f.fee)
    finished = con.execute("SELECT trade_id, realized_pnl FROM trades WHERE state IN ('closed', 'failed')"
                           ).fetchall()
    assert finished
    for r in finished:
        assert Decimal(r["realized_pnl"]) == by_trade.get(r["trade_id"], Decimal(0)), r["trade_id"]
    # a finished trade left nothing behind on any venue: its fills net to zero venue by venue
    left: dict[tuple[int, str], Decimal] = {}
    done = {r["trade_id"] for r in finished}
    for f in ledger_fills:
        tid = int(f.client_order_id.removeprefix(f"{run_id}-").split("-")[0])
        if tid in done:
            left[(tid, f.venue)] = left.get((tid, f.venue), Decimal(0)) + f.side.sign * f.qty
    assert {k: q for k, q in left.items() if q} == {}
    closed = sum(1 for _ in con.execute("SELECT 1 FROM trades WHERE state='closed'"))
    assert closed > 10

    # nothing doubled: one order row per client order id, each with at most its own fills
    coids = [c for (c,) in con.execute("SELECT client_order_id FROM orders")]
    assert len(coids) == len(set(coids))
    assert con.execute("SELECT COUNT(*) FROM orders WHERE status IN ('intent', 'unknown')").fetchone()[0] == 0

    # what is still held is hedged: per symbol, the venues' positions sum to zero
    net: dict[str, Decimal] = {}
    for (_venue, symbol), p in book.items():
        net[symbol] = net.get(symbol, Decimal(0)) + p.qty
    assert all(q == 0 for q in net.values()), net

    # the faults really happened, and were handled
    kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM incidents")}
    assert {"leg_mismatch", "hedge"} <= kinds, kinds
    statuses = {s for (s,) in con.execute("SELECT DISTINCT status FROM orders")}
    assert {"filled", "rejected", "partial"} <= statuses, statuses
    con.close()
