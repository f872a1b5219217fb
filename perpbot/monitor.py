"""perpbot-monitor: a terminal view of a live run, from the status segment and the board only.

    perpbot-monitor [--run RUN_ID] [--config FILE] [--refresh-ms MS] [--interval S] [--count N]

Finds the run like `perpbot-ctl` does, maps both segments READ-ONLY (the kernel
refuses any write, so the monitor can never disturb the hot path) and redraws
several times a second. Keys: `k` kill (asks y/n), `p` pause, `r` resume, `f`
flatten (asks y/n), `q` quits the monitor only; arrows and page keys scroll.
When stdout is not a terminal it prints a one-line summary every `--interval`
seconds instead.

Built like urwid's `examples/graph.py`: a pure model (`snapshot`, plain data,
testable without a terminal), a view that turns a model into widgets
(`MonitorView`), and a controller with the keys and a self-re-arming alarm
(`MonitorController`).
"""

from __future__ import annotations

import argparse
import mmap
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import urwid
import zmq

from perpbot import bus
from perpbot.clock import now_ns
from perpbot.config import Config, load_config
from perpbot.ctl import find_run
from perpbot.errors import ConfigError, LayoutError
from perpbot.events import EventType
from perpbot.exec.risk import Reason
from perpbot.metrics import bucket_bounds, quantile
from perpbot.runctx import CONFIG_COPY, RUN_FILE, default_run_root, run_root
from perpbot.scanner.edge import best_edge, fee_multipliers
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import (
    BOARD_LAYOUT_VERSION,
    BOARD_MAGIC,
    MAX_PROCS,
    STATUS_LAYOUT_VERSION,
    STATUS_MAGIC,
    ExecCounter,
    FeedKind,
    FeedState,
    Hop,
    ProcState,
    Role,
    ScannerCounter,
    TradingState,
    board_layout,
    segment_names,
    status_layout,
)
from perpbot.shm.segment import SHM_DIR, Segment, check_header

#: a heartbeat older than this marks a live process DEGRADED on screen
DEGRADED_AFTER_MS = 1000.0
#: rows kept for the opportunity and trade lists
N_SHOW = 8
#: columns of the text latency histogram
HIST_COLUMNS = 16
#: the trades ring's `state` values (written by perpbot.exec.engine)
TRADE_OPEN, TRADE_CLOSED = 1, 2
_MS = 1_000_000


# ================================================================================ attach


class ReadOnlySegment(Segment):
    """A segment mapped PROT_READ: any write through it faults instead of corrupting the run.

    Not registered with the resource tracker (no `SharedMemory` object), so the
    monitor can never unlink or "clean up" a segment it does not own.
    """

    def __init__(self, name: str) -> None:  # deliberately not Segment.__init__: no SharedMemory here
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            self._mm: mmap.mmap | None = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._view: memoryview | None = memoryview(self._mm)
        self.owner = False
        self.name = name

    @property
    def buf(self) -> memoryview:
        assert self._view is not None, "segment is closed"
        return self._view

    def close(self) -> None:
        """Unmap. The boards built on this segment must have dropped their views first."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def unlink(self) -> None:
        raise RuntimeError("the monitor never unlinks a run's segments")


def attach_readonly(run_id: str, cfg: Config) -> tuple[StatusBoard, QuoteBoard]:
    """Read-only status and board views of a live run, headers checked like every process does."""
    bname, sname = segment_names(run_id)
    venues, symbols = cfg.venue_names, cfg.symbol_names
    slay = status_layout(len(venues), len(symbols))
    blay = board_layout(len(venues), len(symbols))
    segs: list[ReadOnlySegment] = []
    try:
        for name, magic, version, lay in ((sname, STATUS_MAGIC, STATUS_LAYOUT_VERSION, slay),
                                          (bname, BOARD_MAGIC, BOARD_LAYOUT_VERSION, blay)):
            try:
                seg = ReadOnlySegment(name)
            except FileNotFoundError:
                raise LayoutError(f"shared-memory segment {name!r} does not exist (has the run ended?)") from None
            segs.append(seg)
            check_header(seg, magic, version, venues, symbols, lay.venue_table, lay.symbol_table, lay.size)
    except BaseException:
        for s in segs:
            s.close()
        raise
    return StatusBoard(segs[0], slay, venues, symbols), QuoteBoard(segs[1], blay, venues, symbols)


@dataclass
class AttachedRun:
    """Everything the monitor holds on a run: its config copy, read-only segments, control endpoints."""

    run_id: str
    run_dir: Path
    cfg: Config
    status: StatusBoard
    board: QuoteBoard

    @classmethod
    def open(cls, run_dir: Path) -> AttachedRun:
        """Attach to the run in `run_dir` (a directory `perpbot.ctl.find_run` returned)."""
        info: dict[str, Any] = orjson.loads((run_dir / RUN_FILE).read_bytes())
        # the run's frozen copy, not the file the user passed: fees and tables must match the segments
        cfg = load_config(run_dir / CONFIG_COPY)
        status, board = attach_readonly(str(info["run_id"]), cfg)
        return cls(str(info["run_id"]), run_dir, cfg, status, board)

    @property
    def endpoints(self) -> bus.Endpoints:
        """The run's ZeroMQ endpoints (control requests go to `endpoints.control`)."""
        return bus.endpoints(self.run_dir)

    def alive(self) -> bool:
        """True while the launcher that owns the run is alive."""
        pid = int(self.status.glob["launcher_pid"])
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def snapshot(self, prev: MonitorModel | None) -> MonitorModel:
        """`snapshot` of this run now."""
        return snapshot(self.status, self.board, self.cfg, prev, now_ns(), run_id=self.run_id)

    def close(self) -> None:
        """Drop the views and unmap both segments (never unlinks them)."""
        self.status.close()
        self.board.close()


