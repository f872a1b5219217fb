"""Every shared-memory layout PerpBot uses, defined once.

Two segments per run, `perpbot-<run_id>-board` and `perpbot-<run_id>-status`.
Both start with a 64-byte header (magic, layout version, table sizes, owner
pid); the venue and symbol tables follow, then the records. Offsets are pure
functions of (n_venues, n_symbols) so every process computes the same layout.
A change to any dtype here must bump its LAYOUT_VERSION (a test pins them).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

CACHE_LINE = 64
NAME_LEN = 16
MAX_VENUES = 32
MAX_SYMBOLS = 4096
MAX_PROCS = 64

BOARD_MAGIC = b"PBQBOARD"
STATUS_MAGIC = b"PBSTATUS"
BOARD_LAYOUT_VERSION = 1
STATUS_LAYOUT_VERSION = 4

#: capacity of each venue's ring of changed symbol indices (power of two)
RING_CAPACITY = 1024

NAME_DTYPE = np.dtype(f"S{NAME_LEN}")

HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("layout_version", "<u4"),
        ("n_venues", "<u4"),
        ("n_symbols", "<u4"),
        ("ring_capacity", "<u4"),
        ("owner_pid", "<i4"),
        ("_pad0", "<u4"),
        ("created_ns", "<i8"),
        ("total_size", "<u8"),
        ("_pad1", "V16"),
    ]
)

#: One quote slot, one cache line. Written under a seqlock by its venue's feed only.
SLOT_DTYPE = np.dtype(
    [
        ("seq", "<u8"),
        ("bid", "<f8"),
        ("ask", "<f8"),
        ("bid_size", "<f8"),
        ("ask_size", "<f8"),
        ("ts_exchange_ns", "<i8"),
        ("ts_recv_ns", "<i8"),
        ("ts_write_ns", "<i8"),
    ]
)

#: hot-path codecs for the same slot, derived from SLOT_DTYPE's field order
SEQ_STRUCT = struct.Struct("<Q")
SLOT_BODY_STRUCT = struct.Struct("<ddddqqq")
def field_offset(dtype: np.dtype, name: str) -> int:
    """Byte offset of a named field in a structured dtype."""
    fields = dtype.fields
    assert fields is not None, "not a structured dtype"
    return int(fields[name][1])


SLOT_BODY_OFFSET = field_offset(SLOT_DTYPE, "bid")
RING_ENTRY_STRUCT = struct.Struct("<I")


class FeedState(enum.IntEnum):
    """A venue feed's connection state; only CONNECTED quotes are tradeable."""

    DOWN = 0
    CONNECTING = 1
    CONNECTED = 2
    STALE = 3  # connected but silent longer than allowed


class ProcState(enum.IntEnum):
    """Lifecycle of every PerpBot process (written to its status record)."""

    EMPTY = 0
    STARTING = 1
    RUNNING = 2
    DEGRADED = 3
    STOPPING = 4
    STOPPED = 5
    FAULTED = 6


class Role(enum.IntEnum):
    NONE = 0
    LAUNCHER = 1
    MARKET = 2
    FEED = 3
    SCANNER = 4
    EXEC = 5
    MONITOR = 6


class TradingState(enum.IntEnum):
    RUNNING = 0
    PAUSED = 1
    HALTED = 2
    REDUCE_ONLY = 3


class ProcError(enum.IntEnum):
    """`last_error` in a process record: why it stopped, for the launcher and for people."""

    NONE = 0
    TASK_FAILED = 1
    START_FAILED = 2
    POSITION_MISMATCH = 3  # exec: the venue's positions disagree with the journal
    JOURNAL_FAILED = 4  # exec: the journal could not be written (disk full, read-only, I/O error)


class TradeRingState(enum.IntEnum):
    """`state` of a record in the status segment's trade ring."""

    OPEN = 1
    CLOSED = 2


class ScannerCounter(enum.IntEnum):
    PASSES = 0
    CHANGES = 1
    OPPORTUNITIES = 2
    REPEATS_SUPPRESSED = 3
    STALE_SKIPS = 4
    THIN_SKIPS = 5
    HALTED_SKIPS = 6
    RESCANS = 7


class ExecCounter(enum.IntEnum):
    OPPS_RECEIVED = 0
    OPPS_TOO_OLD = 1
    #: orders that passed every risk layer (RiskGate.approved). Every order sent was approved
    #: once, so ORDERS_SENT equals it but for orders a kill switch held back in between
    #: (counted in RISK_REJECTS): the proof that nothing reaches a venue unchecked
    ORDERS_APPROVED = 2
    ORDERS_SENT = 3
    FILLS = 4
    TRADES_OPENED = 5
    TRADES_CLOSED = 6
    RISK_REJECTS = 7


