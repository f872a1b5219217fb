"""The model: one plain-data snapshot of the run, computed from the segments (no terminal needed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from perpbot.config import Config
from perpbot.exec.risk import Reason
from perpbot.metrics import bucket_bounds, quantile
from perpbot.monitor._common import _MS, DEGRADED_AFTER_MS, HIST_COLUMNS, N_SHOW, TRADE_CLOSED
from perpbot.scanner.edge import best_edge, fee_multipliers
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import (
    MAX_PROCS,
    ExecCounter,
    FeedKind,
    FeedState,
    Hop,
    ProcState,
    Role,
    ScannerCounter,
    TradingState,
)


@dataclass(frozen=True)
class VenueRow:
    """One venue feed's health."""

    name: str
    state: str
    kind: str
    frames: int
    rate_fps: float | None  # frames/s since the previous snapshot; None on the first
    last_quote_age_ms: float | None
    stale_symbols: int
    reconnects: int
    stale: bool  # not CONNECTED, never quoted, or last quote older than scanner.stale_after_ms


@dataclass(frozen=True)
class Cell:
    """One venue's best bid/ask for one symbol."""

    bid: float
    ask: float
    bid_size: float
    ask_size: float
    age_ms: float
    stale: bool


@dataclass(frozen=True)
class BestEdge:
    """The best cross-venue pair for a symbol, net of both taker fees."""

    buy_venue: int
    sell_venue: int
    buy_price: float
    sell_price: float
    edge_bps: float


@dataclass(frozen=True)
class BoardRow:
    """One symbol across every venue."""

    symbol: str
    decimals: int  # from the symbol's tick size
    cells: tuple[Cell | None, ...]  # per venue; None: never quoted or not listed there
    best: BestEdge | None


@dataclass(frozen=True)
class OppRow:
    """A recent opportunity and what became of it."""

    age_ms: float
    opp_id: int
    symbol: str
    buy_venue: str
    sell_venue: str
    edge_bps: float
    buy_price: float
    sell_price: float
    outcome: str


@dataclass(frozen=True)
class TradeRow:
    """A recent trade (both legs); realized PnL after fees once closed."""

    trade_id: int
    symbol: str
    buy_venue: str
    sell_venue: str
    size: float
    closed: bool
    realized_pnl: float
    held_ms: float


@dataclass(frozen=True)
class PositionRow:
    """A non-zero position (base units) on one venue."""

    venue: str
    symbol: str
    qty: float
    avg_price: float


#: fills shown (the ring holds N_RECENT)
FILL_ROWS = 12


@dataclass(frozen=True)
class FillRow:
    """One fill, newest first."""

    age_ms: float
    trade_id: int
    venue: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float


@dataclass(frozen=True)
class CapitalRow:
    """One venue's capital pool, USD."""

    venue: str
    free: float
    locked: float
    total: float
    realized_pnl: float
    open_orders: int = 0


@dataclass(frozen=True)
class ProcRow:
    """One process's record in the status segment."""

    name: str
    pid: int
    state: str  # DEGRADED when a live process's heartbeat is older than DEGRADED_AFTER_MS
    heartbeat_age_ms: float
    restarts: int
    degraded: bool


@dataclass(frozen=True)
class HopRow:
    """One latency hop: percentiles and a folded histogram."""

    name: str
    count: int
    p50_us: float | None
    p99_us: float | None
    bins: tuple[int, ...]  # the non-empty bucket range folded into at most HIST_COLUMNS columns
    lo_us: float
    hi_us: float


@dataclass(frozen=True)
class MonitorModel:
    """Everything one screen shows, as plain data."""

    run_id: str
    now_ns: int
    trading_state: str
    halted: bool
    venues: tuple[VenueRow, ...]
    board: tuple[BoardRow, ...]
    opportunities: tuple[OppRow, ...]
    trades: tuple[TradeRow, ...]
    positions: tuple[PositionRow, ...]
    net_by_asset: tuple[tuple[str, float], ...]
    capital: tuple[CapitalRow, ...]
    realized_pnl: float
    fills: tuple[FillRow, ...]
    processes: tuple[ProcRow, ...]
    latency: tuple[HopRow, ...]
    #: raw per-venue frame counters, kept for the next snapshot's rates
    frames: tuple[int, ...]
    #: since the run started, from the exec and scanner processes' counters (0 before they report)
    trades_opened: int = 0
    trades_closed: int = 0
    opportunities_found: int = 0

    @property
    def degraded(self) -> tuple[str, ...]:
        """Names of the processes shown DEGRADED."""
        return tuple(p.name for p in self.processes if p.degraded)