# ================================================================================ model


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


# ================================================================================ view

PALETTE = [
    ("header", "white,bold", "dark blue"),
    ("title", "yellow,bold", ""),
    ("colhead", "light gray,underline", ""),
    ("ok", "light green", ""),
    ("bad", "light red,bold", ""),
    ("warn", "yellow", ""),
    ("stale", "dark gray", ""),
    ("buy", "black", "light green"),
    ("sell", "black", "light magenta"),
    ("edge_neg", "black", "brown"),
    ("halted", "white,bold", "dark red"),
    ("paused", "black", "yellow"),
    ("running", "black", "dark green"),
    ("status", "white", "dark gray"),
    ("keys", "black", "light gray"),
]

_SPARK = " ▁▂▃▄▅▆▇█"
Markup = list[Any]
#: one section's width: two fit side by side from 161 columns on
SECTION_WIDTH = 80


def sparkline(bins: Sequence[int]) -> str:
    """Counts as block characters scaled to the largest (any non-zero count shows at least ▁)."""
    top = max(bins, default=0)
    if top <= 0:
        return ""
    return "".join(_SPARK[0] if c == 0 else _SPARK[max(1, round(c / top * (len(_SPARK) - 1)))] for c in bins)


def _fmt_age(ms: float | None) -> str:
    if ms is None:
        return "never"
    return f"{ms:.0f}ms" if ms < 10_000 else f"{ms / 1000:.0f}s"


def _fmt_us(us: float | None, unit: bool = False) -> str:
    """Microseconds in a column headed "us"; past a millisecond the unit is always written."""
    if us is None:
        return "-"
    if us >= 1000:
        return f"{us / 1000:.1f}ms"
    return f"{us:.1f}us" if unit else f"{us:.1f}"


def _lines(*lines: Markup) -> Markup:
    out: Markup = []
    for i, ln in enumerate(lines):
        if i:
            out.append("\n")
        out.extend(ln)
    return out


def board_markup(m: MonitorModel) -> Markup:
    """Venues down, symbols across (three per block), the best pair's ask and bid highlighted."""
    out: list[Markup] = [[("title", "BOARD  best bid/ask per venue, best net-of-fee edge highlighted")]]
    names = [v.name for v in m.venues]
    for start in range(0, len(m.board), 3):
        block = m.board[start:start + 3]
        out.append([("colhead", f"{'venue':<13}" + "".join(f"{r.symbol:>21}" for r in block))])
        for v, name in enumerate(names):
            line: Markup = [f"{name[:12]:<13}"]
            for r in block:
                c = r.cells[v]
                if c is None:
                    line.append(f"{'-':>21}")
                    continue
                bid, ask = f"{c.bid:.{r.decimals}f}", f"{c.ask:.{r.decimals}f}"
                pad = " " * max(1, 21 - len(bid) - len(ask) - 1)
                b = r.best
                good = b is not None and b.edge_bps > 0
                ask_attr = ("buy" if good else "edge_neg") if b is not None and b.buy_venue == v else None
                bid_attr = ("sell" if good else "edge_neg") if b is not None and b.sell_venue == v else None
                dim = "stale" if c.stale else None
                line += [pad, (bid_attr or dim or "", bid), "/", (ask_attr or dim or "", ask)]
            out.append(line)
        for r in block:
            b = r.best
            if b is None:
                out.append([f"  {r.symbol}: no pair of fresh quotes"])
                continue
            attr = "ok" if b.edge_bps > 0 else "warn"
            out.append([f"  {r.symbol}: buy {names[b.buy_venue]} {b.buy_price:.{r.decimals}f} -> sell "
                        f"{names[b.sell_venue]} {b.sell_price:.{r.decimals}f}  net ",
                        (attr, f"{b.edge_bps:+.2f} bps")])
    return _lines(*out)


