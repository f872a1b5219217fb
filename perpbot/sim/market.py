"""A seeded price model for the built-in demo market: no I/O, no wall clock.

Per board symbol one common fair price follows a geometric random walk. Each
venue quotes it with its own basis, noise, half spread and top-of-book size,
refreshing each of its symbols at its own `update_hz` (intervals jittered
around 1/update_hz). A Poisson process over the whole market starts
dislocations: a JUMP offsets one venue's mid for one symbol by
±`dislocation_bps`, a LAG freezes that quote while the fair price moves on.
Both last a duration drawn uniformly from [`dislocation_min_ms`,
`dislocation_max_ms`] and take effect (and end) at once, so the arbitrage they
open lives exactly that long.

The model is a discrete-event simulation: every random draw happens at an
event, and events are processed in time order, so the output depends only on
the seed and the times asked about, not on how `advance` calls are batched.

    model = MarketModel(cfg, start_ns=0)
    for venue_idx, symbol_idx in model.advance(t_ns):
        q = model.quote_at(venue_idx, symbol_idx)
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

import numpy as np

from perpbot.config import Config, DemoVenueConfig

#: share of dislocations that are jumps; the rest are lags
JUMP_SHARE = 0.8
#: a venue's refresh interval is uniform in [1 - j, 1 + j] / update_hz
TICK_JITTER = 0.5
#: top-of-book size is top_size_usd times a factor uniform in this range
SIZE_RANGE = (0.5, 1.5)
#: how many past dislocations `recent_dislocations` keeps
HISTORY_LEN = 1024

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000
_BPS = 1e-4
_DRAW_BLOCK = 4096

_TICK = 0
_DISLOCATION_START = 1
_DISLOCATION_END = 2


class SimQuote(NamedTuple):
    """One venue's top of book for one symbol; prices on the tick grid, sizes in lots."""

    bid: float
    ask: float
    bid_size: float  # base units
    ask_size: float  # base units


class DislocationKind(enum.Enum):
    JUMP = "jump"
    LAG = "lag"


@dataclass(frozen=True, slots=True)
class Dislocation:
    """One venue's quote for one symbol pushed off the market for a while."""

    venue: str
    symbol: str
    kind: DislocationKind
    start_ns: int
    end_ns: int
    #: signed offset of the venue's mid for a JUMP; 0.0 for a LAG
    offset_bps: float


@dataclass(frozen=True, slots=True)
class MarketStats:
    """Counters since the model was built."""

    ticks: int  # venue refreshes processed (frozen ones included)
    quote_changes: int
    dislocations_started: int
    jumps: int
    lags: int
    #: dislocations that fell on a quote already dislocated and were dropped
    dislocations_skipped: int


def decimals(step: Decimal) -> int:
    """Digits after the point needed to write any multiple of `step` exactly."""
    exp = step.normalize().as_tuple().exponent
    assert isinstance(exp, int)
    return max(0, -exp)


def _pick(u: float, n: int) -> int:
    """Index in [0, n) from a uniform draw in [0, 1)."""
    return min(int(u * n), n - 1)


