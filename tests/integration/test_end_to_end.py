"""The whole path, for real: perpbot-launch on the demo market, perpbot-ctl, the journal.

Real processes, shared memory, ZeroMQ sockets, loopback websockets and SQLite.
Waits are deadline-bounded polls on observable state, never fixed timings.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import yaml
import zmq
from kit import example_raw

from perpbot import bus
from perpbot.events import SEED_EVENT_TYPES, check_event

pytestmark = pytest.mark.slow

START_DEADLINE_S = 60
TRADE_DEADLINE_S = 60


@pytest.fixture
def run_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    # ipc:// paths are limited to ~107 bytes: keep the run root short
    run_root = Path(tempfile.mkdtemp(prefix="pb"))
    raw = example_raw()
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp_path / "data"))
    raw["demo"].update(dislocations_per_s=6.0, dislocation_bps=40)
    raw["exec"].update(max_hold_ms=400)
    raw["scanner"].update(core=(os.cpu_count() or 1) - 1)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    yield {"config": cfg_path, "run_root": run_root, "data": tmp_path / "data"}
    shutil.rmtree(run_root, ignore_errors=True)


def _launch(cfg: Path, duration: float, log: Path, new_session: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "perpbot.launch", "--config", str(cfg), "--duration", str(duration)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=new_session,
    )


def _ctl(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perpbot.ctl", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=30)


def _wait_for(what: str, cond: Any, deadline_s: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        if proc.poll() is not None:
            pytest.fail(f"launcher exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")


class EventCollector(threading.Thread):
    """Subscribes to the run's event socket and keeps every event it receives."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sub = bus.event_subscriber(self.ctx, bus.endpoints(run_dir))
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sub.poll(100):
                self.events.append(bus.decode_event(self.sub.recv_multipart()))

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sub.close()
        self.ctx.term()


def _heartbeats(events: EventCollector) -> set[str]:
    return {p["component_name"] for k, p in list(events.events) if k == "HEARTBEAT"}


def _journal(data: Path) -> Path | None:
    found = list(data.glob("*/journal.sqlite")) if data.exists() else []
    return found[0] if found else None


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _closed_trades(data: Path) -> int:
    db = _journal(data)
    if db is None:
        return 0
    try:
        return _query(db, "SELECT COUNT(*) FROM trades WHERE state = 'closed'")[0][0]
    except sqlite3.OperationalError:
        return 0  # journal being created