def venues_markup(m: MonitorModel) -> Markup:
    """Per venue: connection state, msg/s, frames, last quote age, stale symbols, reconnects."""
    out: list[Markup] = [[("title", "FEEDS")],
                         [("colhead", f"{'venue':<13}{'state':<11}{'msg/s':>8}{'frames':>10}{'last quote':>12}"
                                      f"{'stale sym':>10}{'reconn':>8}  ")]]
    for v in m.venues:
        st_attr = "ok" if v.state == FeedState.CONNECTED.name and not v.stale else "bad"
        rate = "-" if v.rate_fps is None else f"{v.rate_fps:.0f}"
        kind = " ccxt" if v.kind == "ccxt" else ""
        out.append([f"{v.name[:12]:<13}", (st_attr, f"{v.state:<11}"), f"{rate:>8}{v.frames:>10}",
                    ("bad" if v.stale else "", f"{_fmt_age(v.last_quote_age_ms):>12}"),
                    ("warn" if v.stale_symbols else "", f"{v.stale_symbols:>10}"),
                    ("warn" if v.reconnects else "", f"{v.reconnects:>8}"), kind])
    return _lines(*out)


def trades_markup(m: MonitorModel) -> Markup:
    """Recent trades with realized PnL once closed."""
    out: list[Markup] = [[("title", "TRADES  recent, newest first")],
                         [("colhead", f"{'id':>6} {'symbol':<10}{'long':<12}{'short':<12}{'size':>10}"
                                      f"{'state':>8}{'held':>8}{'PnL USD':>11}")]]
    if not m.trades:
        out.append(["  none yet"])
    for t in m.trades:
        pnl: Markup = [("ok" if t.realized_pnl >= 0 else "bad", f"{t.realized_pnl:>+11.4f}")] if t.closed \
            else [f"{'-':>11}"]
        out.append([f"{t.trade_id:>6} {t.symbol:<10}{t.buy_venue[:11]:<12}{t.sell_venue[:11]:<12}{t.size:>10.6g}"
                    f"{'closed' if t.closed else 'open':>8}{_fmt_age(t.held_ms):>8}", *pnl])
    return _lines(*out)


def fills_markup(m: MonitorModel) -> Markup:
    """Recent fills, newest first (orders are IOC: each fill is the whole of what an order got)."""
    out: list[Markup] = [[("title", "FILLS  recent, newest first")],
                         [("colhead", f"{'age':>7} {'trade':>6} {'venue':<12}{'symbol':<10}{'side':<5}{'qty':>10}"
                                      f"{'price':>13}{'fee':>10}")]]
    if not m.fills:
        out.append(["  none yet"])
    for f in m.fills:
        out.append([f"{_fmt_age(f.age_ms):>7} {f.trade_id:>6} {f.venue[:11]:<12}{f.symbol:<10}",
                    ("ok" if f.side == "buy" else "warn", f"{f.side:<5}"),
                    f"{f.qty:>10.6g}{f.price:>13.6g}{f.fee:>10.4f}"])
    return _lines(*out)


def opps_markup(m: MonitorModel) -> Markup:
    """Recent opportunities and their outcome."""
    out: list[Markup] = [[("title", "OPPORTUNITIES  recent, newest first")],
                         [("colhead", f"{'age':>7} {'symbol':<10}{'buy':<12}{'sell':<12}{'net bps':>8}  "
                                      f"{'outcome':<27}")]]
    if not m.opportunities:
        out.append(["  none yet"])
    for o in m.opportunities:
        attr = "ok" if o.outcome.startswith("trade") else ("warn" if o.outcome == "pending" else "stale")
        out.append([f"{_fmt_age(o.age_ms):>7} {o.symbol:<10}{o.buy_venue[:11]:<12}{o.sell_venue[:11]:<12}"
                    f"{o.edge_bps:>+8.2f}  ", (attr, o.outcome[:27])])
    return _lines(*out)


