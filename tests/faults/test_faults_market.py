"""A venue's websocket server misbehaves while the demo trades (`demo.faults`, carried out by the
market process, which logs `fault <kind> on <venue> started/ended`): it drops every connection,
stalls (open but silent), sends garbage among its quotes, sends a crossed book, freezes its
quote (stale: the same old quote again and again), or refuses reconnects for a while.

Two runs, three venues each with its own fault at the same time, so each fault's
effects are told apart by venue. The test polls the status throughout and
measures each venue's recovery from the fault's end (its start for a drop) to
the first fresh quote with the feed CONNECTED. Invariants: nothing sent on a
venue while its quotes were stale (silent longer than `scanner.stale_after_ms`,
refused, or frozen) or crossed; the venue is named in the status, its feed's
log and a feed_down alert where the outage lasted beyond
`alerts.feed_down_after_ms`. `perpbot-ctl kill` lands while reconnects are
still refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import NO_EVENT_ALERTS, Bot, mono_ns
from invariants import alert_lines

from perpbot.config import DemoConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("faults" not in DemoConfig.__struct_fields__,
                       reason="demo.faults (scheduled market faults) is not in perpbot.config yet"),
]

_MS = 1_000_000
#: a finding of this suite
FROZEN_QUOTES = ("FINDING: a venue resending its last quote (old update id, old exchange time) is taken as "
                 "fresh: quotes are aged by their receive stamp only, so orders are decided on a frozen book "
                 "and nothing reports the venue")
AT_S = 5.0
FOR_S = 3.0


@dataclass
class Window:
    kind: str
    venue: str
    start_ns: int
    end_ns: int | None


def market_faults(bot: Bot) -> list[Window]:
    """The faults the market carried out, from its log lines."""
    out: list[Window] = []
    for r in bot.log_lines("market"):
        m = re.match(r"fault (\w+) on (\w+) (started|ended)", str(r.get("msg", "")))
        if not m:
            continue
        kind, venue, what = m.groups()
        t = int(r["mono_ns"])
        if what == "started":
            out.append(Window(kind, venue, t, None))
        else:
            for w in out:
                if w.kind == kind and w.venue == venue and w.end_ns is None:
                    w.end_ns = t
                    break
    return out


class FeedWatch:
    """Status snapshots, stamped, while faults play out."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.snaps: list[tuple[int, dict[str, Any]]] = []

    def poll(self) -> bool:
        """Take a snapshot; True (so it can lead a wait condition)."""
        st = self.bot.try_status()
        if st is not None:
            self.snaps.append((mono_ns(), st))
        return True

    def fresh_at(self, venue: str, after_ns: int) -> int | None:
        """First stamp after `after_ns` at which the venue's feed is CONNECTED and quoting again."""
        prev = None
        for t, st in self.snaps:
            f = st["feeds"][venue]
            if t >= after_ns and prev is not None and f["state"] == "CONNECTED" and f["quotes"] > prev \
                    and f["last_quote_age_ms"] is not None and f["last_quote_age_ms"] < 250:
                return t - int(f["last_quote_age_ms"] * _MS)
            prev = f["quotes"]
        return None

    def seen(self, venue: str, key: str) -> set[Any]:
        return {st["feeds"][venue][key] for _, st in self.snaps}

    def max_of(self, venue: str, key: str) -> Any:
        return max((st["feeds"][venue][key] for _, st in self.snaps), default=None)


def _run_faults(b: Bot, watch: FeedWatch, n: int, *, until: Any = None) -> list[Window]:
    """Poll the status until all `n` faults have ended and every venue quotes again (or `until()`)."""
    def done() -> bool:
        watch.poll()
        ws = market_faults(b)
        if len(ws) < n or any(w.end_ns is None for w in ws):
            return False
        if until is not None:
            return bool(until())
        return all(watch.fresh_at(w.venue, w.end_ns or 0) for w in ws)

    b.wait("every fault played out and every venue quoting again", done, 60, step=0.02)
    return market_faults(b)


