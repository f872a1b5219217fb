"""SIGKILL of each process of a live run in turn: a feed, the scanner, exec (between orders and with
orders in flight), a monitor watching the run, and the launcher itself.

Each test trades on the demo market, kills, measures the time until the
process is back from observable state (the status over the control socket,
the logs), throws `perpbot-ctl kill` (during the outage where it lasts long
enough to aim at), stops the run and checks the invariants (`invariants`)
and that nothing is left behind (the `bot` fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Bot, mono_ns
from invariants import (
    alert_lines,
    check_clean,
    check_run,
    failed_process_reported,
    intent_log_orders,
    run_processes,
    trade_of,
)

pytestmark = pytest.mark.slow

#: a finding of this suite
NAKED_ACROSS_RESTART = ("FINDING: a leg an exec crash leaves naked stays naked until the restarted exec has "
                        "recovered and reports RUNNING, which can take longer than exec.legging_deadline_ms")

_MS = 1_000_000


def _first_log_ns(bot: Bot, name: str, text: str, after_ns: int = 0) -> int | None:
    """mono_ns of the first line of `<name>.jsonl` containing `text`, after `after_ns`."""
    for r in bot.log_lines(name):
        if text in str(r.get("msg", "")) and int(r.get("mono_ns", 0)) > after_ns:
            return int(r["mono_ns"])
    return None


def test_sigkill_feed_monitor_and_scanner_in_turn(bot: Any, record: Any, tmp_path: Path) -> None:
    b: Bot = bot().start()
    stale_ns = b.raw["scanner"]["stale_after_ms"] * _MS

    # -- a feed: restarted with backoff; its venue's quotes are stale meanwhile ---------------------
    old, t0 = b.sigkill("feed-okx")
    kill_ns = mono_ns()
    back_s = b.wait_back("feed-okx", old, t0)

    def quoting() -> bool:
        st = b.try_status()
        f = st["feeds"]["okx"] if st else None
        return bool(f and f["state"] == "CONNECTED" and f["last_quote_age_ms"] is not None
                    and f["last_quote_age_ms"] < 500)

    b.wait("okx quoting again", quoting)
    feed_s = time.monotonic() - t0
    # quotes are fresh again only from the new feed's connection on
    connected_ns = b.wait("the new feed's connection in its log",
                          lambda: _first_log_ns(b, "feed-okx", "okx: connected", kill_ns))
    st = b.status()
    assert st["processes"]["feed-okx"]["restarts"] == 1
    assert st["trading_state"] == "RUNNING"
    b.trade_on(2)

    # -- a monitor watching the run: nobody depends on it --------------------------------------------
    mon_out = tmp_path / "monitor.out"
    with mon_out.open("wb") as out:
        mon = subprocess.Popen([sys.executable, "-m", "perpbot.monitor", "--run", str(b.run_id), "--config",
                                str(b.cfg_path), "--interval", "0.3"], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        b.wait("the monitor's first summary line", lambda: mon_out.read_text().strip() != "")
        before = b.status()["processes"]
        os.kill(mon.pid, signal.SIGKILL)
        assert mon.wait(10) == -signal.SIGKILL
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()
    mon_trading_s = b.trade_on(2)
    # a monitor's death must not take the run's segments with it (a restarted process attaches to them)
    assert len(_segments(str(b.run_id))) == 2, _segments(str(b.run_id))
    after = b.status()["processes"]
    assert {n: p["restarts"] for n, p in after.items()} == {n: p["restarts"] for n, p in before.items()}
    assert all(p.pid != mon.pid for p in run_processes(str(b.run_id)))
    said = [ln for ln in b.output().splitlines() + [str(r.get("msg")) for r in b.log_lines("launcher")]
            if str(mon.pid) in ln or "monitor exited" in ln or ("ALERT" in ln and "monitor" in ln)]
    mon_reported = bool(said)

    # -- the scanner, and the kill switch while it is down ------------------------------------------
    passes_before = b.status()["scanner"]["passes"]
    old, t0 = b.sigkill("scanner")
    scan_kill_ns = mono_ns()
    code, reply, err = b.kill_switch()
    assert code == 0, err
    assert reply["state"] == "HALTED" and reply["command_to_cancelled_us"] is not None
    scan_s = b.wait_back("scanner", old, t0)
    restarted_ns = _first_log_ns(b, "scanner", "scanning", scan_kill_ns)
    assert restarted_ns is not None
    during_outage = b.halt_ns is not None and b.halt_ns < restarted_ns
    st = b.status()
    assert st["trading_state"] == "HALTED" and st["processes"]["scanner"]["restarts"] == 1
    # the restarted scanner's own counters (a heartbeat after the halt) against the end: nothing signalled
    b.wait("the restarted scanner's first counters",
           lambda: (s := b.try_status()) is not None and 0 < s["scanner"]["passes"] < passes_before)
    time.sleep(0.3)  # one heartbeat (200 ms) after we saw it
    opps = b.status()["scanner"]["opportunities"]
    time.sleep(1.0)  # let the market move while halted
    assert b.stop() == 0, b.output()[-3000:]

    summary = orjson.loads((b.data_dir / "summary.json").read_bytes())
    assert summary["scanner"]["opportunities"] == opps, "a halted scanner signalled"
    problems, notes = b.check(bad_quote_windows=[("okx", None, kill_ns + stale_ns, connected_ns, "stale")])
    for name in ("feed-okx", "scanner"):
        problems += [f"{name} not reported: {m}" for m in failed_process_reported(
            b.data_dir, name, launcher_output=b.out_path)]
    record("SIGKILL feed (okx)",
           f"restarted in {back_s:.1f} s, okx quoting again {feed_s:.1f} s after the kill; "
           + ("no order on okx while its quotes were stale; " if not problems else "")
           + "trading state RUNNING throughout, trades went on between the other venues",
           feed_s, problems, notes=notes)
    record("SIGKILL monitor (perpbot-monitor watching the run)",
           f"nothing else noticed: trading went on ({mon_trading_s:.1f} s for 2 more trades), no restart, "
           "the run's segments intact (the scanner restarted after it attached fine), nothing of it left; "
           + ("reported" if mon_reported else "not reported anywhere (the launcher does not supervise a "
                                              "monitor started on its own)"),
           "n/a (nothing depends on it)", problems, notes=notes)
    record("SIGKILL scanner + perpbot-ctl kill while it is down",
           f"restarted in {scan_s:.1f} s; kill {'landed during the outage' if during_outage else 'landed after'}"
           f" (halted {reply['command_to_halt_us']:.0f} us after the command, orders cancelled after "
           f"{reply['command_to_cancelled_us'] / 1000:.1f} ms); the restarted scanner sent nothing while halted",
           scan_s, problems, notes=notes)
    assert not problems, problems


def test_sigkill_exec_between_orders_and_kill_switch_while_it_is_down(bot: Any, record: Any) -> None:
    b: Bot = bot().start()
    b.wait("an open trade", lambda: b.query("SELECT 1 FROM trades WHERE state='open'"), step=0.005)
    led = b.ledgers()
    in_flight = [o.coid for o in led.orders if o.coid not in led.states]
    old, t0 = b.sigkill("exec")
    kill_ns = mono_ns()
    code, reply, err = b.kill_switch()  # exec is down: nobody can confirm the cancels
    down_at_halt = b.halt_ns is not None and not _first_log_ns(b, "exec", "exec running", kill_ns)

    def back() -> bool:
        st = b.try_status()
        return bool(st and st["processes"]["exec"]["pid"] != old and st["processes"]["exec"]["state"] == "RUNNING")

    b.wait("exec recovered", back)
    rec_s = time.monotonic() - t0
    b.wait("the launcher's recovery line", lambda: "exec recovered" in b.output())
    assert b.status()["trading_state"] == "HALTED"
    # the restarted exec answers the kill it missed: it cancels what rests and confirms
    b.wait("exec's cancel-all after the kill", lambda: _first_log_ns(b, "exec", "kill switch:", kill_ns), 20)
    assert "exec exited with code -9" in b.output() and "trading PAUSED until it has recovered" in b.output()
    assert b.stop() == 0, b.output()[-3000:]
    problems, notes = b.check(paused_windows=[(kill_ns, b.halt_ns or kill_ns)])
    problems += [f"exec not reported: {m}" for m in failed_process_reported(b.data_dir, "exec",
                                                                             launcher_output=b.out_path)]
    said = err.strip().removeprefix("perpbot-ctl: ") if code else "halted and confirmed"
    landed = "landed while exec was down" if down_at_halt else "landed"
    record("SIGKILL exec between orders + perpbot-ctl kill while it is down",
           f"trading PAUSED, exec restarted and rebuilt its open trades from the journal ({len(in_flight)} orders "
           f"in flight at the kill), positions reconciled; the kill {landed}: exit {code} in "
           f"{b.kill_took_s:.1f} s, '{said}'; the recovered exec then cancelled what rested and trading stayed HALTED",
           rec_s, problems, notes=notes, recover_what="SIGKILL to the new exec RUNNING")
    assert not problems, problems


class LedgerTail:
    """New order events in the paper venues' ledgers, read incrementally."""

    def __init__(self, paper_dir: Path) -> None:
        self.dir = paper_dir
        self.offsets: dict[Path, int] = {}

    def new_orders(self) -> list[dict[str, Any]]:
        out = []
        for p in self.dir.glob("*.jsonl") if self.dir.is_dir() else []:
            off = self.offsets.get(p, 0)
            with p.open("rb") as f:
                f.seek(off)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offsets[p] = off + end
            for line in data[:end].split(b"\n"):
                if b'"e":"order"' in line:
                    ev = orjson.loads(line)
                    ev["venue"] = p.stem
                    out.append(ev)
        return out