def positions_markup(m: MonitorModel) -> Markup:
    """Non-zero positions per venue, then the net per asset."""
    out: list[Markup] = [[("title", "POSITIONS  per venue, and net per asset")]]
    if not m.positions:
        out.append(["  flat"])
    for p in m.positions:
        out.append([f"  {p.venue[:12]:<13}{p.symbol:<10}{p.qty:>+14.6g} @ {p.avg_price:.6g}"])
    if m.net_by_asset:
        out.append(["  net: ", *[(("ok" if q == 0 else "warn"), f"{a} {q:+.6g}  ") for a, q in m.net_by_asset]])
    return _lines(*out)


def capital_markup(m: MonitorModel) -> Markup:
    """Capital pools per venue."""
    out: list[Markup] = [[("title", "CAPITAL  per venue, USD; open orders")],
                         [("colhead", f"{'venue':<13}{'free':>14}{'locked':>12}{'total':>14}{'realized':>12}"
                                      f"{'orders':>8}")]]
    for c in m.capital:
        out.append([f"{c.venue[:12]:<13}{c.free:>14,.2f}{c.locked:>12,.2f}{c.total:>14,.2f}",
                    ("ok" if c.realized_pnl >= 0 else "bad", f"{c.realized_pnl:>+12.4f}"), f"{c.open_orders:>8}"])
    return _lines(*out)


def procs_markup(m: MonitorModel) -> Markup:
    """Process health: state (DEGRADED on a late heartbeat), pid, heartbeat age."""
    out: list[Markup] = [[("title", "PROCESSES")],
                         [("colhead", f"{'name':<18}{'state':<10}{'pid':>8}{'heartbeat':>11}{'restarts':>10}")]]
    for p in m.processes:
        attr = "bad" if p.degraded or p.state == "FAULTED" else ("ok" if p.state == "RUNNING" else "warn")
        out.append([f"{p.name[:17]:<18}", (attr, f"{p.state:<10}"), f"{p.pid:>8}",
                    ("bad" if p.degraded else "", f"{_fmt_age(p.heartbeat_age_ms):>11}"), f"{p.restarts:>10}"])
    return _lines(*out)


def latency_markup(m: MonitorModel) -> Markup:
    """p50/p99 per hop and a text histogram over the non-empty bucket range."""
    out: list[Markup] = [[("title", "LATENCY per hop, us")],
                         [("colhead", f"{'hop':<22}{'count':>8}{'p50':>9}{'p99':>9}  histogram (lo..hi)")]]
    for h in m.latency:
        if not h.count:
            out.append([f"{h.name:<22}{0:>8}{'-':>9}{'-':>9}"])
            continue
        out.append([f"{h.name:<22}{h.count:>8}{_fmt_us(h.p50_us):>9}{_fmt_us(h.p99_us):>9}  ",
                    ("ok", sparkline(h.bins)), f" {_fmt_us(h.lo_us, True)}..{_fmt_us(h.hi_us, True)}"])
    return _lines(*out)


SECTIONS: tuple[Callable[[MonitorModel], Markup], ...] = (
    board_markup, venues_markup, trades_markup, fills_markup, opps_markup, positions_markup, capital_markup,
    procs_markup,
    latency_markup,
)


def header_markup(m: MonitorModel | None, note: str = "") -> Markup:
    """Run id, trading state, realized PnL, closed trades, clock, DEGRADED processes."""
    if m is None:
        return [("header", f" perpbot-monitor  {note or 'attaching...'}")]
    state_attr = {"HALTED": "halted", "PAUSED": "paused", "RUNNING": "running"}.get(m.trading_state, "paused")
    state = m.trading_state + (" (kill switch)" if m.halted and m.trading_state != "HALTED" else "")
    out: Markup = [("header", f" {m.run_id} "), (state_attr, f" {state} "),
                   ("header", f" PnL {m.realized_pnl:+.2f} USD  trades {m.trades_closed} "),
                   ("header", time.strftime(" %H:%M:%S "))]
    if m.degraded:
        out.append(("halted", f" DEGRADED: {','.join(m.degraded)} "))
    if note:
        out.append(("halted", f" {note} "))
    return out


KEY_HELP = " k kill  p pause  r resume  f flatten  q quit   arrows/PgUp/PgDn scroll"