def _trading_before(b: Bot, ws: list[Window]) -> int:
    first = min(w.start_ns for w in ws)
    return int(b.query("SELECT COUNT(*) FROM trades WHERE close_ns < ?", (first,))[0][0])


def _reported(b: Bot, watch: FeedWatch, venue: str, w: Window, *, log_due: bool) -> tuple[list[str], list[str]]:
    """(where the venue's trouble shows, where it should but does not): the status always (feed state,
    reconnects, parse errors, stale symbols, or a last quote older than `scanner.stale_after_ms`), the
    feed's log when `log_due` (the feed itself saw something: a close, a refusal, bad frames)."""
    shown, missing = [], []
    states = watch.seen(venue, "state")
    age = max((a for a in watch.seen(venue, "last_quote_age_ms") if a is not None), default=0)
    if states - {"CONNECTED"} or watch.max_of(venue, "reconnects") or watch.max_of(venue, "stale_symbols") \
            or watch.max_of(venue, "parse_errors") or age > b.raw["scanner"]["stale_after_ms"]:
        shown.append(f"status ({'/'.join(sorted(states))}, reconnects {watch.max_of(venue, 'reconnects')}, "
                     f"parse errors {watch.max_of(venue, 'parse_errors')}, last quote up to {age:.0f} ms old)")
    else:
        missing.append("status")
    logged = [r for r in b.log_lines(f"feed-{venue}") if int(r.get("mono_ns", 0)) >= w.start_ns
              and r.get("level") in ("WARNING", "ERROR")]
    if logged:
        shown.append(f"feed-{venue} log ({len(logged)} warnings)")
    elif log_due:
        missing.append(f"feed-{venue} log")
    return shown, missing


def _feed_down_alerted(b: Bot, venue: str) -> bool:
    return any(venue in m for m in alert_lines(b.data_dir, "feed_down"))


def _outage_ms(w: Window, recovered_ns: int | None) -> float:
    return ((recovered_ns or w.end_ns or w.start_ns) - w.start_ns) / _MS


