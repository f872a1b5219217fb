"""Readers that turn the status segment and the journal into reports (status, end-of-run summary).

Read-only and off the hot path: used by the launcher's control replies and its
summary, and by `perpbot-ctl`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from perpbot.clock import now_ns
from perpbot.metrics import quantile
from perpbot.shm import StatusBoard
from perpbot.shm.layout import ExecCounter, FeedKind, FeedState, Hop, ProcState, ScannerCounter, TradingState

#: every process beats at least every 200 ms; five missed beats make it DEGRADED
DEGRADED_AFTER_NS = 1_000_000_000


def _counters(status: StatusBoard, slot: int | None, names: type[ExecCounter | ScannerCounter]) -> dict[str, int]:
    if slot is None:
        return {}
    c = status.procs[slot]["counters"]
    return {n.name.lower(): int(c[n]) for n in names}


def _hop_stats(status: StatusBoard) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for hop in Hop:
        counts = status.histogram(hop)
        n = sum(counts)
        p50 = quantile(counts, 0.5)
        p99 = quantile(counts, 0.99)
        out[hop.name.lower()] = {
            "count": n,
            "p50_us": None if p50 is None else round(p50 / 1000, 2),
            "p99_us": None if p99 is None else round(p99 / 1000, 2),
            # the raw log-linear bucket counts (perpbot.metrics), for any other quantile
            "buckets": {str(i): int(c) for i, c in enumerate(counts) if c},
        }
    return out


def status_report(status: StatusBoard, run_id: str, procs: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """Everything `perpbot-ctl status` shows, as plain data."""
    t = now_ns()
    slots = dict(procs)
    processes = {}
    for name, slot in [("launcher", 0), *procs]:
        rec = status.procs[slot]
        state = ProcState(int(rec["state"]))
        age_ns = t - int(rec["heartbeat_ns"])
        # a process that stopped beating is DEGRADED to every reader (its own record says RUNNING)
        if state == ProcState.RUNNING and age_ns > DEGRADED_AFTER_NS:
            state = ProcState.DEGRADED
        processes[name] = {
            "pid": int(rec["pid"]),
            "state": state.name,
            "heartbeat_age_ms": round(age_ns / 1e6, 1),
            "restarts": int(rec["restarts"]),
        }
    feeds = {}
    for i, v in enumerate(status.venues):
        f = status.feeds[i]
        last = int(f["last_recv_ns"])
        feeds[v] = {
            "state": FeedState(int(f["state"])).name,
            # a ccxt.pro feed is slower than a native one: say so wherever feeds are shown
            "kind": "ccxt.pro (slower than native)" if int(f["kind"]) == FeedKind.CCXT else "native",
            "frames": int(f["frames"]),
            "quotes": int(f["quotes"]),
            "parse_errors": int(f["parse_errors"]),
            "reconnects": int(f["reconnects"]),
            "resyncs": int(f["resyncs"]),
            "stale_symbols": int(f["stale_symbols"]),
            "connections_up": int(f["connections_up"]),
            "last_quote_age_ms": None if last == 0 else round((t - last) / 1e6, 1),
        }
    positions: dict[str, dict[str, float]] = {}
    for i, v in enumerate(status.venues):
        for j, s in enumerate(status.symbols):
            q = float(status.positions[i, j]["qty"])
            if q:
                positions.setdefault(v, {})[s] = q
    return {
        "run_id": run_id,
        "trading_state": TradingState(int(status.glob["trading_state"])).name,
        "halted": status.halted(),
        "processes": processes,
        "feeds": feeds,
        "scanner": _counters(status, slots.get("scanner"), ScannerCounter),
        "exec": _counters(status, slots.get("exec"), ExecCounter),
        "positions": positions,
        "latency": _hop_stats(status),
    }


def journal_summary(journal: Path) -> dict[str, Any]:
    """Orders, fills, trades and realized PnL (after fees) from the run's journal."""
    if not journal.exists():
        return {"orders": 0, "fills": 0, "trades_completed": 0, "trades_open": 0, "realized_pnl": "0"}
    con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        orders = con.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
        fills = con.execute("SELECT COUNT(*) FROM fills").fetchone()[0]
        closed = con.execute("SELECT realized_pnl FROM trades WHERE state = 'closed'").fetchall()
        open_ = con.execute("SELECT COUNT(*) FROM trades WHERE state = 'open'").fetchone()[0]
        failed = con.execute("SELECT COUNT(*) FROM trades WHERE state = 'failed'").fetchone()[0]
        fees = con.execute("SELECT fee FROM fills").fetchall()
    finally:
        con.close()
    pnl = sum((Decimal(r[0]) for r in closed if r[0] is not None), Decimal(0))
    return {
        "orders": orders,
        "fills": fills,
        "trades_completed": len(closed),
        "trades_open": open_,
        "trades_failed": failed,
        "fees_paid": str(sum((Decimal(r[0]) for r in fees), Decimal(0))),
        "realized_pnl": str(pnl),
    }


def run_summary(status: StatusBoard, data_dir: Path, run_id: str, procs: Sequence[tuple[str, int]]) -> dict[str, Any]:
    rep = status_report(status, run_id, procs)
    rep["journal"] = journal_summary(data_dir / "journal.sqlite")
    rep["data_dir"] = str(data_dir)
    return rep


def format_summary(s: dict[str, Any]) -> str:
    j = s["journal"]
    lat = s["latency"]["tick_to_signal"]
    lines = [f"--- run {s['run_id']} summary ({s['trading_state']}) ---", "quotes received per venue:"]
    for v, f in s["feeds"].items():
        lines.append(f"  {v:<14} {f['quotes']:>9}  (parse errors {f['parse_errors']}, reconnects {f['reconnects']})")
    lines += [
        f"opportunities:     {s['scanner'].get('opportunities', 0)}",
        f"orders:            {j['orders']}",
        f"fills:             {j['fills']}",
        f"completed trades:  {j['trades_completed']}  "
        f"(still open: {j['trades_open']}, failed: {j.get('trades_failed', 0)})",
        f"realized PnL after fees (USD): {Decimal(j['realized_pnl']):.4f}",
    ]
    if lat["count"]:
        lines.append(f"tick->signal: p50 {lat['p50_us']} us, p99 {lat['p99_us']} us over {lat['count']} signals")
    else:
        lines.append("tick->signal: no signals")
    t2o = s["latency"]["tick_to_order"]
    if t2o["count"]:
        lines.append(f"tick->order:  p50 {t2o['p50_us']} us, p99 {t2o['p99_us']} us over {t2o['count']} orders")
    if s["positions"]:
        lines.append(f"open positions: {s['positions']}")
    lines.append(f"journal and logs: {s['data_dir']}")
    return "\n".join(lines)