class _Draws:
    """Random numbers drawn from the generator in blocks (a scalar call costs ~1 µs)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._normals: list[float] = []
        self._uniforms: list[float] = []

    def normal(self) -> float:
        if not self._normals:
            self._normals = self._rng.standard_normal(_DRAW_BLOCK).tolist()[::-1]
        return self._normals.pop()

    def uniform(self) -> float:
        if not self._uniforms:
            self._uniforms = self._rng.random(_DRAW_BLOCK).tolist()[::-1]
        return self._uniforms.pop()


class _Pair:
    """One (venue, symbol) quote and what drives it."""

    __slots__ = (
        "basis",
        "frozen",
        "half_spread",
        "idx",
        "jump",
        "lot",
        "noise",
        "period_ns",
        "price_dp",
        "quote",
        "si",
        "size_dp",
        "symbol",
        "tick",
        "top_usd",
        "venue",
        "vi",
    )

    def __init__(self, idx: int, vi: int, si: int, venue: str, symbol: str, dv: DemoVenueConfig,
                 tick: Decimal, lot: Decimal) -> None:
        self.idx = idx
        self.vi = vi
        self.si = si
        self.venue = venue
        self.symbol = symbol
        self.basis = dv.basis_bps * _BPS
        self.noise = dv.noise_bps * _BPS
        self.half_spread = dv.half_spread_bps * _BPS
        self.top_usd = dv.top_size_usd
        self.period_ns = _NS_PER_S / dv.update_hz
        self.tick = float(tick)
        self.lot = float(lot)
        self.price_dp = decimals(tick)
        self.size_dp = decimals(lot)
        self.quote = SimQuote(0.0, 0.0, 0.0, 0.0)
        self.frozen = False  # a LAG holds the last quote
        self.jump = 0.0  # current jump offset as a fraction of the mid


class MarketModel:
    """The demo market's prices. Drive it with `advance`; read it with `quote`."""

    def __init__(self, cfg: Config, start_ns: int = 0) -> None:
        demo = cfg.demo
        self.venues: tuple[str, ...] = cfg.venue_names
        self.symbols: tuple[str, ...] = cfg.symbol_names
        self._draw = _Draws(np.random.default_rng(demo.seed))
        self._sigma = demo.volatility_bps * _BPS
        self._fair = [float(demo.prices[s]) for s in self.symbols]
        self._fair_ns = [start_ns] * len(self.symbols)
        self._now_ns = start_ns
        self._rate = demo.dislocations_per_s
        self._disl_bps = demo.dislocation_bps
        self._disl_min_ns = demo.dislocation_min_ms * _NS_PER_MS
        self._disl_max_ns = demo.dislocation_max_ms * _NS_PER_MS

        sym_index = {s: i for i, s in enumerate(self.symbols)}
        self._pairs: list[_Pair] = []
        self._grid: list[list[_Pair | None]] = []
        self._by_name: dict[tuple[str, str], _Pair] = {}
        for vi, vname in enumerate(self.venues):
            dv = demo.venues.get(vname, DemoVenueConfig())
            row: list[_Pair | None] = [None] * len(self.symbols)
            for sym in cfg.venues[vname].symbols:
                sc = cfg.symbols[sym]
                p = _Pair(len(self._pairs), vi, sym_index[sym], vname, sym, dv,
                          sc.tick_size, sc.lot_size)
                row[p.si] = p
                self._pairs.append(p)
                self._by_name[(vname, sym)] = p
            self._grid.append(row)
        self._venue_pairs = [[p for p in row if p is not None] for row in self._grid]

        self._ticks = self._changes = self._started = self._jumps = self._lags = self._skipped = 0
        self._active: dict[int, Dislocation] = {}  # pair index -> its dislocation
        self._history: deque[Dislocation] = deque(maxlen=HISTORY_LEN)
        self._events: list[tuple[int, int, int, int]] = []  # (t_ns, seq, kind, pair index)
        self._seq = 0
        for i, p in enumerate(self._pairs):
            self._refresh(p, start_ns)
            # random phases keep venues from ticking in lockstep
            self._push(start_ns + int(p.period_ns * self._draw.uniform()) + 1, _TICK, i)
        self._schedule_dislocation(start_ns)

    # -- reading ------------------------------------------------------------------

    def quote(self, venue: str, symbol: str) -> SimQuote:
        """The venue's current quote for a board symbol (KeyError if it does not list it)."""
        return self._by_name[(venue, symbol)].quote

    def quote_at(self, venue_idx: int, symbol_idx: int) -> SimQuote:
        """`quote` by board indices, for the publishing loop."""
        p = self._grid[venue_idx][symbol_idx]
        if p is None:
            raise KeyError(f"{self.venues[venue_idx]} does not list {self.symbols[symbol_idx]}")
        return p.quote

    def venue_symbols(self, venue: str) -> tuple[str, ...]:
        """Board symbols the venue quotes, in board order."""
        return tuple(p.symbol for p in self._venue_pairs[self.venues.index(venue)])

    def fair(self, symbol: str) -> float:
        """The common fair price as of the last event that touched the symbol."""
        return self._fair[self.symbols.index(symbol)]

    def price_decimals(self, symbol: str) -> int:
        """Decimal places of the symbol's tick size (what an encoder prints)."""
        return self._any_pair(symbol).price_dp

    def size_decimals(self, symbol: str) -> int:
        """Decimal places of the symbol's lot size."""
        return self._any_pair(symbol).size_dp

    def active_dislocations(self) -> list[Dislocation]:
        """Dislocations in force now, oldest first."""
        return sorted(self._active.values(), key=lambda d: d.start_ns)

    def recent_dislocations(self) -> list[Dislocation]:
        """The last `HISTORY_LEN` dislocations started, oldest first."""
        return list(self._history)

    def statistics(self) -> MarketStats:
        return MarketStats(self._ticks, self._changes, self._started, self._jumps, self._lags,
                           self._skipped)

    @property
    def now_ns(self) -> int:
        """The time the model has been advanced to."""
        return self._now_ns

    def next_event_ns(self) -> int:
        """When the next quote can change; sleep until then."""
        return self._events[0][0]

    # -- driving ------------------------------------------------------------------

    def advance(self, t_ns: int) -> list[tuple[int, int]]:
        """Process every event up to `t_ns`; return the (venue, symbol) indices whose quote changed.

        Each changed pair appears once, in the order of its first change; read
        its latest quote with `quote_at`. Going back in time is a no-op.
        """
        changed: dict[int, None] = {}
        events = self._events
        pairs = self._pairs
        while events and events[0][0] <= t_ns:
            t, _, kind, idx = heapq.heappop(events)
            if kind == _TICK:
                p = pairs[idx]
                self._ticks += 1
                jitter = 1.0 + TICK_JITTER * (2.0 * self._draw.uniform() - 1.0)
                self._push(t + max(1, int(p.period_ns * jitter)), _TICK, idx)
                if p.frozen:
                    continue
                if self._refresh(p, t):
                    changed[idx] = None
            elif kind == _DISLOCATION_START:
                idx = self._start_dislocation(t)
                if idx >= 0 and self._refresh(pairs[idx], t):
                    changed[idx] = None
            else:
                p = pairs[idx]
                del self._active[idx]
                p.jump = 0.0
                p.frozen = False
                if self._refresh(p, t):
                    changed[idx] = None
        self._now_ns = max(self._now_ns, t_ns)
        return [(pairs[i].vi, pairs[i].si) for i in changed]

    # -- internals ----------------------------------------------------------------

    def _push(self, t_ns: int, kind: int, idx: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t_ns, self._seq, kind, idx))

    def _any_pair(self, symbol: str) -> _Pair:
        for p in self._pairs:
            if p.symbol == symbol:
                return p
        raise KeyError(f"no venue lists {symbol}")

    def _evolve_fair(self, si: int, t_ns: int) -> float:
        dt_ns = t_ns - self._fair_ns[si]
        if dt_ns > 0 and self._sigma > 0:
            dt_s = dt_ns / _NS_PER_S
            sig = self._sigma
            # exact for any step, so the walk does not depend on how often it is sampled
            step = sig * math.sqrt(dt_s) * self._draw.normal() - 0.5 * sig * sig * dt_s
            self._fair[si] *= math.exp(step)
        if dt_ns > 0:
            self._fair_ns[si] = t_ns
        return self._fair[si]

    def _refresh(self, p: _Pair, t_ns: int) -> bool:
        """Requote one pair from the fair price; True if the quote changed."""
        fair = self._evolve_fair(p.si, t_ns)
        draw = self._draw
        mid = fair * (1.0 + p.basis + p.noise * draw.normal() + p.jump)
        tick = p.tick
        bid_t = max(1, math.floor(mid * (1.0 - p.half_spread) / tick))
        ask_t = math.ceil(mid * (1.0 + p.half_spread) / tick)
        if ask_t <= bid_t:
            ask_t = bid_t + 1
        lo, hi = SIZE_RANGE
        base = p.top_usd / mid / p.lot
        bid_lots = max(1, round(base * (lo + (hi - lo) * draw.uniform())))
        ask_lots = max(1, round(base * (lo + (hi - lo) * draw.uniform())))
        q = SimQuote(
            round(bid_t * tick, p.price_dp),
            round(ask_t * tick, p.price_dp),
            round(bid_lots * p.lot, p.size_dp),
            round(ask_lots * p.lot, p.size_dp),
        )
        if q == p.quote:
            return False
        p.quote = q
        self._changes += 1
        return True

    def _schedule_dislocation(self, t_ns: int) -> None:
        if self._rate <= 0:
            return
        wait_s = -math.log(1.0 - self._draw.uniform()) / self._rate
        self._push(t_ns + max(1, int(wait_s * _NS_PER_S)), _DISLOCATION_START, -1)

    def _start_dislocation(self, t_ns: int) -> int:
        """Start one dislocation; return the pair index to requote now (a jump), else -1."""
        self._schedule_dislocation(t_ns)
        draw = self._draw
        venue_pairs = self._venue_pairs[_pick(draw.uniform(), len(self.venues))]
        p = venue_pairs[_pick(draw.uniform(), len(venue_pairs))]
        is_jump = draw.uniform() < JUMP_SHARE
        sign = 1.0 if draw.uniform() < 0.5 else -1.0
        span = self._disl_max_ns - self._disl_min_ns
        end_ns = t_ns + self._disl_min_ns + int(span * draw.uniform())
        idx = p.idx
        if idx in self._active:
            self._skipped += 1
            return -1
        kind = DislocationKind.JUMP if is_jump else DislocationKind.LAG
        offset = sign * self._disl_bps if is_jump else 0.0
        d = Dislocation(p.venue, p.symbol, kind, t_ns, end_ns, offset)
        self._active[idx] = d
        self._history.append(d)
        self._started += 1
        if is_jump:
            self._jumps += 1
            p.jump = offset * _BPS
        else:
            self._lags += 1
            p.frozen = True
        self._push(end_ns, _DISLOCATION_END, idx)
        return idx if is_jump else -1