def test_server_drops_stalls_and_sends_garbage(bot: Any, record: Any) -> None:
    faults = [{"at_s": AT_S, "venue": "okx", "kind": "drop"},
              {"at_s": AT_S, "venue": "bybit", "kind": "stall", "for_s": FOR_S},
              {"at_s": AT_S, "venue": "binanceusdm", "kind": "garbage", "for_s": FOR_S}]
    b: Bot = bot(demo={"faults": faults})
    b.start(trades=1)
    watch = FeedWatch(b)
    ws = _run_faults(b, watch, 3)
    code, reply, err = b.kill_switch()
    assert code == 0, err
    assert b.stop() == 0, b.output()[-3000:]

    stale_ns = b.raw["scanner"]["stale_after_ms"] * _MS
    by = {w.kind: w for w in ws}
    drop, stall, garbage = by["drop"], by["stall"], by["garbage"]
    assert stall.end_ns and garbage.end_ns
    bad = [("bybit", None, stall.start_ns + stale_ns, stall.end_ns, "stale (stalled server)")]
    okx_back = watch.fresh_at("okx", drop.start_ns)
    if okx_back and okx_back - drop.start_ns > stale_ns:
        bad.append(("okx", None, drop.start_ns + stale_ns, okx_back, "stale (dropped, reconnecting)"))
    problems, notes = b.check(bad_quote_windows=bad)
    before = _trading_before(b, ws)
    if not before:
        notes.append("no trade had closed before the faults started (slow start-up)")
    rows = []
    for w, venue, did in (
            (drop, "okx", "feed saw the close, reconnected and resubscribed"),
            (stall, "bybit", "connection open but silent: quotes went stale"
                             + ("" if problems else ", no order on bybit on them") + "; quotes resumed at the end"),
            (garbage, "binanceusdm", "malformed frames counted as parse errors and dropped, the good quotes "
                                     "between them kept flowing")):
        since = w.start_ns if w.kind == "drop" else (w.end_ns or w.start_ns)
        back = watch.fresh_at(venue, since)
        shown, missing = _reported(b, watch, venue, w, log_due=w.kind in ("drop", "garbage"))
        outage = _outage_ms(w, back)
        # a feed_down alert is due when the feed itself is down longer than alerts.feed_down_after_ms; a
        # stalled connection is still up (until feed.silent_reconnect_ms), so only a drop could qualify
        alert_due = w.kind == "drop" and outage > b.raw["alerts"]["feed_down_after_ms"]
        alerted = _feed_down_alerted(b, venue)
        if alert_due and not alerted:
            missing.append("feed_down alert")
        rows.append((w, venue, did, back, shown, missing, alerted))
    garbage_errors = watch.max_of("binanceusdm", "parse_errors") or 0
    restarts = {f"feed-{v}": p["restarts"] for v in ("okx", "bybit", "binanceusdm")
                for p in [watch.snaps[-1][1]["processes"][f"feed-{v}"]]}
    for w, venue, did, back, shown, missing, alerted in rows:
        since = w.start_ns if w.kind == "drop" else (w.end_ns or w.start_ns)
        rec = (back - since) / 1e9 if back else None
        miss = [f"{venue} not reported in: {', '.join(m for m in missing if m != 'feed_down alert')}"] \
            if [m for m in missing if m != "feed_down alert"] else []
        record(f"market: {venue} server {w.kind}" + (f" for {FOR_S:g} s" if w.kind != "drop" else ""),
               f"{did}; shown in {', '.join(shown) or 'nothing'}"
               + ("; feed_down alerted" if alerted else "; no feed_down alert" if "feed_down alert" in missing
                  else "") + f"; feed restarts {restarts[f'feed-{venue}']}",
               rec, problems + miss + ([NO_EVENT_ALERTS + " (no feed_down alert)"]
                                       if "feed_down alert" in missing else []), notes=notes,
               recover_what="fault end (drop: start) to the first fresh quote")
    assert garbage_errors > 0, "the garbage reached no parser"
    assert all(n == 0 for n in restarts.values()), restarts
    assert not problems, problems
    unreported = [f"{v}: {m}" for _, v, _, _, _, missing, _ in rows for m in missing if m != "feed_down alert"]
    assert not unreported, unreported
    if any("feed_down alert" in missing for *_, missing, _ in rows):
        pytest.xfail(NO_EVENT_ALERTS + " (no feed_down alert)")