def _enum_name(enum_cls: type[FeedState] | type[ProcState] | type[TradingState], value: int) -> str:
    try:
        return enum_cls(value).name
    except ValueError:
        return f"?{value}"


def _fill_row(f: Any, venues: Sequence[str], symbols: Sequence[str], now: int) -> FillRow:
    v, s = int(f["venue"]), int(f["symbol"])
    return FillRow((now - int(f["ts_ns"])) / 1e6, int(f["trade_id"]), venues[v] if v < len(venues) else "?",
                   symbols[s] if s < len(symbols) else "?", "buy" if int(f["side"]) == 1 else "sell",
                   float(f["qty"]), float(f["price"]), float(f["fee"]))


def _decimals(tick: Decimal) -> int:
    exp = tick.normalize().as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 2


def _venue_rows(status: StatusBoard, cfg: Config, prev: MonitorModel | None, now: int) -> list[VenueRow]:
    feeds = status.feeds.copy()  # one copy: no view into the segment outlives this call
    stale_ms = float(cfg.scanner.stale_after_ms)
    dt_s = (now - prev.now_ns) / 1e9 if prev is not None else 0.0
    rows = []
    for i, name in enumerate(status.venues):
        f = feeds[i]
        frames = int(f["frames"])
        rate: float | None = None
        if prev is not None and dt_s > 0 and i < len(prev.frames) and frames >= prev.frames[i]:
            rate = (frames - prev.frames[i]) / dt_s  # a restarted feed resets its counter: no rate then
        last = int(f["last_recv_ns"])
        age = None if last == 0 else max(0.0, (now - last) / _MS)
        state = int(f["state"])
        rows.append(VenueRow(
            name=name, state=_enum_name(FeedState, state),
            kind="ccxt" if int(f["kind"]) == FeedKind.CCXT else "native",
            frames=frames, rate_fps=rate, last_quote_age_ms=age, stale_symbols=int(f["stale_symbols"]),
            reconnects=int(f["reconnects"]),
            stale=state != FeedState.CONNECTED or age is None or age > stale_ms,
        ))
    return rows


def _board_rows(board: QuoteBoard, cfg: Config, venues: Sequence[VenueRow], now: int) -> list[BoardRow]:
    stale_ns = cfg.scanner.stale_after_ms * _MS
    vcfgs = [cfg.venues[v] for v in cfg.venue_names]
    buy_mult, sell_mult = fee_multipliers([v.taker_fee_bps for v in vcfgs])
    rows = []
    for s, sym in enumerate(cfg.symbol_names):
        cells: list[Cell | None] = []
        for v, vcfg in enumerate(vcfgs):
            q = board.read(v, s) if sym in vcfg.symbols else None
            if q is None:
                cells.append(None)
                continue
            # the scanner's rule: stale by receive stamp, or the venue's feed is not CONNECTED
            stale = venues[v].state != FeedState.CONNECTED.name or now - q.ts_recv_ns > stale_ns
            cells.append(Cell(q.bid, q.ask, q.bid_size, q.ask_size, max(0.0, (now - q.ts_recv_ns) / _MS), stale))
        usable = [c is not None and not c.stale for c in cells]
        bids = [c.bid if c is not None else 0.0 for c in cells]
        asks = [c.ask if c is not None else 0.0 for c in cells]
        e = best_edge(bids, asks, buy_mult, sell_mult,
                      [u and a > 0 for u, a in zip(usable, asks)], [u and b > 0 for u, b in zip(usable, bids)])
        best = None if e is None else BestEdge(e.buy_venue, e.sell_venue, asks[e.buy_venue], bids[e.sell_venue],
                                               e.edge_bps)
        rows.append(BoardRow(sym, _decimals(cfg.symbols[sym].tick_size), tuple(cells), best))
    return rows