def _our_processes(run_id_part: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if run_id_part in cmd and "perpbot" in cmd:
            out.append(p)
    return out


def test_demo_trades_end_to_end_and_kill_stops_new_orders(run_env: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    proc = _launch(run_env["config"], 300, log)
    try:
        _wait_for("all processes running", lambda: b"all processes running" in log.read_bytes(),
                  START_DEADLINE_S, proc, log)
        status = _ctl(run_env["config"], "--json", "status")
        assert status.returncode == 0, status.stderr
        st = orjson.loads(status.stdout)
        assert st["trading_state"] == "RUNNING"
        assert set(st["feeds"]) == set(example_raw()["venues"]) and len(st["feeds"]) >= 4

        def all_connected() -> bool:
            feeds = orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)["feeds"]
            return all(f["state"] == "CONNECTED" and f["quotes"] > 0 for f in feeds.values())

        _wait_for("every venue connected and quoting", all_connected, START_DEADLINE_S, proc, log)
        assert all(p["state"] == "RUNNING" for p in st["processes"].values()), st["processes"]
        scanner_pid = st["processes"]["scanner"]["pid"]
        assert psutil.Process(scanner_pid).cpu_affinity() == [(os.cpu_count() or 1) - 1]
        run_dir = run_env["run_root"] / st["run_id"]
        assert (run_dir.stat().st_mode & 0o777) == 0o700
        events = EventCollector(run_dir)
        events.start()

        _wait_for("two completed trades", lambda: _closed_trades(run_env["data"]) >= 2, TRADE_DEADLINE_S, proc, log)
        _wait_for("a completed trade and heartbeats while subscribed",
                  lambda: any(k == "TRADE_COMPLETED" for k, _ in list(events.events))
                  and _heartbeats(events) >= {"exec", "scanner", "feed-okx"}, TRADE_DEADLINE_S, proc, log)
        events.close()
        kill = _ctl(run_env["config"], "--json", "kill")
        assert kill.returncode == 0, kill.stderr
        kill_reply = orjson.loads(kill.stdout)
        halt_ns = kill_reply["halt_ns"]
        # measured: command -> last possible new order, and -> every open order cancelled (exec confirms)
        assert kill_reply["command_to_halt_us"] > 0
        assert kill_reply["command_to_cancelled_us"] >= kill_reply["command_to_halt_us"]
        st = orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)
        assert st["trading_state"] == "HALTED"
        assert _ctl(run_env["config"], "resume").returncode == 1  # kill is not undone by resume
        # let the market keep moving while halted: opportunities must not become orders
        opps_at_kill = st["scanner"]["opportunities"]
        time.sleep(2.0)
        st2 = orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)
        assert st2["scanner"]["opportunities"] == opps_at_kill, "scanner kept signalling after kill"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    out = log.read_text()
    assert "summary" in out and "realized PnL after fees" in out and "tick->signal: p50" in out

    # the seed's events reached a subscriber through the launcher's forwarder, fields intact
    kinds = {k for k, _ in events.events}
    # ORDER_CANCELLED only comes when an IOC leg misses, which a short window may not see
    assert kinds >= set(SEED_EVENT_TYPES) - {"ORDER_CANCELLED"}, kinds
    for kind, payload in events.events:
        check_event(kind, payload)
    db = _journal(run_env["data"])
    assert db is not None
    summary = orjson.loads((db.parent / "summary.json").read_bytes())
    assert summary["journal"]["trades_completed"] >= 2

    # after kill, no new order: every order sent passed its risk check before the halt flag was set
    late = _query(db, f"SELECT client_order_id, ts_decide_ns FROM orders "
                      f"WHERE ts_decide_ns >= {halt_ns} AND status != 'not_sent'")
    assert late == []
    # every fill belongs to an order
    assert _query(db, "SELECT COUNT(*) FROM fills f LEFT JOIN orders o USING (client_order_id) "
                      "WHERE o.client_order_id IS NULL") == [(0,)]
    # both legs of every completed trade are in the journal, opened and closed, with fills
    for (trade_id, buy_venue, sell_venue) in _query(
            db, "SELECT trade_id, buy_venue, sell_venue FROM trades WHERE state = 'closed'"):
        legs = _query(db, f"SELECT o.venue, o.side, o.purpose, SUM(CAST(f.qty AS REAL)) FROM orders o "
                          f"JOIN fills f USING (client_order_id) WHERE o.trade_id = {trade_id} "
                          f"GROUP BY o.venue, o.side, o.purpose")
        # a leg that missed at the open is completed by a hedge on its venue (or the next-best one,
        # which the journal's trade row then names): either builds the leg
        got = {(v, side, "open" if purpose == "hedge" else purpose) for v, side, purpose, _ in legs}
        assert {(buy_venue, "buy", "open"), (sell_venue, "sell", "open"),
                (buy_venue, "sell", "close"), (sell_venue, "buy", "close")} <= got, (trade_id, legs)
    # positions are flat or explained by trades still open when the kill came
    net: dict[tuple[str, str], Decimal] = {}
    for venue, symbol, side, qty in _query(
            db, "SELECT f.venue, f.symbol, f.side, f.qty FROM fills f"):
        net[(venue, symbol)] = net.get((venue, symbol), Decimal(0)) + (Decimal(qty) if side == "buy" else -Decimal(qty))
    explained: dict[tuple[str, str], Decimal] = {}
    for symbol, bv, sv, qty in _query(db, "SELECT symbol, buy_venue, sell_venue, qty FROM trades WHERE state = 'open'"):
        explained[(bv, symbol)] = explained.get((bv, symbol), Decimal(0)) + Decimal(qty)
        explained[(sv, symbol)] = explained.get((sv, symbol), Decimal(0)) - Decimal(qty)
    for key in set(net) | set(explained):
        assert net.get(key, Decimal(0)) == explained.get(key, Decimal(0)), key

    # nothing left behind
    run_id = st["run_id"]
    assert not list(Path("/dev/shm").glob(f"perpbot-{run_id}-*"))
    assert _our_processes(run_id) == []
    assert not (run_env["run_root"] / run_id).exists()


def test_a_crashed_feed_or_scanner_is_restarted_and_a_crashed_market_ends_the_run(
        run_env: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    proc = _launch(run_env["config"], 300, log)
    try:
        _wait_for("all processes running", lambda: b"all processes running" in log.read_bytes(),
                  START_DEADLINE_S, proc, log)
        st = orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)
        for name in ("scanner", "feed-okx"):
            old_pid = st["processes"][name]["pid"]
            os.kill(old_pid, signal.SIGKILL)

            def restarted(name: str = name, old_pid: int = old_pid) -> bool:
                p = orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)["processes"][name]
                return p["pid"] != old_pid and p["state"] == "RUNNING" and p["restarts"] == 1

            _wait_for(f"{name} restarted", restarted, START_DEADLINE_S, proc, log)
        assert f"{name} exited with code -9; restarting" in log.read_text()
        assert orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)["trading_state"] == "RUNNING"

        # the market's ports cannot be recovered: its death ends the run, named, nothing left behind
        # (a crashed exec is restarted after recovering: test_exec_recovery)
        os.kill(st["processes"]["market"]["pid"], signal.SIGKILL)
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert "market exited unexpectedly" in out
    run_id = st["run_id"]
    assert not list(Path("/dev/shm").glob(f"perpbot-{run_id}-*"))
    assert _our_processes(run_id) == []