class MarketCounter(enum.IntEnum):
    """The demo market process's counters in its status record (`counters[i]`)."""

    FRAMES_SENT = 0
    CLIENTS = 1  # connected now
    DISLOCATIONS = 2
    QUOTE_UPDATES = 3
    FRAMES_CONFLATED = 4  # dropped for a paused client because a newer one replaced it
    CONTROL_FRAMES = 5
    CONNECTIONS = 6  # accepted since start
    JUMPS = 7


class FeedCounter(enum.IntEnum):
    """A feed process's counters in its status record (its venue's FEED_DTYPE record has more)."""

    FRAMES = 0
    QUOTES = 1
    PARSE_ERRORS = 2
    UNKNOWN_SYMBOLS = 3
    RECONNECTS = 4


class Hop(enum.IntEnum):
    """Latency histograms kept in the status segment (DESIGN.md, latency accounting)."""

    FEED_RECV_TO_WRITE = 0
    BOARD_WRITE_TO_DETECT = 1
    TICK_TO_SIGNAL = 2  # frame read -> opportunity detected
    DETECT_TO_EXEC = 3  # ZeroMQ hop
    EXEC_TO_DECIDE = 4
    DECIDE_TO_DISPATCH = 5
    TICK_TO_ORDER = 6  # frame read -> order handed to the venue


N_COUNTERS = 8
N_BUCKETS = 320
N_RECENT = 64

PROC_DTYPE = np.dtype(
    [
        ("name", NAME_DTYPE),
        ("pid", "<i4"),
        ("role", "u1"),
        ("state", "u1"),
        ("_pad0", "V2"),
        ("heartbeat_ns", "<i8"),
        ("started_ns", "<i8"),
        ("last_error", "<i4"),
        ("restarts", "<u4"),
        ("counters", "<u8", (N_COUNTERS,)),
    ],
    align=True,
)

GLOBAL_DTYPE = np.dtype(
    [
        ("trading_state", "<u4"),
        ("halt", "<u4"),  # kill switch: non-zero means no new orders, checked every pass/order
        ("halt_ns", "<i8"),
        ("state_changed_ns", "<i8"),
        ("run_started_ns", "<i8"),
        ("launcher_pid", "<i4"),
        # requests from the launcher (a generation it bumps) and exec's answers (the generation done)
        ("flatten_request", "<u4"),
        ("flatten_done", "<u4"),
        ("risk_generation", "<u4"),
        ("risk_loaded", "<u4"),
        ("_pad0", "V4"),
        ("cancel_done_ns", "<i8"),  # exec: every open order cancelled after the kill switch
    ]
)

class FeedKind(enum.IntEnum):
    NATIVE = 0  # picows + orjson, parser in perpbot/feeds/<venue>.py
    CCXT = 1  # ccxt.pro's own client: slower, for venues without a native feed


FEED_DTYPE = np.dtype(
    [
        ("state", "<u4"),
        ("reconnects", "<u4"),
        ("frames", "<u8"),
        ("quotes", "<u8"),
        ("parse_errors", "<u8"),
        ("unknown_symbols", "<u8"),
        ("last_recv_ns", "<i8"),
        ("connected_ns", "<i8"),
        ("state_changed_ns", "<i8"),
        ("stale_symbols", "<u4"),  # subscribed symbols without an update for feed.symbol_stale_ms
        ("connections_up", "<u4"),  # of the venue's connections (Extended opens one per market)
        ("resyncs", "<u4"),  # book resubscriptions forced by a sequence gap or crossed book
        ("kind", "<u4"),  # FeedKind
    ]
)

POSITION_DTYPE = np.dtype([("qty", "<f8"), ("avg_price", "<f8")])

CAPITAL_DTYPE = np.dtype(
    [("free", "<f8"), ("locked", "<f8"), ("total", "<f8"), ("realized_pnl", "<f8"),
     ("open_orders", "<u4"), ("_pad0", "V4")]
)

FILL_RECORD_DTYPE = np.dtype(
    [
        ("ts_ns", "<i8"),
        ("trade_id", "<u8"),
        ("symbol", "<u2"),
        ("venue", "u1"),
        ("side", "u1"),  # 1 buy, 2 sell
        ("_pad0", "V4"),
        ("qty", "<f8"),
        ("price", "<f8"),
        ("fee", "<f8"),
    ]
)

OPPORTUNITY_RECORD_DTYPE = np.dtype(
    [
        ("ts_detect_ns", "<i8"),
        ("opp_id", "<u8"),
        ("symbol", "<u2"),
        ("buy_venue", "u1"),
        ("sell_venue", "u1"),
        ("outcome", "<i4"),  # 0 pending, >0 trade id low bits, <0 a skip reason code
        ("edge_bps", "<f8"),
        ("buy_price", "<f8"),
        ("sell_price", "<f8"),
        ("size", "<f8"),
    ]
)