def test_sigkill_exec_mid_order(bot: Any, record: Any) -> None:
    # every venue call takes 150 ms: half before the venue acts, half before the answer is back
    b: Bot = bot(paper={"latency_ms": 150.0, "seed": 11}, exec={"max_hold_ms": 400, "reconcile_interval_ms": 1000})
    b.start(trades=1)
    tail = LedgerTail(b.data_dir / "paper")
    tail.new_orders()
    pid = b.pid("exec")
    # the venue has acted on an order (its ledger says so); its answer is still on the way back
    got = b.wait("an order the venue received", tail.new_orders, step=0.002)
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    kill_ns = mono_ns()
    killed = sorted({o["coid"] for o in got})
    answered = {c for (c,) in b.query("SELECT client_order_id FROM orders WHERE status NOT IN ('intent', 'unknown')")}
    unanswered = [c for c in killed if c not in answered]

    def recovered() -> bool:
        st = b.try_status()
        return bool(st and st["processes"]["exec"]["pid"] != pid and st["processes"]["exec"]["state"] == "RUNNING"
                    and st["trading_state"] == "RUNNING")

    b.wait("exec recovered and trading RUNNING again", recovered)
    rec_s = time.monotonic() - t0
    resumed_ns = b.state_changed_ns()
    started_ns = _first_log_ns(b, "exec", "recovered from the journal", kill_ns) or kill_ns
    running_ns = _first_log_ns(b, "exec", "exec running", kill_ns) or resumed_ns
    resolved = [r for r in b.log_lines("exec") if "was journaled but had no result" in str(r.get("msg"))
                and int(r.get("mono_ns", 0)) > kill_ns]
    # the orders killed in flight: the new exec asked the venue about each, never resending it
    statuses = dict(b.query("SELECT client_order_id, status FROM orders"))
    assert all(statuses.get(c) not in (None, "intent", "unknown") for c in killed), (killed, statuses)
    assert unanswered, "the kill came after the answers: nothing was in flight"
    b.trade_on(1)
    code, reply, err = b.kill_switch()
    assert code == 0, err
    assert b.stop() == 0, b.output()[-3000:]
    problems, notes = b.check(paused_windows=[(kill_ns, resumed_ns)])
    problems += [f"exec not reported: {m}" for m in failed_process_reported(b.data_dir, "exec",
                                                                             launcher_output=b.out_path)]
    killed_trades = {trade_of(c, str(b.run_id)) for c in killed}
    crash_naked = [p for p in problems if p.startswith("naked leg older") and any(
        f"trade {t}:" in p for t in killed_trades)]
    finding = (f"{NAKED_ACROSS_RESTART} (here {rec_s:.1f} s: the new exec needed {(running_ns - started_ns) / 1e9:.1f}"
               " s of venue reads after its recovery before it reported RUNNING)") if crash_naked else ""
    record("SIGKILL exec mid-order (venue acted, answer in flight; venue calls 150 ms)",
           f"{len(killed)} order(s) killed in flight, {len(unanswered)} without a journaled result; trading PAUSED; "
           f"the new exec asked the venue about {len(resolved)} pending intent(s) (never resent), journaled their "
           f"fills, took over the open trade(s) and levelled any naked leg; trading RUNNING again; later "
           "perpbot-ctl kill: halted",
           rec_s, problems, notes=notes, finding=finding, recover_what="SIGKILL to trading RUNNING again")
    assert [p for p in problems if p not in crash_naked] == [], problems
    if crash_naked:
        pytest.xfail(finding)