def test_server_sends_crossed_and_stale_books_and_refuses_reconnects(bot: Any, record: Any) -> None:
    faults = [{"at_s": AT_S, "venue": "okx", "kind": "crossed", "for_s": FOR_S, "symbol": "BTC-PERP"},
              {"at_s": AT_S, "venue": "bybit", "kind": "stale", "for_s": FOR_S},
              {"at_s": AT_S, "venue": "binanceusdm", "kind": "refuse", "for_s": FOR_S + 2.0}]
    b: Bot = bot(demo={"faults": faults})
    b.start(trades=1)
    watch = FeedWatch(b)

    def crossed_and_stale_over() -> bool:
        ws = market_faults(b)
        return all(w.end_ns for w in ws if w.kind in ("crossed", "stale")) and len(ws) == 3 and all(
            watch.fresh_at(w.venue, w.end_ns or 0) for w in ws if w.kind in ("crossed", "stale"))

    b.wait("three faults started", lambda: watch.poll() and len(market_faults(b)) == 3, 60)
    b.wait("crossed and stale over, refuse still on", lambda: watch.poll() and crossed_and_stale_over(), 60)
    refusing = next(w for w in market_faults(b) if w.kind == "refuse").end_ns is None
    code, reply, err = b.kill_switch()  # reconnects still refused
    assert code == 0, err
    ws = _run_faults(b, watch, 3)
    assert b.stop() == 0, b.output()[-3000:]

    stale_ns = b.raw["scanner"]["stale_after_ms"] * _MS
    by = {w.kind: w for w in ws}
    crossed, stale, refuse = by["crossed"], by["stale"], by["refuse"]
    assert crossed.end_ns and stale.end_ns and refuse.end_ns
    bin_back = watch.fresh_at("binanceusdm", refuse.end_ns) or refuse.end_ns
    bad = [("okx", "BTC-PERP", crossed.start_ns, crossed.end_ns, "crossed"),
           ("bybit", None, stale.start_ns + stale_ns, stale.end_ns, "frozen (stale server)"),
           ("binanceusdm", None, refuse.start_ns + stale_ns, bin_back, "stale (reconnects refused)")]
    problems, notes = b.check(bad_quote_windows=bad)
    in_window = {k: [p for p in problems if f"while its quotes were {k}" in p]
                 for k in ("crossed", "frozen (stale server)", "stale (reconnects refused)")}
    decided = {k: b.query("SELECT COUNT(*) FROM orders WHERE venue=? AND (? IS NULL OR symbol=?) AND "
                          "ts_decide_ns BETWEEN ? AND ? AND status != 'not_sent'", (v, sym, sym, a, z))[0][0]
               for v, sym, a, z, k in bad}
    others = [p for p in problems if not any(p in v for v in in_window.values())]
    notes.append(f"trades closed before the faults: {_trading_before(b, ws)}")
    rows = {"crossed": ("okx", "BTC-PERP quotes with bid > ask"), "stale": ("bybit", "the same old quote resent"),
            "refuse": ("binanceusdm", "every reconnect refused (HTTP 503)")}
    reported: dict[str, list[str]] = {}
    for kind, (venue, what) in rows.items():
        w = by[kind]
        back = watch.fresh_at(venue, w.end_ns or w.start_ns)
        shown, missing = _reported(b, watch, venue, w, log_due=kind == "refuse")
        key = {"crossed": "crossed", "stale": "frozen (stale server)", "refuse": "stale (reconnects refused)"}[kind]
        mine = in_window[key]
        n_decided = decided[key]
        alert_due = kind == "refuse"
        alerted = _feed_down_alerted(b, venue)
        extra = [NO_EVENT_ALERTS + " (no feed_down alert)"] if alert_due and not alerted else []
        reported[venue] = missing
        if kind == "stale" and (mine or missing):
            extra.append(FROZEN_QUOTES)
        record(f"market: {venue} server {kind} for {(w.end_ns - w.start_ns) / 1e9 if w.end_ns else 0:.0f} s"
               + (" + perpbot-ctl kill while refused" if kind == "refuse" else ""),
               f"{what}: {n_decided} order(s) decided on those quotes; shown in {', '.join(shown) or 'nothing'}"
               + (f"; kill {'landed while refused' if refusing else 'landed after'}: halted" if kind == "refuse"
                  else ""),
               (back - (w.end_ns or 0)) / 1e9 if back else None,
               others + mine + [f"{venue} not reported in: {m}" for m in missing] + extra, notes=notes,
               recover_what="fault end to the first fresh quote")
    assert not others, others
    assert not in_window["crossed"] and not in_window["stale (reconnects refused)"], in_window
    unreported = {v: m for v, m in reported.items() if m}
    if in_window["frozen (stale server)"] or unreported.get("bybit"):
        unreported.pop("bybit", None)
        assert not unreported, unreported
        pytest.xfail(FROZEN_QUOTES)
    assert not unreported, unreported
    if not _feed_down_alerted(b, "binanceusdm"):
        pytest.xfail(NO_EVENT_ALERTS + " (no feed_down alert)")
