"""`kill -9` of the exec process in a real demo run: the launcher pauses, restarts it, it recovers.

Real processes, shared memory, sockets and SQLite, as in test_end_to_end.
Waits are deadline-bounded polls on observable state, never fixed timings.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import yaml
from kit import example_raw

from perpbot.config import parse_config
from perpbot.shm import StatusBoard
from perpbot.shm.layout import ProcState, TradingState, segment_names

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    run_root = Path(tempfile.mkdtemp(prefix="pb"))  # ipc:// paths must stay short
    raw = example_raw()
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp_path / "data"))
    raw["demo"].update(dislocations_per_s=6.0, dislocation_bps=40)
    # trades close only at max hold: an open trade is there to be caught by the kill
    raw["exec"].update(max_hold_ms=3000, take_profit_bps=1000.0)
    raw["scanner"].update(core=(os.cpu_count() or 1) - 1)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    yield {"config": cfg_path, "run_root": run_root, "data": tmp_path / "data", "raw": raw}
    shutil.rmtree(run_root, ignore_errors=True)


def _ctl(cfg: Path, *args: str) -> Any:
    r = subprocess.run([sys.executable, "-m", "perpbot.ctl", "--config", str(cfg), "--json", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return orjson.loads(r.stdout)


def _wait(what: str, cond: Any, proc: subprocess.Popen[bytes], log: Path, step_s: float = 0.1) -> Any:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        if proc.poll() is not None:
            pytest.fail(f"launcher exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()}")
        time.sleep(step_s)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")


def _query(data: Path, sql: str) -> list[tuple[Any, ...]]:
    dbs = list(data.glob("*/journal.sqlite"))
    if not dbs:
        return []
    con = sqlite3.connect(dbs[0])
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []  # schema not there yet
    finally:
        con.close()


def _net(data: Path, where: str = "") -> dict[tuple[str, str], Decimal]:
    net: dict[tuple[str, str], Decimal] = {}
    for venue, symbol, side, qty in _query(
            data, f"SELECT f.venue, f.symbol, f.side, f.qty FROM fills f "
                  f"JOIN orders o USING (client_order_id) {where} ORDER BY f.rowid"):
        q = Decimal(qty) if side == "buy" else -Decimal(qty)
        net[(venue, symbol)] = net.get((venue, symbol), Decimal(0)) + q
    return {k: v for k, v in net.items() if v}


def _positions_agree(cfg: Path, data: Path) -> bool:
    # the journal is read before and after the status: equal reads bracket a settled status
    before = _net(data)
    shown = _ctl(cfg, "status")["positions"]
    after = _net(data)
    if before != after:
        return False
    flat_shown = {(v, s): q for v, per in shown.items() for s, q in per.items()}
    return set(flat_shown) == set(after) and all(
        abs(flat_shown[k] - float(q)) < 1e-9 for k, q in after.items())


def test_exec_killed_with_open_trades_is_restarted_recovers_and_closes_them(env: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    cfg, data = env["config"], env["data"]
    log = tmp_path / "launch.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "perpbot.launch", "--config", str(cfg), "--duration", "300"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    status: StatusBoard | None = None
    try:
        _wait("all processes running", lambda: b"all processes running" in log.read_bytes(), proc, log)
        _wait("an open trade", lambda: _query(data, "SELECT 1 FROM trades WHERE state='open'"),
              proc, log, 0.02)
        st = _ctl(cfg, "status")
        run_id, old_pid = st["run_id"], st["processes"]["exec"]["pid"]
        assert st["trading_state"] == "RUNNING"
        pcfg = parse_config(env["raw"])
        status = StatusBoard.attach(segment_names(run_id)[1], pcfg.venue_names, pcfg.symbol_names)
        slot = status.proc_slot("exec")
        assert slot is not None

        os.kill(old_pid, signal.SIGKILL)
        _wait("the old exec gone", lambda: not psutil.pid_exists(old_pid)
              or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE, proc, log, 0.01)
        # the journal as the dead exec left it
        open_at_crash = {t for (t,) in _query(data, "SELECT trade_id FROM trades "
                                                    "WHERE state IN ('opening', 'open')")}
        intents_at_crash = {c for (c,) in _query(data, "SELECT client_order_id FROM orders "
                                                       "WHERE status='intent'")}
        coids_at_crash = {c for (c,) in _query(data, "SELECT client_order_id FROM orders")}
        assert open_at_crash

        # watch the trading state from the segment itself until the new exec is back
        seen: list[TradingState] = []
        end = time.monotonic() + DEADLINE_S
        while True:
            ts = status.trading_state()  # read first: RUNNING again implies exec was back before
            rec = status.procs[slot]
            back = int(rec["pid"]) != old_pid and int(rec["state"]) == ProcState.RUNNING
            if not seen or seen[-1] is not ts:
                seen.append(ts)
            if TradingState.PAUSED in seen and ts is TradingState.RUNNING:
                assert back, "trading RUNNING again before the new exec reported RUNNING"
                break
            assert time.monotonic() < end, f"states seen {seen}:\n{log.read_text()}"
            assert proc.poll() is None, log.read_text()
            time.sleep(0.002)
        assert TradingState.PAUSED in seen
        new_pid = int(status.procs[slot]["pid"])
        assert int(status.procs[slot]["restarts"]) == 1
        status.close()
        status = None
        out = log.read_text()
        assert "exec exited with code -9" in out and "trading PAUSED until it has recovered" in out
        _wait("the launcher's recovery line", lambda: "exec recovered" in log.read_text(), proc, log)
        assert "trading RUNNING again" in log.read_text()
        st = _ctl(cfg, "status")
        assert st["trading_state"] == "RUNNING" and st["processes"]["exec"]["pid"] == new_pid

        # the trades open at the crash are closed by the new exec
        def closed_by_new_exec() -> bool:
            rows = _query(data, "SELECT trade_id FROM trades WHERE state IN ('opening', 'open') "
                                f"AND trade_id IN ({','.join(map(str, open_at_crash))})")
            return not rows

        _wait("trades open at the crash closed", closed_by_new_exec, proc, log)
        states = dict(_query(data, "SELECT trade_id, state FROM trades "
                                   f"WHERE trade_id IN ({','.join(map(str, open_at_crash))})"))
        assert set(states.values()) <= {"closed", "failed"}, states
        # intents the crash left were resolved without a resend
        resolved = dict(_query(data, "SELECT client_order_id, status FROM orders"))
        for c in intents_at_crash:
            assert resolved[c] != "intent", c
        _wait("status positions equal to the journal's fills", lambda: _positions_agree(cfg, data),
              proc, log, 0.05)
        _wait("trading after the restart", lambda: _query(
            data, f"SELECT 1 FROM trades WHERE trade_id > {max(open_at_crash)} AND state='closed'"),
            proc, log)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if status is not None:
            status.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # no order twice, none retried under a new id after its intent was journaled
    orders = _query(data, "SELECT client_order_id, trade_id, purpose, side, status FROM orders")
    ids = [o[0] for o in orders]
    assert len(ids) == len(set(ids)) and coids_at_crash <= set(ids)
    assert all(o[4] != "intent" for o in orders)
    fills_per_order = _query(data, "SELECT client_order_id, COUNT(*) FROM fills GROUP BY client_order_id")
    assert all(n == 1 for _, n in fills_per_order)  # paper IOC: one fill per order, never refilled
    # every closed or failed trade is flat; what is still open explains every position
    for (tid,) in _query(data, "SELECT trade_id FROM trades WHERE state IN ('closed', 'failed')"):
        assert _net(data, f"WHERE o.trade_id = {tid}") == {}, tid
    still_open = [t for (t,) in _query(data, "SELECT trade_id FROM trades WHERE state IN ('opening','open')")]
    explained: dict[tuple[str, str], Decimal] = {}
    for tid in still_open:
        for k, q in _net(data, f"WHERE o.trade_id = {tid}").items():
            explained[k] = explained.get(k, Decimal(0)) + q
    assert {k: v for k, v in explained.items() if v} == _net(data)
    # nothing left behind
    assert not list(Path("/dev/shm").glob(f"perpbot-{run_id}-*"))
    assert not (env["run_root"] / run_id).exists()
    left = [p for p in psutil.process_iter(["cmdline"])
            if run_id in " ".join(p.info["cmdline"] or []) and "perpbot" in " ".join(p.info["cmdline"] or [])]
    assert left == []
