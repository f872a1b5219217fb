"""The exec process as a real subprocess: real segments, a real PULL socket, a real journal.

This test plays the launcher: it creates the segments and the run directory,
starts `python -m perpbot.exec.process`, waits for RUNNING (the ready
handshake), writes fresh quotes on the board, pushes encoded opportunities
and reads the journal with plain sqlite3. Nothing here asserts on timing; the
waits are generous deadlines for a slow machine.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
from kit import ROOT, example_raw, segments, unique_run_id

from perpbot.bus import endpoints
from perpbot.clock import now_ns
from perpbot.config import parse_config
from perpbot.exec.process import newest_per_pair
from perpbot.messages import Opportunity, encode_opportunity
from perpbot.runctx import CONFIG_COPY, write_run_file
from perpbot.shm import StatusBoard
from perpbot.shm.layout import ExecCounter, FeedState, ProcState

SLOT = 3
DEADLINE_S = 30.0
BTC = 0


def _wait_for(what: str, cond: Callable[[], Any], proc: subprocess.Popen[bytes]) -> Any:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"exec exited with {proc.returncode} while waiting for {what}:\n"
                        f"{err.decode(errors='replace')}")
        time.sleep(0.02)
    pytest.fail(f"gave up waiting for {what}")


def _proc_state(status: StatusBoard) -> ProcState:
    return ProcState(int(status.procs[SLOT]["state"]))


def _counter(status: StatusBoard, c: ExecCounter) -> int:
    return int(status.procs[SLOT]["counters"][int(c)])


def _closed_trades(jpath: Path) -> list[tuple[Any, ...]]:
    if not jpath.exists():
        return []
    con = sqlite3.connect(jpath)
    try:
        return con.execute("SELECT trade_id, state, realized_pnl FROM trades"
                           " WHERE state='closed'").fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        con.close()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # ipc:// paths must fit a unix socket address (~107 bytes): keep the run dir short
    d = Path(tempfile.mkdtemp(prefix="pbx-"))
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_exec_process_trades_and_stops_cleanly(run_dir: Path, tmp_path: Path) -> None:
    raw = example_raw()
    # generous ages so a slow test machine never turns the signal or the quotes stale;
    # a short max hold so the trade also closes by itself
    raw["exec"].update({"max_opportunity_age_ms": 60_000, "max_hold_ms": 300})
    raw["scanner"]["stale_after_ms"] = 60_000
    cfg = parse_config(raw)
    # sort_keys=False: venue and symbol order ARE the board indices
    (run_dir / CONFIG_COPY).write_text(yaml.safe_dump(raw, sort_keys=False))
    run_id = unique_run_id()
    data_dir = tmp_path / "data"
    write_run_file(run_dir, run_id, data_dir, {})
    jpath = data_dir / "journal.sqlite"

    with segments(cfg, run_id) as (board, status):
        for v in range(len(cfg.venue_names)):
            status.set_feed_state(v, FeedState.CONNECTED)
        writers = [board.writer(0), board.writer(1)]
        zctx = zmq.Context()
        push = zctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "perpbot.exec.process", "--run-dir", str(run_dir),
             "--slot", str(SLOT)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            _wait_for("RUNNING", lambda: _proc_state(status) == ProcState.RUNNING, proc)
            assert int(status.procs[SLOT]["pid"]) == proc.pid

            t = now_ns()
            writers[0].write(BTC, 59999.9, 60000.0, 1.0, 1.0, 1, t)  # binanceusdm: cheap
            writers[1].write(BTC, 60300.0, 60300.1, 1.0, 1.0, 1, t)  # okx: dear
            push.connect(endpoints(run_dir).opportunities)
            push.send(b"not an opportunity")  # malformed: counted and skipped
            opp = Opportunity(1, BTC, 0, 1, 60000.0, 60300.0, 1.0, 1.0, 40.0, 1, t, t, now_ns())
            push.send(encode_opportunity(opp))

            closed = _wait_for("a closed trade in the journal", lambda: _closed_trades(jpath), proc)
            assert closed[0][:2] == (1, "closed")
            _wait_for("counters in the status record",
                      lambda: _counter(status, ExecCounter.TRADES_CLOSED) >= 1, proc)
            assert _counter(status, ExecCounter.ORDERS_SENT) == 4
            assert _counter(status, ExecCounter.ORDERS_APPROVED) == 4
            assert int(status.procs[SLOT]["heartbeat_ns"]) > 0

            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=DEADLINE_S)
            assert proc.returncode == 0, err.decode(errors="replace")
            assert _proc_state(status) == ProcState.STOPPED
            assert int(status.procs[SLOT]["last_error"]) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            push.close()
            zctx.term()
            for w in writers:
                w.release()

    con = sqlite3.connect(jpath)
    try:
        orders = con.execute("SELECT client_order_id, purpose, status FROM orders"
                             " ORDER BY client_order_id").fetchall()
        assert [o[1:] for o in orders] == [("close", "filled"), ("close", "filled"),
                                          ("open", "filled"), ("open", "filled")]
        assert all(o[0].startswith(f"{run_id}-1-") for o in orders)
        orphans = con.execute("SELECT COUNT(*) FROM fills LEFT JOIN orders"
                              " USING(client_order_id) WHERE orders.client_order_id IS NULL")
        assert orphans.fetchone()[0] == 0
        assert con.execute("SELECT COUNT(*) FROM fills").fetchone()[0] == 4
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_a_drained_batch_keeps_the_newest_opportunity_per_pair() -> None:
    def opp(opp_id: int, buy: int, sell: int) -> bytes:
        return encode_opportunity(Opportunity(opp_id, BTC, buy, sell, 1.0, 2.0, 1.0, 1.0, 5.0,
                                              1, 2, 3, 4))

    batch = [(opp(1, 0, 1), 10), (b"junk", 11), (opp(2, 1, 0), 12), (opp(3, 0, 1), 13)]
    kept, superseded, errors = newest_per_pair(batch)
    assert [(o.opp_id, ts) for o, ts in kept] == [(3, 13), (2, 12)]
    assert [o.opp_id for o, _ in superseded] == [1]
    assert len(errors) == 1