def _outcome(rec: Any, trades: Sequence[Any], max_age_ns: int, now: int) -> str:
    """What became of an opportunity.

    The ring's `outcome` field is used when someone filled it in; nobody does
    yet, so otherwise a trade on the same (symbol, buy, sell) opened within the
    opportunity's lifetime after it counts as its result.
    """
    code = int(rec["outcome"])
    if code > 0:
        return f"trade #{code}"
    if code < 0:
        try:
            return Reason(-code).name.lower()
        except ValueError:
            return f"skipped ({code})"
    t_detect = int(rec["ts_detect_ns"])
    for t in trades:
        if (int(t["symbol"]), int(t["buy_venue"]), int(t["sell_venue"])) == (
                int(rec["symbol"]), int(rec["buy_venue"]), int(rec["sell_venue"])) \
                and 0 <= int(t["open_ns"]) - t_detect <= max_age_ns:
            return f"trade #{int(t['trade_id'])}"
    return "pending" if now - t_detect <= max_age_ns else "not traded"


def _hop_row(hop: Hop, counts: Sequence[int]) -> HopRow:
    n = int(sum(counts))
    p50, p99 = quantile(counts, 0.5), quantile(counts, 0.99)
    nz = [i for i, c in enumerate(counts) if c]
    if not nz:
        return HopRow(hop.name.lower(), 0, None, None, (), 0.0, 0.0)
    lo, hi = nz[0], nz[-1]
    width = hi - lo + 1
    cols = min(HIST_COLUMNS, width)
    bins = [0] * cols
    for i in range(lo, hi + 1):
        bins[(i - lo) * cols // width] += int(counts[i])
    return HopRow(hop.name.lower(), n, None if p50 is None else p50 / 1000, None if p99 is None else p99 / 1000,
                  tuple(bins), bucket_bounds(lo)[0] / 1000, bucket_bounds(hi)[1] / 1000)


def _role_counter(status: StatusBoard, role: Role, index: int) -> int:
    """One counter of the (first) process with a role; 0 when there is none yet."""
    procs = status.procs.copy()
    for i in range(MAX_PROCS):
        if int(procs[i]["role"]) == role and int(procs[i]["pid"]) != 0:
            return int(procs[i]["counters"][index])
    return 0


def _proc_rows(status: StatusBoard, now: int) -> list[ProcRow]:
    procs = status.procs.copy()
    rows = []
    for i in range(MAX_PROCS):
        rec = procs[i]
        if int(rec["pid"]) == 0 and int(rec["state"]) == ProcState.EMPTY:
            continue
        state = int(rec["state"])
        age = max(0.0, (now - int(rec["heartbeat_ns"])) / _MS)
        live = state in (ProcState.STARTING, ProcState.RUNNING, ProcState.DEGRADED)
        degraded = state == ProcState.DEGRADED or (live and age > DEGRADED_AFTER_MS)
        rows.append(ProcRow(bytes(rec["name"]).decode(errors="replace"), int(rec["pid"]),
                            "DEGRADED" if degraded else _enum_name(ProcState, state), age,
                            int(rec["restarts"]), degraded))
    return rows


def snapshot(status: StatusBoard, board: QuoteBoard, cfg: Config, prev: MonitorModel | None, now: int,
             *, run_id: str = "") -> MonitorModel:
    """Read the status segment and the board once into a `MonitorModel` (pure apart from the reads).

    `prev` is the previous snapshot (message rates come from counter deltas
    over `now - prev.now_ns`); `now` is a `perpbot.clock.now_ns` stamp.
    """
    venues = status.venues
    symbols = status.symbols
    vrows = _venue_rows(status, cfg, prev, now)
    brows = _board_rows(board, cfg, vrows, now)

    trades_raw = status.recent("trades")
    max_age_ns = cfg.exec.max_opportunity_age_ms * _MS
    opps = tuple(
        OppRow(max(0.0, (now - int(o["ts_detect_ns"])) / _MS), int(o["opp_id"]), symbols[int(o["symbol"])],
               venues[int(o["buy_venue"])], venues[int(o["sell_venue"])], float(o["edge_bps"]),
               float(o["buy_price"]), float(o["sell_price"]), _outcome(o, trades_raw, max_age_ns, now))
        for o in status.recent("opps")[:N_SHOW]
    )
    trades = []
    for t in trades_raw[:N_SHOW]:
        closed = int(t["state"]) == TRADE_CLOSED
        end = int(t["close_ns"]) if closed else now
        trades.append(TradeRow(int(t["trade_id"]), symbols[int(t["symbol"])], venues[int(t["buy_venue"])],
                               venues[int(t["sell_venue"])], float(t["size"]), closed,
                               float(t["realized_pnl"]), max(0.0, (end - int(t["open_ns"])) / _MS)))

    pos = status.positions.copy()
    positions = []
    net: dict[str, float] = {}
    for v, vname in enumerate(venues):
        for s, sym in enumerate(symbols):
            q = float(pos[v, s]["qty"])
            if q:
                positions.append(PositionRow(vname, sym, q, float(pos[v, s]["avg_price"])))
                asset = sym.removesuffix("-PERP")
                net[asset] = net.get(asset, 0.0) + q
    # rounding: +0.1 and -0.1 from two venues should net to a clean 0, not 1e-17
    net_by_asset = tuple((a, round(q, 12) + 0.0) for a, q in net.items())

    cap = status.capital.copy()
    capital = tuple(CapitalRow(v, float(cap[i]["free"]), float(cap[i]["locked"]), float(cap[i]["total"]),
                               float(cap[i]["realized_pnl"]), int(cap[i]["open_orders"]))
                    for i, v in enumerate(venues))
    fills = tuple(_fill_row(f, venues, symbols, now) for f in status.recent("fills")[:FILL_ROWS])
    hist = status.hist.copy()
    glob = status.glob.copy()
    return MonitorModel(
        run_id=run_id, now_ns=now,
        trading_state=_enum_name(TradingState, int(glob["trading_state"])),
        halted=int(glob["halt"]) != 0,
        venues=tuple(vrows), board=tuple(brows), opportunities=opps, trades=tuple(trades),
        positions=tuple(positions), net_by_asset=net_by_asset, capital=capital,
        realized_pnl=sum(c.realized_pnl for c in capital), fills=fills,
        processes=tuple(_proc_rows(status, now)),
        latency=tuple(_hop_row(h, [int(x) for x in hist[int(h)]]) for h in Hop),
        frames=tuple(v.frames for v in vrows),
        trades_opened=_role_counter(status, Role.EXEC, ExecCounter.TRADES_OPENED),
        trades_closed=_role_counter(status, Role.EXEC, ExecCounter.TRADES_CLOSED),
        opportunities_found=_role_counter(status, Role.SCANNER, ScannerCounter.OPPORTUNITIES),
    )


def summary_line(m: MonitorModel) -> str:
    """One line for a log or a pipe (the monitor's output when stdout is not a terminal)."""
    up = sum(1 for v in m.venues if v.state == FeedState.CONNECTED.name)
    rate = sum(v.rate_fps or 0.0 for v in m.venues)
    stale = [v.name for v in m.venues if v.stale]
    best = max((b for b in m.board if b.best is not None), key=lambda b: b.best.edge_bps if b.best else 0.0,
               default=None)
    edge = "-"
    if best is not None and best.best is not None:
        e = best.best
        edge = f"{best.symbol} {e.edge_bps:+.2f} bps ({m.venues[e.buy_venue].name}->{m.venues[e.sell_venue].name})"
    parts = [
        f"{time.strftime('%H:%M:%S')} run {m.run_id} [{m.trading_state}]",
        f"feeds {up}/{len(m.venues)} up {rate:.0f} msg/s" + (f" stale: {','.join(stale)}" if stale else ""),
        f"best edge {edge}",
        f"opportunities {m.opportunities_found} trades {m.trades_closed} closed "
        f"{m.trades_opened - m.trades_closed} open",
        f"PnL {m.realized_pnl:+.2f} USD",
    ]
    if m.degraded:
        parts.append(f"DEGRADED: {','.join(m.degraded)}")
    return " | ".join(parts)


