"""The quote board: best bid/offer per (venue, symbol) under a seqlock.

Writer (one per venue, its feed): make `seq` odd, write the body, make `seq`
even, then append the symbol index to the venue's change ring and bump the
venue's update counter. Readers never block the writer; a reader that sees an
odd or changed `seq` retries.

Change detection: a reader keeps the last counter it saw per venue. When the
counter moves by at most the ring capacity it reads just those ring entries;
if it was lapped it rescans that venue's row (counted, rare).

Single slots are read and written with `struct` on the segment's memoryview:
per-element numpy indexing costs about twice as much (DESIGN.md pitfalls).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from perpbot.clock import now_ns
from perpbot.shm.layout import (
    BOARD_LAYOUT_VERSION,
    BOARD_MAGIC,
    RING_CAPACITY,
    RING_ENTRY_STRUCT,
    SEQ_STRUCT,
    SLOT_BODY_OFFSET,
    SLOT_BODY_STRUCT,
    SLOT_DTYPE,
    BoardLayout,
    board_layout,
)
from perpbot.shm.segment import Segment

_SEQ_PACK = SEQ_STRUCT.pack_into
_SEQ_UNPACK = SEQ_STRUCT.unpack_from
_BODY_PACK = SLOT_BODY_STRUCT.pack_into
_BODY_UNPACK = SLOT_BODY_STRUCT.unpack_from
_RING_PACK = RING_ENTRY_STRUCT.pack_into
_RING_UNPACK = RING_ENTRY_STRUCT.unpack_from

#: a reader gives up on a slot after this many torn reads in a row (writer died mid-write)
MAX_READ_RETRIES = 1000


class Quote(NamedTuple):
    """One consistent copy of a slot."""

    seq: int
    bid: float
    ask: float
    bid_size: float
    ask_size: float
    ts_exchange_ns: int
    ts_recv_ns: int
    ts_write_ns: int


class QuoteBoard:
    """The board segment of one run. Create it in the launcher, attach everywhere else."""

    def __init__(self, seg: Segment, layout: BoardLayout, venues: Sequence[str], symbols: Sequence[str]):
        self.segment = seg
        self.layout = layout
        self.venues = tuple(venues)
        self.symbols = tuple(symbols)
        self._buf: memoryview | None = seg.buf

    @classmethod
    def create(cls, name: str, venues: Sequence[str], symbols: Sequence[str],
               ring_capacity: int = RING_CAPACITY) -> QuoteBoard:
        lay = board_layout(len(venues), len(symbols), ring_capacity)
        seg = Segment.create(name, lay.size, BOARD_MAGIC, BOARD_LAYOUT_VERSION, venues, symbols,
                             lay.venue_table, lay.symbol_table, ring_capacity)
        return cls(seg, lay, venues, symbols)

    @classmethod
    def attach(cls, name: str, venues: Sequence[str], symbols: Sequence[str],
               ring_capacity: int = RING_CAPACITY) -> QuoteBoard:
        lay = board_layout(len(venues), len(symbols), ring_capacity)
        seg = Segment.attach(name, BOARD_MAGIC, BOARD_LAYOUT_VERSION, venues, symbols,
                             lay.venue_table, lay.symbol_table, lay.size)
        return cls(seg, lay, venues, symbols)

    def close(self) -> None:
        self._buf = None
        self.segment.close()

    # -- writing ---------------------------------------------------------------

    def writer(self, venue: int) -> BoardWriter:
        """The writer for one venue's row. Only that venue's feed may hold one."""
        return BoardWriter(self.segment.buf, self.layout, venue)

    # -- reading ---------------------------------------------------------------

    def read(self, venue: int, symbol: int) -> Quote | None:
        """A consistent copy of a slot, or None if the slot was never written."""
        buf = self._buf
        assert buf is not None, "board is closed"
        off = self.layout.slot_offset(venue, symbol)
        body = off + SLOT_BODY_OFFSET
        for _ in range(MAX_READ_RETRIES):
            (s1,) = _SEQ_UNPACK(buf, off)
            if s1 & 1:
                continue
            fields = _BODY_UNPACK(buf, body)
            (s2,) = _SEQ_UNPACK(buf, off)
            if s1 == s2:
                if s1 == 0:
                    return None
                return Quote(s1, *fields)
        return None

    def counter(self, venue: int) -> int:
        buf = self._buf
        assert buf is not None, "board is closed"
        return _SEQ_UNPACK(buf, self.layout.counter_offset(venue))[0]

    def cursor(self) -> ChangeCursor:
        """A change cursor starting at the board's current counters."""
        return ChangeCursor(self)

    def snapshot(self) -> np.ndarray:
        """A copy of every slot (not seqlocked; for display and tests only)."""
        buf = self._buf
        assert buf is not None, "board is closed"
        lay = self.layout
        view = np.ndarray((lay.n_venues, lay.n_symbols), SLOT_DTYPE, buffer=buf, offset=lay.slots)
        out = view.copy()
        del view
        return out


