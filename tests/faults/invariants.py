"""The invariants of a PerpBot run, checked from what the run leaves behind.

    problems = check_run(data_dir, run_id, legging_deadline_ms=2000, halted_after_ns=halt_ns)
    leftovers = check_clean(run_id, run_root)
    missing = failed_process_reported(data_dir / run_id, "feed-okx", launcher_output=log)

Each returns a list of plain sentences, one per broken invariant (empty: all
held). Sources: the journal (`journal.sqlite`), the paper venues' own account
records (`paper/<venue>.jsonl`, written by the venue before it answers), the
run's logs and `summary.json`, `/dev/shm` and the process table.

What `check_run` checks:

- no fill lost or invented: every fill in the venues' ledgers is in the journal
  and every journaled fill is in a ledger (id, order, venue, symbol, side,
  quantity, price, fee, exactly);
- nothing sent unjournaled, nothing doubled: every order a venue received is in
  the journal (SQLite, or the intent log written before each send; an order
  found only in the intent log is reported too, as unsettled); no client order
  id reached a venue twice (or two venues); no order journaled `not_sent`
  reached a venue; client order ids belong to the run and are unique; within one
  decision (trade, purpose, decision stamp) no venue and side appears twice;
  every order's outcome was established (no `intent` or `unknown` left);
- every finished (closed or failed) trade's fills net to zero on every venue;
- positions agree: per venue and symbol, the journal's position (fills and
  funding) equals the one the venue's ledger gives (quantity, average price,
  realized PnL, fees);
- no naked leg older than the legging deadline: per trade, from the venues'
  fill stamps (the moment the venue booked each fill, the monotonic clock every
  process shares), every stretch during which the trade's fills do not net to
  zero across venues lasts at most `legging_deadline_ms` plus `round_trip_ms`
  (the venue round trip before exec can know a leg filled). A stretch still open
  at the end of the run is measured to the last stamp the files hold; one still
  open when the kill switch was thrown is measured to the halt, because a halted
  exec by design sends nothing, hedges included: if it was younger than the
  deadline then it goes to `notes`, not to the problems;
- nothing sent after the kill switch: no order decided at or after
  `halted_after_ns` was sent (the gate reads the flag just before dispatch, so
  such an order must be journaled `not_sent`);
- nothing opened while paused: no opening order decided inside `paused_windows`;
- nothing sent on a quote known to be bad: no order decided on a venue (and
  symbol, if given) inside one of `bad_quote_windows` (venue, symbol or None,
  start, end, what): spans during which the caller knows that venue's quotes
  were older than `scanner.stale_after_ms`, frozen, or crossed.

What the files cannot show, so callers must bring it: the quote stamp an order
was decided on is not journaled (only its price), so "no order on a stale
quote" is checked only against windows the caller knows to be bad; an
opportunity's detection stamp is not journaled either (see
`opportunity_ages`, fed from the event stream); trading-state changes
(PAUSED/RUNNING) carry no stamps in any file, so paused windows come from the
caller's own observation.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psutil

from perpbot.exec.positions import FLAT, Position, add_funding, apply_fill
from perpbot.exec.venues.base import Fill, FundingPayment, Side
from perpbot.exec.venues.paper import read_ledger

SHM = Path("/dev/shm")
_MS = 1_000_000
#: at most this many examples per kind of problem, then a count
_EXAMPLES = 5
#: order statuses that mean the outcome was never established
UNSETTLED = ("intent", "unknown")


def run_data_dir(data_dir: Path, run_id: str) -> Path:
    """The run's own folder: `data_dir/run_id`, or `data_dir` itself when it already is one."""
    d = Path(data_dir)
    return d / run_id if (d / run_id).is_dir() else d


