"""perpbot-export: a run's trades (or fills) from its journal as CSV.

    perpbot-export JOURNAL [--fills] [--out FILE]

Reads the SQLite journal read-only (a running exec keeps writing), one row per
trade with both legs' venues, size, entry edge, realized PnL and fees after
fees (decimal text, exactly as journaled), open and close times in UTC.
`--fills` writes every fill instead. Writes to stdout without `--out`.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

TRADE_COLUMNS = ("trade_id", "symbol", "buy_venue", "sell_venue", "qty", "state", "entry_edge_bps",
                 "realized_pnl", "fees", "close_reason", "opened_utc", "closed_utc")
FILL_COLUMNS = ("fill_id", "client_order_id", "trade_id", "purpose", "venue", "symbol", "side", "qty", "price",
                "fee", "utc")


def _utc(wall: float | None) -> str:
    return "" if wall is None else datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def export(journal: Path, out: TextIO, fills: bool = False) -> int:
    """Write the CSV; returns the number of data rows."""
    con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        w = csv.writer(out)
        if fills:
            w.writerow(FILL_COLUMNS)
            rows = con.execute(
                "SELECT f.fill_id, f.client_order_id, o.trade_id, o.purpose, f.venue, f.symbol, f.side, f.qty,"
                " f.price, f.fee, f.wall_time FROM fills f JOIN orders o USING (client_order_id)"
                " ORDER BY f.ts_ns, f.fill_id").fetchall()
            for r in rows:
                w.writerow((*r[:-1], _utc(r[-1])))
        else:
            w.writerow(TRADE_COLUMNS)
            rows = con.execute(
                "SELECT trade_id, symbol, buy_venue, sell_venue, qty, state, entry_edge_bps, realized_pnl, fees,"
                " close_reason, wall_open, wall_close FROM trades ORDER BY trade_id").fetchall()
            for r in rows:
                w.writerow((*r[:-2], _utc(r[-2]), _utc(r[-1])))
        return len(rows)
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perpbot-export", description=__doc__.splitlines()[0])
    p.add_argument("journal", type=Path, help="a run's journal.sqlite (perpbot-data/<run id>/journal.sqlite)")
    p.add_argument("--fills", action="store_true", help="every fill instead of one row per trade")
    p.add_argument("--out", type=Path, help="CSV file to write (default: stdout)")
    args = p.parse_args(argv)
    if not args.journal.is_file():
        print(f"perpbot-export: no journal at {args.journal}", file=sys.stderr)
        return 2
    try:
        if args.out is None:
            export(args.journal, sys.stdout, args.fills)
        else:
            with open(args.out, "w", newline="") as f:
                n = export(args.journal, f, args.fills)
            print(f"{n} rows written to {args.out}")
    except sqlite3.DatabaseError as e:
        print(f"perpbot-export: {args.journal} is not a PerpBot journal: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