class BoardWriter:
    """Seqlock writer for one venue's row of the board."""

    __slots__ = ("_buf", "_count", "_ctr_off", "_mask", "_ring_off", "_seqs", "_slot_offsets")

    def __init__(self, buf: memoryview, layout: BoardLayout, venue: int) -> None:
        if not 0 <= venue < layout.n_venues:
            raise IndexError(f"venue index {venue} outside 0..{layout.n_venues - 1}")
        self._buf = buf
        self._slot_offsets = [layout.slot_offset(venue, s) for s in range(layout.n_symbols)]
        # continue from what is in the segment: a restarted feed must keep seq monotonic,
        # and an odd seq left by a writer that died mid-write is closed off here
        seqs = []
        for off in self._slot_offsets:
            (s,) = _SEQ_UNPACK(buf, off)
            if s & 1:
                s += 1
                _SEQ_PACK(buf, off, s)
            seqs.append(s)
        self._seqs = seqs
        self._ctr_off = layout.counter_offset(venue)
        self._ring_off = layout.ring_offset(venue)
        self._mask = layout.ring_capacity - 1
        self._count = _SEQ_UNPACK(buf, self._ctr_off)[0]

    def write(self, symbol: int, bid: float, ask: float, bid_size: float, ask_size: float,
              ts_exchange_ns: int, ts_recv_ns: int) -> int:
        """Publish one quote; returns its `ts_write_ns` stamp."""
        buf = self._buf
        off = self._slot_offsets[symbol]
        s = self._seqs[symbol] + 1
        _SEQ_PACK(buf, off, s)
        ts_write = now_ns()
        _BODY_PACK(buf, off + SLOT_BODY_OFFSET, bid, ask, bid_size, ask_size,
                   ts_exchange_ns, ts_recv_ns, ts_write)
        s += 1
        _SEQ_PACK(buf, off, s)
        self._seqs[symbol] = s
        c = self._count
        _RING_PACK(buf, self._ring_off + (c & self._mask) * 4, symbol)
        c += 1
        _SEQ_PACK(buf, self._ctr_off, c)
        self._count = c
        return ts_write

    def release(self) -> None:
        self._buf = None  # type: ignore[assignment]


class ChangeCursor:
    """Yields (venue, symbol) pairs written since the last call, without a board scan."""

    def __init__(self, board: QuoteBoard) -> None:
        self._board = board
        lay = board.layout
        self._lay = lay
        self._ctr_offs = [lay.counter_offset(v) for v in range(lay.n_venues)]
        self._ring_offs = [lay.ring_offset(v) for v in range(lay.n_venues)]
        self._mask = lay.ring_capacity - 1
        self._cap = lay.ring_capacity
        self._last = [board.counter(v) for v in range(lay.n_venues)]
        self.rescans = 0

    def poll(self) -> list[tuple[int, int]]:
        """Changed slots since the previous poll (deduplicated, venue order)."""
        buf = self._board._buf
        assert buf is not None, "board is closed"
        out: list[tuple[int, int]] = []
        last = self._last
        for v, coff in enumerate(self._ctr_offs):
            (c,) = _SEQ_UNPACK(buf, coff)
            prev = last[v]
            if c == prev:
                continue
            last[v] = c
            if c - prev > self._cap:
                self.rescans += 1
                out.extend((v, s) for s in range(self._lay.n_symbols))
                continue
            roff = self._ring_offs[v]
            seen: set[int] = set()
            for i in range(prev, c):
                (s,) = _RING_UNPACK(buf, roff + (i & self._mask) * 4)
                if s not in seen:
                    seen.add(s)
                    out.append((v, s))
            # the writer may have lapped us while we read the ring: fall back to the row
            (c2,) = _SEQ_UNPACK(buf, coff)
            if c2 - prev > self._cap:
                self.rescans += 1
                out.extend((v, s) for s in range(self._lay.n_symbols) if s not in seen)
        return out