def _query(db: Path, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


@dataclass(frozen=True)
class LedgerOrder:
    """An order as a paper venue received it (`"e": "order"` in its ledger)."""

    coid: str
    venue: str
    symbol: str
    side: str
    ts_ns: int
    never_fill: bool
    late_fill: bool
    note: str


@dataclass
class Ledgers:
    """Everything the paper venues' account records hold."""

    fills: list[Fill]
    funding: list[Any]
    orders: list[LedgerOrder]
    #: client order id -> (status, reason) of its last state event
    states: dict[str, tuple[str, str]]


def read_ledgers(paper_dir: Path) -> Ledgers:
    """Fills and funding through `paper.read_ledger`; orders and their states read here."""
    out = Ledgers([], [], [], {})
    for path in sorted(paper_dir.glob("*.jsonl")) if paper_dir.is_dir() else []:
        fills, funding = read_ledger(path)
        out.fills += fills
        out.funding += funding
        venue = path.stem
        for line in path.read_bytes().split(b"\n"):
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the empty tail, or a line torn by a crash
            if ev.get("e") == "venue":
                venue = ev["venue"]
            elif ev.get("e") == "order":
                out.orders.append(LedgerOrder(ev["coid"], venue, ev["symbol"], ev["side"], int(ev["ts_ns"]),
                                              bool(ev.get("never_fill")), bool(ev.get("late_fill")),
                                              str(ev.get("note") or "")))
            elif ev.get("e") == "state":
                out.states[ev["coid"]] = (ev["status"], str(ev.get("reason") or ""))
    return out


def trade_of(coid: str, run_id: str) -> int | None:
    """The trade id in a client order id `<run_id>-<trade>-<purpose>-<leg>[-n]`; None if not the run's."""
    if not coid.startswith(f"{run_id}-"):
        return None
    head = coid[len(run_id) + 1:].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _some(items: Sequence[str], what: str) -> list[str]:
    if not items:
        return []
    shown = "; ".join(items[:_EXAMPLES])
    more = f" (and {len(items) - _EXAMPLES} more)" if len(items) > _EXAMPLES else ""
    return [f"{what}: {shown}{more}"]


def _fill_key(f: Fill) -> tuple[str, ...]:
    return (f.fill_id, f.client_order_id, f.venue, f.symbol, f.side.value, str(f.qty), str(f.price), str(f.fee))


def _positions(fills: Iterable[Fill], funding: Iterable[Any]) -> dict[tuple[str, str], Position]:
    book: dict[tuple[str, str], Position] = {}
    for f in fills:
        key = (f.venue, f.symbol)
        book[key] = apply_fill(book.get(key, FLAT), f.side, f.qty, f.price, f.fee)
    for p in funding:
        key = (p.venue, p.symbol)
        book[key] = add_funding(book.get(key, FLAT), p.amount)
    return book


def check_run(data_dir: Path, run_id: str, *, legging_deadline_ms: float,
              halted_after_ns: int | None = None,
              paused_windows: Sequence[tuple[int, int]] = (),
              bad_quote_windows: Sequence[tuple[str, str | None, int, int, str]] = (),
              round_trip_ms: float = 0.0,
              notes: list[str] | None = None) -> list[str]:
    """Every invariant the run's files can show (module docstring); [] when all held.

    `notes` (if given) receives what is worth knowing but breaks nothing.
    """
    run_dir = run_data_dir(Path(data_dir), run_id)
    db = run_dir / "journal.sqlite"
    if not db.exists():
        return [f"no journal in {run_dir}"]
    notes = notes if notes is not None else []
    problems: list[str] = []
    led = read_ledgers(run_dir / "paper")
    jfills = [Fill(r["fill_id"], r["client_order_id"], r["venue"], r["symbol"], Side(r["side"]),
                   Decimal(r["qty"]), Decimal(r["price"]), Decimal(r["fee"]), int(r["ts_ns"]))
              for r in _query(db, "SELECT * FROM fills ORDER BY rowid")]
    orders = _query(db, "SELECT * FROM orders ORDER BY rowid")
    trades = {int(r["trade_id"]): r for r in _query(db, "SELECT * FROM trades")}
    jfunding = _query(db, "SELECT * FROM funding")

    # -- no fill lost, none invented ------------------------------------------------------------
    jset = {_fill_key(f) for f in jfills}
    lset = {_fill_key(f) for f in led.fills}
    problems += _some([f"{k[0]} on {k[2]} ({k[4]} {k[5]} {k[3]} at {k[6]})" for k in sorted(lset - jset)],
                      "fill in a venue's ledger missing from the journal")
    problems += _some([f"{k[0]} on {k[2]}" for k in sorted(jset - lset)],
                      "fill in the journal that no venue booked")

    # -- nothing unjournaled, nothing doubled -----------------------------------------------------
    jorders = {r["client_order_id"]: r for r in orders}
    logged = intent_log_orders(db)  # durable before the send, not yet in SQLite: a dead exec's last orders
    seen: dict[str, list[str]] = defaultdict(list)
    for o in led.orders:
        seen[o.coid].append(o.venue)
    problems += _some([f"{c} ({', '.join(v)})" for c, v in seen.items() if len(v) > 1],
                      "client order id received more than once by the venues")
    problems += _some([f"{c} on {v[0]}" for c, v in seen.items() if c not in jorders and c not in logged],
                      "order a venue received that the journal never recorded")
    problems += _some([f"{c}" for c in logged if c not in jorders],
                      "order in the intent log only (exec died before SQLite had it; only a recovery settles it)")
    problems += _some([f"{c} on {r['venue']}" for c, r in jorders.items() if r["status"] == "not_sent" and c in seen],
                      "order journaled not_sent that a venue received")
    problems += _some([f"{c} ({r['status']})" for c, r in jorders.items() if r["status"] in UNSETTLED],
                      "order whose outcome was never established")
    problems += _some([c for c in jorders if trade_of(c, run_id) != int(jorders[c]["trade_id"])],
                      "client order id that does not name its run and trade")
    per_decision: dict[tuple[int, str, int], list[tuple[str, str]]] = defaultdict(list)
    for r in orders:
        per_decision[(int(r["trade_id"]), r["purpose"], int(r["ts_decide_ns"] or 0))].append((r["venue"], r["side"]))
    problems += _some([f"trade {k[0]} {k[1]} at {k[2]}: {legs}" for k, legs in per_decision.items()
                       if len(legs) != len(set(legs))], "one decision sent the same venue and side twice")

    # -- finished trades are flat on every venue ----------------------------------------------------
    left: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for f in led.fills:
        tid = trade_of(f.client_order_id, run_id)
        if tid is not None and tid in trades and trades[tid]["state"] in ("closed", "failed"):
            left[(tid, f.venue)] += f.side.sign * f.qty
    problems += _some([f"trade {t} holds {q} on {v}" for (t, v), q in sorted(left.items()) if q],
                      "finished trade not flat")

    # -- positions agree with the venues' ----------------------------------------------------------
    jbook = _positions(jfills, [FundingPayment(r["payment_id"], r["venue"], r["symbol"], Decimal(r["amount"]),
                                               int(r["ts_ms"])) for r in jfunding])
    lbook = _positions(led.fills, led.funding)
    problems += _some([f"{v} {s}: journal {jbook.get((v, s), FLAT).qty}, venue {lbook.get((v, s), FLAT).qty}"
                       + ("" if jbook.get((v, s), FLAT).qty != lbook.get((v, s), FLAT).qty else
                          f" (avg/realized/fees differ: {jbook.get((v, s), FLAT)} vs {lbook.get((v, s), FLAT)})")
                       for v, s in sorted(set(jbook) | set(lbook))
                       if jbook.get((v, s), FLAT) != lbook.get((v, s), FLAT)],
                      "position differs from the venue's")

    # -- no naked leg older than the legging deadline ------------------------------------------------
    stamps = [f.ts_ns for f in led.fills] + [o.ts_ns for o in led.orders]
    stamps += [int(r["ts_decide_ns"] or 0) for r in orders] + [int(t["close_ns"] or 0) for t in trades.values()]
    end_ns = max(stamps, default=0)
    limit_ns = int((legging_deadline_ms + round_trip_ms) * _MS)
    by_trade: dict[int, list[Fill]] = defaultdict(list)
    for f in led.fills:
        tid = trade_of(f.client_order_id, run_id)
        if tid is not None:
            by_trade[tid].append(f)
    naked: list[str] = []
    for tid, fills in sorted(by_trade.items()):
        for span in naked_spans(fills, end_ns):
            start, stop = span.start_ns, span.stop_ns
            if span.open and halted_after_ns is not None:
                if start >= halted_after_ns:
                    notes.append(f"trade {tid}: {span.qty} naked from a fill {(start - halted_after_ns) / _MS:.0f} ms "
                                 "after the kill switch (an order filling as it was cancelled), never hedged: "
                                 "a halted exec sends nothing")
                    continue
                age = halted_after_ns - start
                if age <= limit_ns:
                    notes.append(f"trade {tid}: {span.qty} naked when the kill switch was thrown, "
                                 f"{age / _MS:.0f} ms after it began; a halted exec sends nothing, hedges "
                                 "included, so it stays naked")
                    continue
                stop = halted_after_ns
            if stop - start > limit_ns:
                what = "still naked at the end" if span.open else "levelled"
                naked.append(f"trade {tid}: {span.qty} naked for {(stop - start) / _MS:.0f} ms ({what})")
    problems += _some(naked, f"naked leg older than the legging deadline ({legging_deadline_ms:g} ms"
                             + (f" + {round_trip_ms:g} ms round trip" if round_trip_ms else "") + ")")

    # -- nothing sent while halted, paused, or on a stale quote ----------------------------------------
    if halted_after_ns is not None:
        problems += _some([f"{r['client_order_id']} ({r['purpose']}, {r['status']}) decided "
                           f"{(int(r['ts_decide_ns']) - halted_after_ns) / _MS:.1f} ms after the halt"
                           for r in orders if int(r["ts_decide_ns"] or 0) >= halted_after_ns
                           and r["status"] != "not_sent"], "order sent after the kill switch")
    for a, b in paused_windows:
        problems += _some([r["client_order_id"] for r in orders if r["purpose"] == "open"
                           and a <= int(r["ts_decide_ns"] or 0) <= b and r["status"] != "not_sent"],
                          "opening order sent while trading was paused")
    for venue, symbol, a, b, what in bad_quote_windows:
        problems += _some([f"{r['client_order_id']} ({r['purpose']}, {(int(r['ts_decide_ns']) - a) / _MS:.0f} ms "
                           "into the window)" for r in orders if r["venue"] == venue
                           and (symbol is None or r["symbol"] == symbol)
                           and a <= int(r["ts_decide_ns"] or 0) <= b and r["status"] != "not_sent"],
                          f"order sent on {venue}{' ' + symbol if symbol else ''} while its quotes were {what}")
    return problems


def intent_log_orders(db: Path) -> set[str]:
    """Client order ids in the journal's intent log (`journal.sqlite.intents`): written before each
    send, emptied once SQLite holds them; what is there after a run was never absorbed by a recovery."""
    path = db.with_name(db.name + ".intents")
    out: set[str] = set()
    if not path.exists():
        return out
    for line in path.read_bytes().split(b"\n"):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        out.update(str(o[0]) for o in rec.get("o", ()))
    return out


@dataclass(frozen=True)
class NakedSpan:
    """A stretch during which one trade's fills did not net to zero across its venues."""

    start_ns: int
    stop_ns: int  # the levelling fill's stamp, or the end of the files while `open`
    qty: Decimal  # the largest net quantity during the stretch
    open: bool  # never levelled


def naked_spans(fills: Sequence[Fill], end_ns: int) -> list[NakedSpan]:
    """The stretches during which one trade's fills (across its venues, by the venues' stamps) do not
    net to zero; one never levelled stops at `end_ns`."""
    spans: list[NakedSpan] = []
    net = Decimal(0)
    start: int | None = None
    peak = Decimal(0)
    for f in sorted(fills, key=lambda f: f.ts_ns):
        net += f.side.sign * f.qty
        if net and start is None:
            start, peak = f.ts_ns, abs(net)
        elif net:
            peak = max(peak, abs(net))
        elif start is not None:
            spans.append(NakedSpan(start, f.ts_ns, peak, False))
            start = None
    if start is not None:
        spans.append(NakedSpan(start, max(end_ns, start), peak, True))
    return spans


def opportunity_ages(data_dir: Path, run_id: str, detected_ns: Mapping[int, int]) -> tuple[list[int], int]:
    """Age (ns) at decision of each opening decision whose opportunity's detection stamp is known,
    and how many opening decisions had no known stamp (`detected_ns`: opp_id -> ts_detect_ns, e.g.
    from ARBITRAGE_OPPORTUNITY_FOUND events)."""
    db = run_data_dir(Path(data_dir), run_id) / "journal.sqlite"
    ages: list[int] = []
    unknown = 0
    for r in _query(db, "SELECT opp_id, MIN(ts_decide_ns) AS t FROM orders WHERE purpose='open' "
                        "AND status != 'not_sent' GROUP BY trade_id"):
        det = detected_ns.get(int(r["opp_id"]))
        if det is None:
            unknown += 1
        else:
            ages.append(int(r["t"]) - det)
    return ages, unknown


# -- after the run: nothing left behind -------------------------------------------------------------


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.Error, OSError):
        return ""