TRADE_RECORD_DTYPE = np.dtype(
    [
        ("trade_id", "<u8"),
        ("symbol", "<u2"),
        ("buy_venue", "u1"),
        ("sell_venue", "u1"),
        ("state", "<u4"),  # 1 open, 2 closed
        ("size", "<f8"),
        ("open_ns", "<i8"),
        ("close_ns", "<i8"),
        ("realized_pnl", "<f8"),
        ("_pad0", "V8"),
    ]
)

RING_COUNTER_DTYPE = np.dtype([("count", "<u8"), ("_pad0", "V56")])


def _align(n: int, a: int = CACHE_LINE) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class BoardLayout:
    """Byte offsets inside the board segment for a given table size."""

    n_venues: int
    n_symbols: int
    ring_capacity: int
    venue_table: int
    symbol_table: int
    counters: int  # one cache line per venue: its monotonically increasing update count
    rings: int  # per venue, ring_capacity u4 symbol indices
    slots: int
    size: int

    def slot_offset(self, venue: int, symbol: int) -> int:
        return self.slots + (venue * self.n_symbols + symbol) * SLOT_DTYPE.itemsize

    def counter_offset(self, venue: int) -> int:
        return self.counters + venue * CACHE_LINE

    def ring_offset(self, venue: int) -> int:
        return self.rings + venue * self.ring_capacity * RING_ENTRY_STRUCT.size


def board_layout(n_venues: int, n_symbols: int, ring_capacity: int = RING_CAPACITY) -> BoardLayout:
    _check_sizes(n_venues, n_symbols)
    if ring_capacity & (ring_capacity - 1):
        raise ValueError("ring_capacity must be a power of two")
    venue_table = HEADER_DTYPE.itemsize
    symbol_table = venue_table + _align(n_venues * NAME_LEN)
    counters = symbol_table + _align(n_symbols * NAME_LEN)
    rings = counters + n_venues * CACHE_LINE
    slots = _align(rings + n_venues * ring_capacity * RING_ENTRY_STRUCT.size)
    size = slots + n_venues * n_symbols * SLOT_DTYPE.itemsize
    return BoardLayout(n_venues, n_symbols, ring_capacity, venue_table, symbol_table, counters, rings, slots, size)


@dataclass(frozen=True)
class StatusLayout:
    """Byte offsets inside the status segment for a given table size."""

    n_venues: int
    n_symbols: int
    venue_table: int
    symbol_table: int
    global_: int
    procs: int
    feeds: int
    positions: int
    capital: int
    opportunities_count: int
    opportunities: int
    trades_count: int
    trades: int
    fills_count: int
    fills: int
    histograms: int
    size: int


def status_layout(n_venues: int, n_symbols: int) -> StatusLayout:
    _check_sizes(n_venues, n_symbols)
    venue_table = HEADER_DTYPE.itemsize
    symbol_table = venue_table + _align(n_venues * NAME_LEN)
    global_ = symbol_table + _align(n_symbols * NAME_LEN)
    procs = global_ + _align(GLOBAL_DTYPE.itemsize)
    feeds = procs + _align(MAX_PROCS * PROC_DTYPE.itemsize)
    positions = feeds + _align(n_venues * FEED_DTYPE.itemsize)
    capital = positions + _align(n_venues * n_symbols * POSITION_DTYPE.itemsize)
    opportunities_count = capital + _align(n_venues * CAPITAL_DTYPE.itemsize)
    opportunities = opportunities_count + CACHE_LINE
    trades_count = opportunities + _align(N_RECENT * OPPORTUNITY_RECORD_DTYPE.itemsize)
    trades = trades_count + CACHE_LINE
    fills_count = trades + _align(N_RECENT * TRADE_RECORD_DTYPE.itemsize)
    fills = fills_count + CACHE_LINE
    histograms = fills + _align(N_RECENT * FILL_RECORD_DTYPE.itemsize)
    size = histograms + _align(len(Hop) * N_BUCKETS * 8)
    return StatusLayout(
        n_venues, n_symbols, venue_table, symbol_table, global_, procs, feeds, positions,
        capital, opportunities_count, opportunities, trades_count, trades, fills_count, fills, histograms, size,
    )


def _check_sizes(n_venues: int, n_symbols: int) -> None:
    if not 1 <= n_venues <= MAX_VENUES:
        raise ValueError(f"n_venues must be 1..{MAX_VENUES}, got {n_venues}")
    if not 1 <= n_symbols <= MAX_SYMBOLS:
        raise ValueError(f"n_symbols must be 1..{MAX_SYMBOLS}, got {n_symbols}")


def segment_names(run_id: str) -> tuple[str, str]:
    """(board, status) segment names for a run."""
    return f"perpbot-{run_id}-board", f"perpbot-{run_id}-status"
