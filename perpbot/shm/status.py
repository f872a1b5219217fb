"""The status segment: what every process is doing, readable without slowing anyone.

Each record has exactly one writer: a process its own `PROC_DTYPE` record, a
feed its venue's `FEED_DTYPE` record, the scanner the opportunity ring, the
exec process positions, capital and trades, the launcher the global record.
The kill switch (`global.halt`) is set by the launcher and read by the scanner
on every pass and by exec before every order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from perpbot.clock import now_ns
from perpbot.shm.layout import (
    CAPITAL_DTYPE,
    FEED_DTYPE,
    FILL_RECORD_DTYPE,
    GLOBAL_DTYPE,
    MAX_PROCS,
    N_BUCKETS,
    N_RECENT,
    OPPORTUNITY_RECORD_DTYPE,
    POSITION_DTYPE,
    PROC_DTYPE,
    SEQ_STRUCT,
    STATUS_LAYOUT_VERSION,
    STATUS_MAGIC,
    TRADE_RECORD_DTYPE,
    FeedState,
    Hop,
    ProcState,
    Role,
    StatusLayout,
    TradingState,
    field_offset,
    status_layout,
)
from perpbot.shm.segment import Segment

_U4_UNPACK = struct.Struct("<I").unpack_from


class StatusBoard:
    """Typed views over the status segment."""

    def __init__(self, seg: Segment, layout: StatusLayout, venues: Sequence[str], symbols: Sequence[str]):
        self.segment = seg
        self.layout = layout
        self.venues = tuple(venues)
        self.symbols = tuple(symbols)
        buf = seg.buf
        lay = layout
        nv, ns = lay.n_venues, lay.n_symbols
        self.glob = np.ndarray((), GLOBAL_DTYPE, buffer=buf, offset=lay.global_)
        self.procs = np.ndarray((MAX_PROCS,), PROC_DTYPE, buffer=buf, offset=lay.procs)
        self.feeds = np.ndarray((nv,), FEED_DTYPE, buffer=buf, offset=lay.feeds)
        self.positions = np.ndarray((nv, ns), POSITION_DTYPE, buffer=buf, offset=lay.positions)
        self.capital = np.ndarray((nv,), CAPITAL_DTYPE, buffer=buf, offset=lay.capital)
        self.opps = np.ndarray((N_RECENT,), OPPORTUNITY_RECORD_DTYPE, buffer=buf, offset=lay.opportunities)
        self.trades = np.ndarray((N_RECENT,), TRADE_RECORD_DTYPE, buffer=buf, offset=lay.trades)
        self.fills = np.ndarray((N_RECENT,), FILL_RECORD_DTYPE, buffer=buf, offset=lay.fills)
        self.hist = np.ndarray((len(Hop), N_BUCKETS), np.dtype("<u8"), buffer=buf, offset=lay.histograms)
        # the hot-path flag reads go through struct, not numpy scalar indexing
        self._buf: memoryview | None = buf
        self._halt_off = lay.global_ + field_offset(GLOBAL_DTYPE, "halt")
        self._state_off = lay.global_ + field_offset(GLOBAL_DTYPE, "trading_state")
        self._feed_state_offs = [
            lay.feeds + v * FEED_DTYPE.itemsize + field_offset(FEED_DTYPE, "state") for v in range(nv)
        ]
        self._opp_count_off = lay.opportunities_count
        self._trade_count_off = lay.trades_count
        self._fill_count_off = lay.fills_count

    @classmethod
    def create(cls, name: str, venues: Sequence[str], symbols: Sequence[str]) -> StatusBoard:
        lay = status_layout(len(venues), len(symbols))
        seg = Segment.create(name, lay.size, STATUS_MAGIC, STATUS_LAYOUT_VERSION, venues, symbols,
                             lay.venue_table, lay.symbol_table)
        st = cls(seg, lay, venues, symbols)
        st.glob["run_started_ns"] = now_ns()
        return st

    @classmethod
    def attach(cls, name: str, venues: Sequence[str], symbols: Sequence[str]) -> StatusBoard:
        lay = status_layout(len(venues), len(symbols))
        seg = Segment.attach(name, STATUS_MAGIC, STATUS_LAYOUT_VERSION, venues, symbols,
                             lay.venue_table, lay.symbol_table, lay.size)
        return cls(seg, lay, venues, symbols)

    def close(self) -> None:
        for attr in ("glob", "procs", "feeds", "positions", "capital", "opps", "trades", "fills", "hist"):
            setattr(self, attr, None)
        self._buf = None
        self.segment.close()

    # -- global state (launcher writes, everyone reads) ---------------------------

    def halted(self) -> bool:
        """The kill switch; cheap enough for every scanner pass."""
        buf = self._buf
        assert buf is not None
        return _U4_UNPACK(buf, self._halt_off)[0] != 0

    def trading_state(self) -> TradingState:
        buf = self._buf
        assert buf is not None
        return TradingState(_U4_UNPACK(buf, self._state_off)[0])

    def may_open(self) -> bool:
        """True when new positions may be opened (not halted, state RUNNING)."""
        return not self.halted() and self.trading_state() == TradingState.RUNNING

    def set_halt(self) -> int:
        """Throw the kill switch; returns the stamp. Only the launcher calls this."""
        # flag first, stamp second: any order whose check saw the flag clear was decided before `ts`
        self.glob["halt"] = 1
        ts = now_ns()
        self.glob["halt_ns"] = ts
        self.set_trading_state(TradingState.HALTED)
        return ts

    def set_trading_state(self, state: TradingState) -> None:
        self.glob["trading_state"] = int(state)
        self.glob["state_changed_ns"] = now_ns()

    # -- feeds -------------------------------------------------------------------

    def feed_state(self, venue: int) -> FeedState:
        buf = self._buf
        assert buf is not None
        off = self._feed_state_offs[venue]
        return FeedState(_U4_UNPACK(buf, off)[0])

    def feed_state_offsets(self) -> list[int]:
        """Byte offsets of each venue's feed state word (for hot-path readers)."""
        return list(self._feed_state_offs)

    def set_feed_state(self, venue: int, state: FeedState) -> None:
        rec = self.feeds[venue]
        rec["state_changed_ns"] = now_ns()
        if state == FeedState.CONNECTED:
            rec["connected_ns"] = now_ns()
        rec["state"] = int(state)

    # -- processes ----------------------------------------------------------------

    def register_proc(self, slot: int, name: str, role: Role, pid: int) -> None:
        rec = self.procs[slot]
        rec["name"] = name.encode()[:16]
        rec["pid"] = pid
        rec["role"] = int(role)
        rec["started_ns"] = now_ns()
        rec["heartbeat_ns"] = now_ns()
        rec["state"] = int(ProcState.STARTING)

    def set_proc_state(self, slot: int, state: ProcState) -> None:
        self.procs[slot]["state"] = int(state)
        self.procs[slot]["heartbeat_ns"] = now_ns()

    def heartbeat(self, slot: int, counters: Sequence[int] | None = None) -> None:
        rec = self.procs[slot]
        if counters is not None:
            rec["counters"][: len(counters)] = counters
        rec["heartbeat_ns"] = now_ns()

    def proc_slot(self, name: str) -> int | None:
        for i in range(MAX_PROCS):
            if self.procs[i]["name"] == name.encode():
                return i
        return None

    # -- recent opportunities and trades (ring of N_RECENT, count at its own line) --

    def push_opportunity(self, **fields: float) -> int:
        return self._push(self.opps, self._opp_count_off, fields)

    def push_trade(self, **fields: float) -> int:
        return self._push(self.trades, self._trade_count_off, fields)

    def push_fill(self, **fields: float) -> int:
        return self._push(self.fills, self._fill_count_off, fields)

    def _push(self, ring: np.ndarray, count_off: int, fields: dict[str, float | int]) -> int:
        buf = self._buf
        assert buf is not None
        (n,) = SEQ_STRUCT.unpack_from(buf, count_off)
        rec = ring[n % N_RECENT]
        for k, v in fields.items():
            rec[k] = v
        SEQ_STRUCT.pack_into(buf, count_off, n + 1)
        return n % N_RECENT

    def recent(self, which: str) -> list[np.void]:
        """Newest-first copies of the `opps`, `trades` or `fills` ring."""
        buf = self._buf
        assert buf is not None
        ring, off = {"opps": (self.opps, self._opp_count_off), "trades": (self.trades, self._trade_count_off),
                     "fills": (self.fills, self._fill_count_off)}[which]
        (n,) = SEQ_STRUCT.unpack_from(buf, off)
        k = min(n, N_RECENT)
        return [ring[(n - 1 - i) % N_RECENT].copy() for i in range(k)]

    def update_trade(self, index: int, **fields: float) -> None:
        rec = self.trades[index]
        for k, v in fields.items():
            rec[k] = v

    # -- histograms ------------------------------------------------------------------

    def add_histogram(self, hop: Hop, counts: Sequence[int]) -> None:
        self.hist[int(hop)] += np.asarray(counts, dtype=np.uint64)

    def histogram(self, hop: Hop) -> list[int]:
        return [int(x) for x in self.hist[int(hop)]]
