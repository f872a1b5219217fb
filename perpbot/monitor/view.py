"""The view: urwid widgets rendered from a MonitorModel."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import urwid

from perpbot.monitor.model import MonitorModel
from perpbot.shm.layout import (
    FeedState,
)

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