def run_processes(run_id: str) -> list[psutil.Process]:
    """Live (not zombie) processes of a run: its children name the run directory, and the
    launcher's pid ends the run id."""
    out = []
    launcher_pid = int(run_id.rsplit("-", 1)[-1]) if run_id.rsplit("-", 1)[-1].isdigit() else None
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        cmd = _cmdline(p)
        if "perpbot" not in cmd:
            continue
        if run_id in cmd or (p.pid == launcher_pid and ("perpbot.launch" in cmd or "perpbot-launch" in cmd)):
            out.append(p)
    return out


def check_clean(run_id: str, run_root: Path | None = None) -> list[str]:
    """No shared-memory segment, no process and (given `run_root`) no run directory of the run left."""
    problems = []
    segs = sorted(p.name for p in SHM.glob(f"perpbot-{run_id}-*")) if SHM.is_dir() else []
    if segs:
        problems.append(f"shared-memory segments left: {', '.join(segs)}")
    procs = run_processes(run_id)
    if procs:
        problems.append("processes left: " + ", ".join(f"{p.pid} ({_cmdline(p)[:80]})" for p in procs))
    if run_root is not None and (Path(run_root) / run_id).exists():
        problems.append(f"run directory left: {Path(run_root) / run_id}")
    return problems


# -- the failed process is named ----------------------------------------------------------------------


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log file and its rotated predecessors."""
    out = []
    for p in sorted(path.parent.glob(path.name + "*")):  # rotated files too
        for line in p.read_bytes().split(b"\n"):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return out


def alert_lines(run_dir: Path, kind: str) -> list[str]:
    """The messages of the launcher's alert log lines of one kind."""
    return [str(r.get("msg", "")) for r in jsonl(run_dir / "launcher.jsonl")
            if str(r.get("msg", "")).startswith("ALERT") and f" {kind}: " in str(r.get("msg", ""))]