class MonitorView:
    """The widgets: a header, the sections flowing in a scrollable grid, a status line and key help.

    `update` rewrites the texts in place so the scroll position survives a redraw.
    """

    def __init__(self) -> None:
        self.header = urwid.Text(header_markup(None), wrap="clip")
        self.sections = [urwid.Text("", wrap="clip") for _ in SECTIONS]
        # GridFlow lays sections side by side when the terminal is wide enough, one per row when not
        self.grid = urwid.GridFlow(self.sections, cell_width=SECTION_WIDTH, h_sep=1, v_sep=1, align="left")
        self.walker = urwid.SimpleListWalker([self.grid])
        self.body = urwid.ListBox(self.walker)
        self.status = urwid.Text("", wrap="clip")
        self.keys = urwid.Text(KEY_HELP, wrap="clip")
        self.frame = urwid.Frame(
            self.body,
            header=urwid.AttrMap(self.header, "header"),
            footer=urwid.Pile([urwid.AttrMap(self.status, "status"), urwid.AttrMap(self.keys, "keys")]),
        )

    def update(self, m: MonitorModel | None, note: str = "") -> None:
        """Show a model (None: nothing read yet); `note` is shouted in the header."""
        self.header.set_text(header_markup(m, note))
        if m is None:
            return
        for w, section in zip(self.sections, SECTIONS):
            w.set_text(section(m))

    def set_status(self, text: str) -> None:
        """The status line: confirmations and control replies."""
        self.status.set_text(" " + text)


# ================================================================================ controller


@dataclass(frozen=True)
class _Confirm:
    command: str
    prompt: str


_CONFIRM = {"k": _Confirm("kill", "KILL: halt all trading now? y/n"),
            "f": _Confirm("flatten", "FLATTEN: close every position? y/n")}
_DIRECT = {"p": "pause", "r": "resume"}


def describe_reply(command: str, reply: dict[str, Any]) -> str:
    """One status-line sentence for a control reply."""
    if not reply.get("ok"):
        return f"{command}: refused: {reply.get('error', 'no reason given')}"
    if command == "kill" and "command_to_halt_us" in reply:
        return f"kill: trading HALTED ({float(reply['command_to_halt_us']):.1f} us after the launcher got it)"
    return f"{command}: ok, {reply.get('state', 'done')}"


class MonitorController:
    """Keys and the refresh alarm. Control commands run on a worker thread so the screen never freezes."""

    def __init__(self, run: AttachedRun, view: MonitorView, refresh_s: float = 0.2,
                 request: Callable[[bus.Endpoints, str], dict[str, Any]] | None = None) -> None:
        self.run = run
        self.view = view
        self.refresh_s = refresh_s
        self.model: MonitorModel | None = None
        self.confirm: _Confirm | None = None
        self.busy: str | None = None
        self.ended = False
        self._replies: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._request = request or (lambda ep, cmd: bus.control_request(ep, cmd, timeout_ms=3000))
        self.loop: urwid.MainLoop | None = None
        self._zctx: zmq.Context[Any] | None = None
        self._alerts: zmq.Socket[Any] | None = None

    def subscribe_alerts(self, bell: Callable[[], None]) -> None:
        """Ring `bell` and show the alert for every ALERT event the launcher publishes (bell sinks)."""
        self._zctx = zmq.Context()
        self._alerts = bus.event_subscriber(self._zctx, self.run.endpoints, (EventType.ALERT.value,))
        self._bell = bell

    def close(self) -> None:
        if self._alerts is not None:
            self._alerts.close()
        if self._zctx is not None:
            self._zctx.term()

    def _poll_alerts(self) -> None:
        sock = self._alerts
        while sock is not None:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                _, alert = bus.decode_event(frames)
            except (ValueError, orjson.JSONDecodeError):
                continue
            self._bell()
            self.view.set_status(f"ALERT {alert.get('kind')}: {alert.get('message')}")

    def refresh(self) -> None:
        """Take a snapshot, pick up control replies and alerts, redraw."""
        self._poll_alerts()
        while True:
            try:
                msg = self._replies.get_nowait()
            except queue.Empty:
                break
            self.busy = None
            self.view.set_status(msg)
        note = ""
        if not self.ended and not self.run.alive():
            self.ended = True
            self.view.set_status("the run has ended (launcher gone); q quits")
        if self.ended:
            note = "RUN ENDED"
        else:
            self.model = self.run.snapshot(self.model)
        self.view.update(self.model, note)

    def on_tick(self, loop: urwid.MainLoop, _data: object = None) -> None:
        """The alarm callback: redraw, then arm the next alarm."""
        self.refresh()
        loop.set_alarm_in(self.refresh_s, self.on_tick)  # re-arm: one alarm alive at any time

    def on_key(self, key: str | tuple[str, int, int, int]) -> bool:
        """urwid's unhandled_input: a pending y/n first, then q, k, f, p, r. True when handled."""
        if not isinstance(key, str):
            return False
        if self.confirm is not None:
            c, self.confirm = self.confirm, None
            if key in ("y", "Y"):
                self._send(c.command)
            else:
                self.view.set_status(f"{c.command} cancelled")
            return True
        if key in ("q", "Q"):
            raise urwid.ExitMainLoop()
        if key in _CONFIRM:
            if self._check_idle():
                self.confirm = _CONFIRM[key]
                self.view.set_status(self.confirm.prompt)
            return True
        if key in _DIRECT:
            if self._check_idle():
                self._send(_DIRECT[key])
            return True
        return False

    def _check_idle(self) -> bool:
        if self.ended:
            self.view.set_status("the run has ended; nothing to control")
            return False
        if self.busy is not None:
            self.view.set_status(f"still waiting for the reply to {self.busy}")
            return False
        return True

    def _send(self, command: str) -> None:
        self.busy = command
        self.view.set_status(f"{command}: sent, waiting for the reply...")

        def work() -> None:
            try:
                msg = describe_reply(command, self._request(self.run.endpoints, command))
            except (TimeoutError, OSError, ValueError) as e:
                msg = f"{command}: failed: {e}"
            self._replies.put(msg)

        threading.Thread(target=work, name=f"monitor-{command}", daemon=True).start()

    def run_loop(self, screen: urwid.display.BaseScreen | None = None) -> None:
        """Run urwid's main loop until `q` (ExitMainLoop)."""
        kw: dict[str, Any] = {"screen": screen} if screen is not None else {}
        self.loop = urwid.MainLoop(self.view.frame, PALETTE, unhandled_input=self.on_key, handle_mouse=False, **kw)
        self.loop.set_alarm_in(0, self.on_tick)
        self.loop.run()


