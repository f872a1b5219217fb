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

Write discipline: an order's intent is durable BEFORE the order is sent, then
its row is updated with its result; fills are inserted when the result
arrives. "Durable before the send" is one `write(2)` of one line to the
intent log (`journal.intents` beside the database, append-only): an SQLite
commit costs ~70 us here (WAL frames for every page the insert touches), a
line appended to a file a few us, and both survive the process dying the
same way (the kernel has the bytes; `synchronous=NORMAL` fsyncs neither per
commit). The rows themselves are inserted by the next transaction (the
order's results, usually a millisecond later, or `flush()`), after which the
log holds nothing SQLite lacks and is truncated. A journal opened on a log
with intents SQLite lacks (the process died in between) inserts them as
`intent` rows first, so recovery asks the venues about them like any other.
Skips are not committed on their own (they are not safety-relevant); they
ride along with the next commit or `flush()`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson

from perpbot.clock import now_ns
from perpbot.errors import FatalError
from perpbot.exec.venues.base import OrderResult

SCHEMA_VERSION = 2
#: the intent log's suffix, beside the database file
INTENT_LOG_SUFFIX = ".intents"
#: truncate the intent log once it is this big and SQLite holds all of it
INTENT_LOG_TRUNCATE_BYTES = 1 << 20

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


_INSERT_TRADE = (
    "INSERT INTO trades(trade_id, symbol, buy_venue, sell_venue, qty, state, open_ns,"
    " entry_edge_bps, realized_pnl, fees, opp_id, run_id, wall_open)"
    " VALUES(?,?,?,?,?,'opening',?,?,'0','0',?,?,?)")
_INSERT_ORDER = (
    "INSERT INTO orders(client_order_id, trade_id, opp_id, venue, symbol, side, qty, price,"
    " purpose, status, order_type, reduce_only, ts_decide_ns, wall_time)"
    " VALUES(?,?,?,?,?,?,?,?,?,'intent',?,?,?,?)")


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
        #: intents in the log and not yet in SQLite: (trade row or None, order rows)
        self._unsettled: list[tuple[tuple[object, ...] | None, list[tuple[object, ...]]]] = []
        self._in_tx: list[tuple[tuple[object, ...] | None, list[tuple[object, ...]]]] = []  # settled, uncommitted
        self.intent_log_path = path.with_name(path.name + INTENT_LOG_SUFFIX)
        self._absorb_intent_log()
        # ids already used: a duplicate must be refused when it is logged, not when it is
        # inserted later inside the transaction of some other order's results
        self._coids = {r[0] for r in self._db.execute("SELECT client_order_id FROM orders")}
        self._trade_ids = {r[0] for r in self._db.execute("SELECT trade_id FROM trades")}
        self._ilog = os.open(self.intent_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._ilog_bytes = os.fstat(self._ilog).st_size

    # -- transactions -------------------------------------------------------------

    def _begin(self) -> None:
        if not self._pending:
            self._db.execute("BEGIN")
            self._pending = True
        # every transaction inserts the logged intents first: its rows may reference them
        self._settle_intents()

    def _settle_intents(self) -> None:
        """Insert the logged intents SQLite lacks, in the transaction just begun."""
        if not self._unsettled:
            return
        unsettled, self._unsettled = self._unsettled, []
        self._in_tx.extend(unsettled)
        for trade, orders in unsettled:
            if trade is not None:
                self._db.execute(_INSERT_TRADE, trade)
            self._db.executemany(_INSERT_ORDER, orders)

    def _log_intents(self, trade: tuple[object, ...] | None, orders: list[tuple[object, ...]]) -> None:
        """The intents, durable against a crash of this process, in one write."""
        coids = [str(o[0]) for o in orders]
        dup = [c for c in coids if c in self._coids] or ([] if len(set(coids)) == len(coids) else coids)
        if dup:
            raise sqlite3.IntegrityError(f"client order id already journaled: {dup[0]}")
        if trade is not None and trade[0] in self._trade_ids:
            raise sqlite3.IntegrityError(f"trade id already journaled: {trade[0]}")
        line = orjson.dumps({"t": trade, "o": orders}) + b"\n"
        written = os.write(self._ilog, line)
        if written != len(line):  # a regular file takes it whole or raises (disk full: OSError)
            raise OSError(f"intent log {self.intent_log_path}: short write {written}/{len(line)}")
        self._ilog_bytes += written
        self._unsettled.append((trade, orders))
        self._coids.update(coids)
        if trade is not None:
            self._trade_ids.add(int(str(trade[0])))

    def _absorb_intent_log(self) -> None:
        """Intents a dead process logged but never put in SQLite become `intent` rows now."""
        try:
            data = self.intent_log_path.read_bytes()
        except FileNotFoundError:
            return
        rows: list[tuple[tuple[object, ...] | None, list[tuple[object, ...]]]] = []
        for line in data.split(b"\n"):
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the empty tail, or a line torn by the crash (never sent: written first)
            rows.append((None if rec["t"] is None else tuple(rec["t"]), [tuple(o) for o in rec["o"]]))
        with self._tx():
            for trade, orders in rows:
                if trade is not None:
                    self._db.execute(_INSERT_TRADE.replace("INSERT", "INSERT OR IGNORE", 1), trade)
                self._db.executemany(_INSERT_ORDER.replace("INSERT", "INSERT OR IGNORE", 1), orders)
        os.truncate(self.intent_log_path, 0)

    def _commit(self) -> None:
        if self._pending:
            self._db.execute("COMMIT")
            self._pending = False
            self._in_tx = []

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One committed transaction (pending skips join it); rolled back on error."""
        self._begin()
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._pending = False
            # the intents this transaction inserted are gone with it: settle them again next time
            self._unsettled[:0] = self._in_tx
            self._in_tx = []
            raise
        self._commit()

    def flush(self) -> None:
        """Commit rows not committed on their own (skips, intents whose results are pending)."""
        if self._unsettled:
            self._begin()
        self._commit()
        if self._ilog_bytes >= INTENT_LOG_TRUNCATE_BYTES and not self._unsettled:
            os.ftruncate(self._ilog, 0)  # SQLite now holds every intent the log has
            self._ilog_bytes = 0

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
            self.flush()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.ProgrammingError:
            return  # already closed
        self._db.close()
        os.ftruncate(self._ilog, 0)
        os.close(self._ilog)

    # -- trades ---------------------------------------------------------------------

    def realized_since(self, wall_time: float) -> Decimal:
        """Realized PnL after fees of the trades finished (closed or failed) since `wall_time` (epoch s)."""
        rows = self._db.execute("SELECT realized_pnl FROM trades WHERE state IN ('closed', 'failed')"
                                " AND wall_close >= ?", (wall_time,)).fetchall()
        return sum((Decimal(r[0]) for r in rows if r[0] is not None), Decimal(0))

    def next_trade_id(self) -> int:
        """One past the largest trade id in the file, so a reopened journal continues."""
        return max(self._trade_ids, default=0) + 1

    def record_open_intent(self, *, trade_id: int, opp_id: int, run_id: str, symbol: str,
                           buy_venue: str, sell_venue: str, qty: Decimal, entry_edge_bps: float,
                           orders: Sequence[OrderIntent]) -> None:
        """The trade (state `opening`) and its opening orders, durable before they are sent."""
        trade = (trade_id, symbol, buy_venue, sell_venue, str(qty), self._clock(), entry_edge_bps,
                 opp_id, run_id, self._wall())
        self._log_intents(trade, self._order_rows(orders))

    def record_intents(self, orders: Sequence[OrderIntent]) -> None:
        """Order intents (status `intent`), durable before the orders are sent."""
        self._log_intents(None, self._order_rows(orders))

    def _order_rows(self, orders: Sequence[OrderIntent]) -> list[tuple[object, ...]]:
        wall = self._wall()
        return [(o.client_order_id, o.trade_id, o.opp_id, o.venue, o.symbol, o.side, str(o.qty),
                 _s(o.price), o.purpose, o.order_type, int(o.reduce_only), o.ts_decide_ns, wall)
                for o in orders]

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