def test_flatten_reload_risk_and_kill_with_flatten(run_env: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    proc = _launch(run_env["config"], 300, log)
    try:
        _wait_for("all processes running", lambda: b"all processes running" in log.read_bytes(),
                  START_DEADLINE_S, proc, log)
        _wait_for("a completed trade", lambda: _closed_trades(run_env["data"]) >= 1, TRADE_DEADLINE_S, proc, log)
        flat = _ctl(run_env["config"], "--json", "flatten")
        assert flat.returncode == 0, flat.stderr
        assert orjson.loads(flat.stdout)["flatten_ms"] >= 0

        # an invalid file is refused, naming the key, and nothing changes
        raw = yaml.safe_load(run_env["config"].read_text())
        raw["risk"]["max_open_trades"] = 0
        run_env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
        bad = _ctl(run_env["config"], "reload-risk")
        assert bad.returncode == 1 and "$.risk.max_open_trades" in bad.stderr
        raw["risk"]["max_open_trades"] = 1
        raw["risk"]["max_notional_per_trade_usd"] = 4000
        run_env["config"].write_text(yaml.safe_dump(raw, sort_keys=False))
        good = _ctl(run_env["config"], "--json", "reload-risk")
        assert good.returncode == 0, good.stderr
        assert orjson.loads(good.stdout)["risk"]["max_open_trades"] == 1
        assert "[exec" not in log.read_text()

        _wait_for("trading after the reload", lambda: _closed_trades(run_env["data"]) >= 2, TRADE_DEADLINE_S,
                  proc, log)
        kill = _ctl(run_env["config"], "--json", "kill", "--flatten")
        assert kill.returncode == 0, kill.stderr
        reply = orjson.loads(kill.stdout)
        assert reply["flattened"] is True and reply["state"] == "HALTED"
        st = orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)
        assert st["trading_state"] == "HALTED" and st["positions"] == {}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db = _journal(run_env["data"])
    assert db is not None
    assert _query(db, "SELECT COUNT(*) FROM trades WHERE state = 'open'") == [(0,)]
    # with at most one open trade after the reload, no two trades overlap once it applied
    net: dict[tuple[str, str], Decimal] = {}
    for venue, symbol, side, qty in _query(db, "SELECT venue, symbol, side, qty FROM fills"):
        net[(venue, symbol)] = net.get((venue, symbol), Decimal(0)) + (Decimal(qty) if side == "buy" else -Decimal(qty))
    assert all(v == 0 for v in net.values()), net

    # the CSV export carries every trade and fill exactly as journaled
    csv_path = tmp_path / "trades.csv"
    r = subprocess.run([sys.executable, "-m", "perpbot.exec.export", str(db), "--out", str(csv_path)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    journaled = _query(db, "SELECT trade_id, realized_pnl, state FROM trades ORDER BY trade_id")
    assert [(int(x["trade_id"]), x["realized_pnl"], x["state"]) for x in rows] == journaled
    assert all(x["closed_utc"].endswith("+00:00") for x in rows if x["state"] == "closed")
    fills_out = subprocess.run([sys.executable, "-m", "perpbot.exec.export", str(db), "--fills"],
                               capture_output=True, text=True, timeout=60, check=True).stdout
    fill_rows = list(csv.DictReader(io.StringIO(fills_out)))
    assert sorted(x["fill_id"] for x in fill_rows) == sorted(r[0] for r in _query(db, "SELECT fill_id FROM fills"))
    bad = subprocess.run([sys.executable, "-m", "perpbot.exec.export", str(tmp_path / "missing.sqlite")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "no journal" in bad.stderr


def test_ctrl_c_to_the_process_group_stops_everything_cleanly(run_env: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    # a terminal's Ctrl-C sends SIGINT to the whole foreground group: launcher and children at once
    proc = _launch(run_env["config"], 300, log, new_session=True)
    try:
        _wait_for("all processes running", lambda: b"all processes running" in log.read_bytes(),
                  START_DEADLINE_S, proc, log)
        st = orjson.loads(_ctl(run_env["config"], "--json", "status").stdout)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert "stopping: SIGINT" in out and "summary" in out
    assert "Traceback" not in out
    logs = list(run_env["data"].glob("*/*.log"))
    assert len(logs) == 3 + len(example_raw()["venues"])  # market, exec, scanner, one feed per venue
    for child_log in logs:
        assert "Traceback" not in child_log.read_text(), child_log.name
    run_id = st["run_id"]
    assert not list(Path("/dev/shm").glob(f"perpbot-{run_id}-*"))
    assert _our_processes(run_id) == []


def test_bad_config_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    raw = example_raw()
    raw["scanner"]["poll"] = "fastest"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "perpbot.launch", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "$.scanner.poll" in r.stderr and "spin, hybrid, sleep" in r.stderr