def _segments(run_id: str) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"perpbot-{run_id}-*"))


def test_sigkill_launcher_alone_then_with_its_group_and_the_next_launch_cleans_up(bot: Any, record: Any) -> None:
    # 1. the launcher alone: its children stop on their parent-death signal, and the resource tracker
    #    Python gives every process that creates shared memory unlinks the segments it held
    a: Bot = bot("alone").start()
    assert a.proc is not None and a.run_id is not None
    os.kill(a.proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    a.wait("every child gone", lambda: not run_processes(str(a.run_id)), exits=True, step=0.05)
    a_gone_s = time.monotonic() - t0
    a.proc.wait(10)  # reaped, as the shell that started it would
    a.wait("the segments unlinked", lambda: not _segments(str(a.run_id)), 10, exits=True, step=0.05)
    assert "stopped:" in " ".join(str(r.get("msg")) for r in a.log_lines("exec")), "exec did not drain"
    a_left = check_clean(a.run_id, a.run_root)
    problems, notes = a.check()

    # 2. the launcher's whole process group at once (kill -9 -PGID, a container kill): nobody cleans up
    b: Bot = bot("group")
    b.raw = a.raw  # the same config: the same run root and data folder
    b.start()
    assert b.proc is not None and b.run_id is not None
    os.killpg(b.proc.pid, signal.SIGKILL)
    t1 = time.monotonic()
    b.proc.wait(10)
    b.wait("every child gone", lambda: not run_processes(str(b.run_id)), exits=True, step=0.05)
    b_gone_s = time.monotonic() - t1
    b_left = check_clean(b.run_id, b.run_root)
    assert _segments(b.run_id) and any("run directory" in x for x in b_left), b_left
    # exec died with its orders: the journal holds the truth only after a recovery, which a new
    # run does not do for an old run's journal (it opens its own), so the old run's journal may lag
    # its venues by the orders in flight at the kill
    b_problems, b_notes = b.check()
    in_flight = intent_log_orders(b.journal) | {c for (c,) in b.query(
        "SELECT client_order_id FROM orders WHERE status IN ('intent', 'unknown')")}
    unsettled = ("fill in a venue's ledger missing from the journal", "order whose outcome was never established",
                 "order in the intent log only", "position differs from the venue's", "naked leg older")
    # with orders in flight at the kill, these follow from nobody recovering that journal: a finding,
    # reported in the table; anything else is a broken invariant
    b_unexplained = [p for p in b_problems if not (in_flight and p.startswith(unsettled))]

    # 3. the next launch removes what both left, names them in its log and alerts
    c: Bot = bot("next")
    c.raw = a.raw
    c.start(trades=1)
    t_clean = time.monotonic() - t1
    after = {r: check_clean(r, a.run_root) for r in (a.run_id, b.run_id)}
    # the launch after each removed what the one before left
    said = {r: [str(x.get("msg")) for x in nxt.log_lines("launcher") if r in str(x.get("msg"))]
            for r, nxt in ((a.run_id, b), (b.run_id, c))}
    alerts = [m for m in alert_lines(c.data_dir, "process_crash") if b.run_id in m and "launcher" in m]
    assert c.stop() == 0, c.output()[-3000:]
    for r, left in after.items():
        problems += [f"after the next launch, of run {r}: {x}" for x in left]
    if not said[b.run_id] or b.run_id not in c.output():
        problems.append("the next launch's log or output does not name the dead launcher's run")
    if not said[a.run_id]:
        problems.append("the next launch's log does not mention the run directory it removed")
    if not alerts:
        problems.append("no process_crash alert naming the dead launcher")
    problems += [f"next run: {p}" for p in check_run(Path(c.raw["run"]["data_dir"]), str(c.run_id),
                                                     legging_deadline_ms=c.legging_deadline_ms,
                                                     round_trip_ms=c.round_trip_ms)]
    a_open = a.query("SELECT COUNT(*) FROM trades WHERE state IN ('opening', 'open')")[0][0]
    record("SIGKILL launcher",
           f"every child stopped on its parent-death signal within {a_gone_s:.1f} s (exec drained and closed "
           f"its journal), Python's resource tracker unlinked the segments; the run directory stayed until the "
           f"next launch removed it (logged); {a_open} trade(s) stay open in the dead run's journal: a new run "
           "does not take them over",
           a_gone_s, problems + [f"left before the next launch: {x}" for x in a_left
                                 if "run directory" not in x], notes=notes)
    record("SIGKILL launcher's whole process group (kill -9 -PGID)",
           f"all gone at once ({b_gone_s:.1f} s); segments and run directory left; the next launch removed them, "
           "logged it and raised a process_crash alert naming the dead launcher's run and pid",
           t_clean, b_problems + problems, notes=b_notes,
           finding=(f"{len(in_flight)} order(s) in flight at the kill stay unsettled in the dead run's journal: "
                    "only an exec recovery settles them, and no later run recovers another run's journal")
           if b_problems else "")
    assert not problems, problems
    assert not b_unexplained, b_problems