def failed_process_reported(data_dir: Path, name: str, *, launcher_output: Path | None = None) -> list[str]:
    """Where a crashed child is NOT named: [] when the status (`summary.json`: its restarts counted),
    the launcher's output (or its log) and an alert log line (`process_crash`) all name it.

    `data_dir` is the run's own folder.
    """
    run_dir = Path(data_dir)
    missing = []
    summary = run_dir / "summary.json"
    if not summary.exists():
        missing.append("status: no summary.json")
    else:
        procs = orjson.loads(summary.read_bytes()).get("processes", {})
        rec = procs.get(name)
        if rec is None:
            missing.append(f"status: no process named {name!r} (has {', '.join(procs)})")
        elif int(rec.get("restarts", 0)) < 1 and rec.get("state") not in ("FAULTED", "DEGRADED"):
            missing.append(f"status: {name} shows no restart and no fault ({rec})")
    said = f"{name} exited with code"
    out_ok = launcher_output is not None and launcher_output.exists() and said in launcher_output.read_text(
        errors="replace")
    log_ok = any(said in str(r.get("msg", "")) for r in jsonl(run_dir / "launcher.jsonl"))
    if not (out_ok or log_ok):
        missing.append(f"launcher output and log: no line saying {said!r}")
    if not any(f" {name} " in f" {m} " or f"{name}:" in m or f" {name} exited" in m
               for m in alert_lines(run_dir, "process_crash")):
        missing.append(f"alerts: no process_crash alert line naming {name}")
    return missing
