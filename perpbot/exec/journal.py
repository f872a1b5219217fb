"""The exec journal: one SQLite file per run at `RunContext.journal_path`.

WAL mode with synchronous=NORMAL: a commit is an append to the WAL without an
fsync (the WAL is synced at checkpoints), so a crash of the process loses
nothing and a power loss loses at most the last commits. Foreign keys are on.

Automatic checkpoints are off on the writing connection: measured on the
build machine, they stall one commit in ~1000 for ~5 ms (the fsync), and the
commit before an order is sent is on the hot path. The owner calls
`checkpoint()` periodically instead, from a worker thread (it uses its own
connection, so the event loop keeps writing meanwhile); `close()` does a last
one.
Decimals are stored as TEXT (exact); stamps are `perpbot.clock.now_ns`
(monotonic, comparable with every stamp of the run) plus `wall_time` (epoch
seconds) for humans.

Schema (version 2)::

    meta(key TEXT PRIMARY KEY, value TEXT)          -- schema_version, run_id

    trades(trade_id INTEGER PRIMARY KEY,
           symbol TEXT, buy_venue TEXT, sell_venue TEXT,
           qty TEXT,                  -- hedged quantity (the smaller filled leg)
           state TEXT,                -- opening | open | closed | failed
           open_ns INTEGER, close_ns INTEGER,
           entry_edge_bps REAL,       -- net of both taker fees, at decision
           realized_pnl TEXT,         -- all fills of the trade, all fees included
           fees TEXT, opp_id INTEGER, run_id TEXT,
           close_reason TEXT,         -- take_profit | max_hold | unwind | open_failed | flatten
                                      --   | recovered | maker_unfilled
           wall_open REAL, wall_close REAL)

    orders(client_order_id TEXT PRIMARY KEY,   -- <run_id>-<trade_id>-<purpose>-<leg>[-<attempt>]
           trade_id INTEGER REFERENCES trades, opp_id INTEGER,
           venue TEXT, symbol TEXT, side TEXT,  -- buy | sell
           qty TEXT, price TEXT,                -- price: IOC limit, or the quote for a market order
           purpose TEXT,                        -- open | close | unwind | hedge
           status TEXT,                         -- intent | filled | partial | expired | rejected
                                                --   | not_sent (kill switch after intent)
                                                --   | unknown (sent, final state not established)
           order_type TEXT, reduce_only INTEGER,
           ts_decide_ns INTEGER, ts_dispatch_ns INTEGER, ts_done_ns INTEGER,
           wall_time REAL,                      -- when the intent was written
           venue_order_id TEXT, filled_qty TEXT, avg_price TEXT, fee TEXT, reason TEXT)

    fills(fill_id TEXT PRIMARY KEY,
          client_order_id TEXT NOT NULL REFERENCES orders,
          venue TEXT, symbol TEXT, side TEXT, qty TEXT, price TEXT, fee TEXT,
          ts_ns INTEGER, wall_time REAL)

    skips(id INTEGER PRIMARY KEY, opp_id INTEGER, reason TEXT, ts_ns INTEGER,
          symbol TEXT, buy_venue TEXT, sell_venue TEXT, detail TEXT, wall_time REAL)

    incidents(id INTEGER PRIMARY KEY, trade_id INTEGER, kind TEXT, detail TEXT,
              ts_ns INTEGER, wall_time REAL)   -- unwinds, hedges, naked legs, venue errors

    funding(payment_id TEXT PRIMARY KEY,       -- the venue's id, prefixed with the venue
            venue TEXT, symbol TEXT,
            amount TEXT,                       -- USD, + received, - paid
            ts_ms INTEGER,                     -- when the venue booked it (epoch ms)
            trade_id INTEGER,                  -- the trade holding the leg, NULL if none
            wall_time REAL)

Write discipline: an order row is inserted (status `intent`) and committed
BEFORE the order is sent, then updated with its result; fills are inserted
when the result arrives. Skips are not committed on their own (they are not
safety-relevant); they ride along with the next commit or `flush()`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from perpbot.clock import now_ns
from perpbot.errors import FatalError
from perpbot.exec.venues.base import OrderResult

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trades(
    trade_id INTEGER PRIMARY KEY,
    symbol TEXT NOT NULL, buy_venue TEXT NOT NULL, sell_venue TEXT NOT NULL,
    qty TEXT NOT NULL, state TEXT NOT NULL,
    open_ns INTEGER, close_ns INTEGER, entry_edge_bps REAL,
    realized_pnl TEXT, fees TEXT, opp_id INTEGER, run_id TEXT, close_reason TEXT,
    wall_open REAL, wall_close REAL);
CREATE TABLE IF NOT EXISTS orders(
    client_order_id TEXT PRIMARY KEY,
    trade_id INTEGER REFERENCES trades(trade_id), opp_id INTEGER,
    venue TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
    qty TEXT NOT NULL, price TEXT, purpose TEXT NOT NULL, status TEXT NOT NULL,
    order_type TEXT, reduce_only INTEGER,
    ts_decide_ns INTEGER, ts_dispatch_ns INTEGER, ts_done_ns INTEGER, wall_time REAL,
    venue_order_id TEXT, filled_qty TEXT, avg_price TEXT, fee TEXT, reason TEXT);
CREATE TABLE IF NOT EXISTS fills(
    fill_id TEXT PRIMARY KEY,
    client_order_id TEXT NOT NULL REFERENCES orders(client_order_id),
    venue TEXT, symbol TEXT, side TEXT, qty TEXT, price TEXT, fee TEXT,
    ts_ns INTEGER, wall_time REAL);
CREATE TABLE IF NOT EXISTS skips(
    id INTEGER PRIMARY KEY, opp_id INTEGER, reason TEXT NOT NULL, ts_ns INTEGER,
    symbol TEXT, buy_venue TEXT, sell_venue TEXT, detail TEXT, wall_time REAL);
CREATE TABLE IF NOT EXISTS incidents(
    id INTEGER PRIMARY KEY, trade_id INTEGER, kind TEXT NOT NULL, detail TEXT,
    ts_ns INTEGER, wall_time REAL);
CREATE TABLE IF NOT EXISTS funding(
    payment_id TEXT PRIMARY KEY, venue TEXT NOT NULL, symbol TEXT NOT NULL, amount TEXT NOT NULL,
    ts_ms INTEGER, trade_id INTEGER, wall_time REAL);
CREATE INDEX IF NOT EXISTS orders_by_trade ON orders(trade_id);
CREATE INDEX IF NOT EXISTS fills_by_order ON fills(client_order_id);
"""


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """An order row as written before the order is sent."""

    client_order_id: str
    trade_id: int
    opp_id: int
    venue: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal | None
    purpose: str
    order_type: str
    reduce_only: bool
    ts_decide_ns: int


