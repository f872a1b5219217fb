"""The paper venue misbehaves while the demo trades: rejects, never fills, fills partly, times out,
fills late after a cancel (`paper:` fault rates), and books a position we did not trade
(`paper.drift`). Then `perpbot-ctl kill` while the faults go on, and the invariants.

Which order met which fault is read from the venues' own ledgers (the order's
`never_fill`/`late_fill` flags, the partial fill's note, the reject reason) and
from exec's log (a timeout is an exception, not a ledger line); how long each hit
trade's legs stayed apart is measured from the venues' fill stamps.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest
from conftest import NO_EVENT_ALERTS, Bot
from invariants import alert_lines, naked_spans, trade_of

from perpbot.config import PaperConfig

pytestmark = pytest.mark.slow

_MS = 1_000_000
RATE = 0.07
KINDS = ("reject", "never_fill", "partial", "timeout", "late_fill")
WHAT = {
    "reject": "the paper venue rejects an order",
    "never_fill": "accepts an order but never fills it",
    "partial": "fills one leg partly",
    "timeout": "times out (the answer is lost; half the time the venue executed it)",
    "late_fill": "fills late: the order rests, and fills as the cancel arrives",
}


def _hits(b: Bot) -> dict[str, set[str]]:
    """Client order ids each fault kind hit."""
    led = b.ledgers()
    hits: dict[str, set[str]] = {k: set() for k in KINDS}
    for o in led.orders:
        if o.never_fill:
            hits["never_fill"].add(o.coid)
        if o.late_fill:
            hits["late_fill"].add(o.coid)
        if o.note.startswith("random fault partial"):
            hits["partial"].add(o.coid)
    for coid, (status, reason) in led.states.items():
        if status == "rejected" and "random fault reject" in reason:
            hits["reject"].add(coid)
    for r in b.log_lines("exec"):
        m = re.match(r"order (\S+) on \S+: .*timed out \(random fault timeout\)", str(r.get("msg", "")))
        if m:
            hits["timeout"].add(m.group(1))
    return hits


def test_paper_venue_faults_while_trading_then_kill_switch(bot: Any, record: Any) -> None:
    b: Bot = bot(paper={"latency_ms": 1.0, "latency_jitter_ms": 1.0, "seed": 11, "reject_rate": RATE,
                        "never_fill_rate": RATE, "partial_fill_rate": RATE, "timeout_rate": RATE,
                        "late_fill_rate": RATE},
                 # a resting taker order is cancelled after 300 ms, so never-fill and late-fill legs
                 # resolve within a few seconds of trading
                 exec={"order_timeout_ms": 300})
    b.start(trades=2)
    b.wait("every fault kind hit at least twice", lambda: all(len(v) >= 2 for v in _hits(b).values()), 60,
           step=0.25)
    code, reply, err = b.kill_switch()  # the faults go on: orders resting, answers timing out
    assert code == 0, err
    assert b.stop() == 0, b.output()[-3000:]

    hits = _hits(b)
    problems, notes = b.check()
    led = b.ledgers()
    by_trade: dict[int, list[Any]] = defaultdict(list)
    for f in led.fills:
        tid = trade_of(f.client_order_id, str(b.run_id))
        if tid is not None:
            by_trade[tid].append(f)
    incidents: dict[int, Counter[str]] = defaultdict(Counter)
    for tid, kind in b.query("SELECT trade_id, kind FROM incidents WHERE trade_id IS NOT NULL"):
        incidents[int(tid)][kind] += 1
    statuses = dict(b.query("SELECT client_order_id, status FROM orders"))
    end_ns = max(f.ts_ns for f in led.fills)
    legging_alerts = len(alert_lines(b.data_dir, "legging"))
    for kind in KINDS:
        trades = {t for c in hits[kind] if (t := trade_of(c, str(b.run_id))) is not None}
        spans = [sp.stop_ns - sp.start_ns for t in trades for sp in naked_spans(by_trade[t], end_ns) if not sp.open]
        did = Counter(k for t in trades for k, n in incidents[t].items() for _ in range(n))
        journaled = Counter(statuses.get(c, "absent") for c in hits[kind])
        record(f"paper: {WHAT[kind]}",
               f"{len(hits[kind])} orders hit, journaled as {dict(journaled)}; on their {len(trades)} trades: "
               + ", ".join(f"{k} {n}" for k, n in sorted(did.items()))
               + f" (legging alerts in the run: {legging_alerts}); then perpbot-ctl kill: halted",
               max(spans, default=0) / 1e9, problems, notes=notes,
               recover_what="longest time a hit trade's legs were apart (venue fill stamps)")
    assert all(len(v) >= 2 for v in hits.values()), hits
    assert not problems, problems
    hedged = b.query("SELECT COUNT(*) FROM incidents WHERE kind IN ('hedge', 'unwind', 'leg_moved', 'naked_leg')")
    if hedged[0][0] and not legging_alerts:
        record("paper: legs hedged or unwound are alerted (README: alerts)",
               f"{hedged[0][0]} hedge/unwind/leg-moved/naked-leg incidents journaled, {legging_alerts} legging alerts",
               None, [NO_EVENT_ALERTS + " (no legging alert)"])
        pytest.xfail(NO_EVENT_ALERTS + " (no legging alert)")


@pytest.mark.skipif("drift" not in PaperConfig.__struct_fields__,
                    reason="paper.drift (scheduled position drift) is not in perpbot.config yet")
def test_paper_venue_reports_a_position_that_differs_from_ours(bot: Any, record: Any) -> None:
    b: Bot = bot(paper={"latency_ms": 1.0, "seed": 11,
                        "drift": [{"at_s": 4.0, "venue": "okx", "symbol": "BTC-PERP", "qty": "0.003"}]},
                 exec={"max_hold_ms": 400, "reconcile_interval_ms": 300})
    b.start(trades=2)
    found = b.wait("the mismatch journaled", lambda: b.query(
        "SELECT ts_ns, detail FROM incidents WHERE kind='position_mismatch'"), 30, step=0.05)
    detect_ns = int(found[0][0])
    drift = [f for f in b.ledgers().fills if f.client_order_id.startswith("external-okx-drift")]
    assert len(drift) == 1 and drift[0].qty == Decimal("0.003"), drift
    detect_s = (detect_ns - drift[0].ts_ns) / 1e9
    # the other symbols trade on; BTC-PERP opens nothing while paused
    b.wait("trades on the other symbols after the mismatch", lambda: b.query(
        "SELECT COUNT(*) FROM trades WHERE symbol != 'BTC-PERP' AND state='closed' AND open_ns > ?",
        (detect_ns,))[0][0] >= 2, 30)
    code, reply, err = b.kill_switch()
    assert code == 0, err
    assert b.stop() == 0, b.output()[-3000:]

    opened = b.query("SELECT client_order_id FROM orders WHERE purpose='open' AND symbol='BTC-PERP' "
                     "AND ts_decide_ns > ? AND status != 'not_sent'", (detect_ns,))
    problems, notes = b.check()
    # the drift is not ours to journal: by design the symbol stays paused until a person settles it,
    # so the fill missing from the journal and the differing position are the expected outcome here
    expected = [p for p in problems if "external-okx-drift" in p or p.startswith(
        "position differs from the venue's: okx BTC-PERP")]
    broken = [p for p in problems if p not in expected] + [f"opened on the paused symbol: {c}" for (c,) in opened]
    alerted = [m for m in alert_lines(b.data_dir, "position_mismatch") if "okx" in m and "BTC-PERP" in m]
    unalerted = [] if alerted else [NO_EVENT_ALERTS + " (no position_mismatch alert)"]
    agree = "positions agree: NO, by design" if expected else "positions agree"
    record("paper: reports a position that differs from ours (scheduled drift of +0.003 BTC on okx)",
           f"reconciliation found it {detect_s:.2f} s after the venue booked it: journaled (incident), "
           f"{'alerted' if alerted else 'NOT alerted'}, BTC-PERP paused ({len(opened)} opens after), the other "
           f"symbols traded on; {agree}: the drift is never adopted, the symbol stays paused until settled by hand",
           detect_s, broken + unalerted, notes=notes + expected,
           recover_what="time to detect (recovery needs a person)")
    assert expected, "the drift did not show as a mismatch"
    assert not broken, broken
    if unalerted:
        pytest.xfail(unalerted[0])