# ================================================================================ main


def _ring_bell() -> None:
    sys.stdout.write("\a")  # BEL: the terminal's own alert, through urwid's screen untouched
    sys.stdout.flush()


def summary_loop(run: AttachedRun, interval_s: float, count: int, out: Any = sys.stdout) -> int:
    """Print `summary_line` every interval until the run ends (or `count` lines, when non-zero)."""
    prev = run.snapshot(None)
    n = 0
    while True:
        # rates need two snapshots: the first line comes one interval after attaching
        deadline = time.monotonic() + interval_s
        while time.monotonic() < deadline:
            if not run.alive():
                print(f"run {run.run_id} has ended", file=out, flush=True)
                return 0
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        prev = run.snapshot(prev)
        print(summary_line(prev), file=out, flush=True)
        n += 1
        if count and n >= count:
            return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of perpbot-monitor."""
    p = argparse.ArgumentParser(prog="perpbot-monitor", description="Watch and control a running PerpBot.")
    p.add_argument("--run", help="run id (default: the only live run)")
    p.add_argument("--config", type=Path, help="config file, to find a non-default run_root")
    p.add_argument("--refresh-ms", type=int, default=200, help="screen redraw period, ms")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between summary lines when stdout is not a terminal")
    p.add_argument("--count", type=int, default=0, help="summary lines to print before exiting; 0: until the run ends")
    args = p.parse_args(argv)
    if args.refresh_ms < 20 or args.interval <= 0 or args.count < 0:
        print("perpbot-monitor: --refresh-ms >= 20, --interval > 0 and --count >= 0 please", file=sys.stderr)
        return 2
    try:
        root = run_root(load_config(args.config)) if args.config else default_run_root()
        run = AttachedRun.open(find_run(root, args.run))
    except ConfigError as e:
        print(f"perpbot-monitor: {e}", file=sys.stderr)
        return 2
    except (LookupError, LayoutError, OSError) as e:
        print(f"perpbot-monitor: {e}", file=sys.stderr)
        return 3
    try:
        if not (sys.stdout.isatty() and sys.stdin.isatty()):
            return summary_loop(run, args.interval, args.count)
        controller = MonitorController(run, MonitorView(), args.refresh_ms / 1000)
        controller.subscribe_alerts(_ring_bell)
        try:
            controller.run_loop()
        finally:
            controller.close()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        run.close()


if __name__ == "__main__":
    raise SystemExit(main())