def _s(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


class Journal:
    """Append-mostly record of everything exec decided and did."""

    def __init__(self, path: Path, *, run_id: str = "", clock: Callable[[], int] = now_ns,
                 wall: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._wall = wall
        # autocommit mode: transactions are explicit, so "committed before send" is visible here
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
        if run_id:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES('run_id', ?)", (run_id,))
        got = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        if int(got) != SCHEMA_VERSION:
            self._db.close()
            raise FatalError(f"journal {path} has schema version {got}, this build writes {SCHEMA_VERSION}")
        self._pending = False  # uncommitted skip rows
        self._ckpt: sqlite3.Connection | None = None  # used by one worker thread at a time

    # -- transactions -------------------------------------------------------------

    def _begin(self) -> None:
        if not self._pending:
            self._db.execute("BEGIN")
            self._pending = True

    def _commit(self) -> None:
        if self._pending:
            self._db.execute("COMMIT")
            self._pending = False

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One committed transaction (pending skips join it); rolled back on error."""
        self._begin()
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._pending = False
            raise
        self._commit()

    def flush(self) -> None:
        """Commit rows that were not committed on their own (skips)."""
        self._commit()

    def checkpoint(self) -> None:
        """Move the WAL into the database file; thread-safe against this object's writes.

        Call it from one worker thread at a time (e.g. `asyncio.to_thread`) and
        never concurrently with `close()`.
        """
        if self._ckpt is None:
            self._ckpt = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # PASSIVE: copy what it can without waiting for, or blocking, the writer
        self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Commit what is pending, checkpoint and close. Idempotent."""
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None
        try:
            self._commit()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.ProgrammingError:
            return  # already closed
        self._db.close()

    # -- trades ---------------------------------------------------------------------

    def realized_since(self, wall_time: float) -> Decimal:
        """Realized PnL after fees of the trades finished (closed or failed) since `wall_time` (epoch s)."""
        rows = self._db.execute("SELECT realized_pnl FROM trades WHERE state IN ('closed', 'failed')"
                                " AND wall_close >= ?", (wall_time,)).fetchall()
        return sum((Decimal(r[0]) for r in rows if r[0] is not None), Decimal(0))

    def next_trade_id(self) -> int:
        """One past the largest trade id in the file, so a reopened journal continues."""
        row = self._db.execute("SELECT COALESCE(MAX(trade_id), 0) FROM trades").fetchone()
        return int(row[0]) + 1

    def record_open_intent(self, *, trade_id: int, opp_id: int, run_id: str, symbol: str,
                           buy_venue: str, sell_venue: str, qty: Decimal, entry_edge_bps: float,
                           orders: Sequence[OrderIntent]) -> None:
        """The trade row (state `opening`) and its opening orders, committed together."""
        with self._tx():
            self._db.execute(
                "INSERT INTO trades(trade_id, symbol, buy_venue, sell_venue, qty, state, open_ns,"
                " entry_edge_bps, realized_pnl, fees, opp_id, run_id, wall_open)"
                " VALUES(?,?,?,?,?,'opening',?,?,'0','0',?,?,?)",
                (trade_id, symbol, buy_venue, sell_venue, str(qty), self._clock(), entry_edge_bps,
                 opp_id, run_id, self._wall()),
            )
            self._insert_orders(orders)

    def record_intents(self, orders: Sequence[OrderIntent]) -> None:
        """Order rows (status `intent`) committed before the orders are sent."""
        with self._tx():
            self._insert_orders(orders)

    def _insert_orders(self, orders: Sequence[OrderIntent]) -> None:
        wall = self._wall()
        self._db.executemany(
            "INSERT INTO orders(client_order_id, trade_id, opp_id, venue, symbol, side, qty, price,"
            " purpose, status, order_type, reduce_only, ts_decide_ns, wall_time)"
            " VALUES(?,?,?,?,?,?,?,?,?,'intent',?,?,?,?)",
            [(o.client_order_id, o.trade_id, o.opp_id, o.venue, o.symbol, o.side, str(o.qty),
              _s(o.price), o.purpose, o.order_type, int(o.reduce_only), o.ts_decide_ns, wall)
             for o in orders],
        )

    def record_results(self, results: Sequence[OrderResult], ts_dispatch_ns: int) -> None:
        """Each order's terminal state and its fills, committed together."""
        wall = self._wall()
        with self._tx():
            for r in results:
                self._db.execute(
                    "UPDATE orders SET status=?, ts_dispatch_ns=?, ts_done_ns=?, venue_order_id=?,"
                    " filled_qty=?, avg_price=?, fee=?, reason=? WHERE client_order_id=?",
                    (r.status.value, ts_dispatch_ns, r.ts_done_ns, r.venue_order_id,
                     str(r.filled_qty), _s(r.avg_price), str(r.fee), r.reason, r.client_order_id),
                )
                self._db.executemany(
                    "INSERT INTO fills VALUES(?,?,?,?,?,?,?,?,?,?)",
                    [(f.fill_id, f.client_order_id, f.venue, f.symbol, f.side.value, str(f.qty),
                      str(f.price), str(f.fee), f.ts_ns, wall) for f in r.fills],
                )

    def mark_orders(self, client_order_ids: Sequence[str], status: str, reason: str,
                    ts_dispatch_ns: int | None = None) -> None:
        """Give orders a terminal status without a venue result (`not_sent`, `error`)."""
        with self._tx():
            self._db.executemany(
                "UPDATE orders SET status=?, reason=?, ts_dispatch_ns=? WHERE client_order_id=?",
                [(status, reason, ts_dispatch_ns, c) for c in client_order_ids],
            )

    def update_trade(self, trade_id: int, *, state: str, qty: Decimal, realized_pnl: Decimal,
                     fees: Decimal, close_reason: str | None = None, closed: bool = False) -> None:
        """A trade's state and money so far; `closed` stamps the close (closed or failed)."""
        with self._tx():
            if closed:
                self._db.execute(
                    "UPDATE trades SET state=?, qty=?, realized_pnl=?, fees=?, close_reason=?,"
                    " close_ns=?, wall_close=? WHERE trade_id=?",
                    (state, str(qty), str(realized_pnl), str(fees), close_reason, self._clock(),
                     self._wall(), trade_id),
                )
            else:
                self._db.execute(
                    "UPDATE trades SET state=?, qty=?, realized_pnl=?, fees=? WHERE trade_id=?",
                    (state, str(qty), str(realized_pnl), str(fees), trade_id),
                )

    def update_trade_venues(self, trade_id: int, *, buy_venue: str, sell_venue: str) -> None:
        """A leg moved to another venue (a hedge on the next-best venue)."""
        with self._tx():
            self._db.execute("UPDATE trades SET buy_venue=?, sell_venue=? WHERE trade_id=?",
                             (buy_venue, sell_venue, trade_id))

    # -- funding ----------------------------------------------------------------------

    def funding_ids(self) -> set[str]:
        """Payment ids already journaled (so a payment is booked once)."""
        return {r[0] for r in self._db.execute("SELECT payment_id FROM funding")}

    def record_funding(self, *, payment_id: str, venue: str, symbol: str, amount: Decimal,
                       ts_ms: int, trade_id: int | None) -> None:
        """One funding payment the venue booked on a position."""
        with self._tx():
            self._db.execute("INSERT INTO funding VALUES(?,?,?,?,?,?,?)",
                             (payment_id, venue, symbol, str(amount), ts_ms, trade_id, self._wall()))

    # -- skips and incidents ------------------------------------------------------------

    def record_skip(self, *, opp_id: int, reason: str, ts_ns: int, symbol: str = "",
                    buy_venue: str = "", sell_venue: str = "", detail: str = "") -> None:
        """An opportunity not traded; committed with the next commit or `flush()`."""
        self._begin()
        self._db.execute(
            "INSERT INTO skips(opp_id, reason, ts_ns, symbol, buy_venue, sell_venue, detail,"
            " wall_time) VALUES(?,?,?,?,?,?,?,?)",
            (opp_id, reason, ts_ns, symbol, buy_venue, sell_venue, detail, self._wall()),
        )

    def record_incident(self, trade_id: int | None, kind: str, detail: str) -> None:
        """Something a human must be able to find later (unwind, naked leg, venue error)."""
        with self._tx():
            self._db.execute(
                "INSERT INTO incidents(trade_id, kind, detail, ts_ns, wall_time) VALUES(?,?,?,?,?)",
                (trade_id, kind, detail, self._clock(), self._wall()),
            )
