"""The feed process for real against a scripted loopback websocket server.

The server speaks Binance's combined-stream bookTicker and misbehaves on
purpose: garbage frames, an unknown symbol, a dropped connection, a silent
connection. The feed must count and skip the bad frames, mark its row DOWN at
once on a disconnect, reconnect with backoff, reconnect a silent connection,
and write good quotes with their three stamps.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import picows
import yaml
from kit import example_raw, segments, unique_run_id

from perpbot.config import parse_config
from perpbot.runctx import CONFIG_COPY, write_run_file
from perpbot.shm.layout import FeedState, ProcState

DEADLINE_S = 30.0
T_MS = 1_700_000_000_000


def _ticker(sym: str, bid: str, ask: str, t_ms: int) -> bytes:
    return orjson.dumps({"stream": f"{sym.lower()}@bookTicker", "data": {
        "e": "bookTicker", "u": 1, "s": sym, "b": bid, "B": "1.5", "a": ask, "A": "2.5", "T": t_ms, "E": t_ms}})


class ScriptedServer:
    """Connection 1: quotes and garbage, then a drop. 2: silence. 3+: quotes, kept open."""

    def __init__(self) -> None:
        self.connections = 0
        self.subscribes: list[Any] = []
        self.third_open = asyncio.Event()

    def listener(self, request: picows.WSUpgradeRequest) -> picows.WSListener:
        server = self
        server.connections += 1
        n = server.connections

        class L(picows.WSListener):
            def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
                if frame.msg_type is not picows.WSMsgType.TEXT:
                    return
                server.subscribes.append(orjson.loads(frame.get_payload_as_bytes()))
                transport.send(picows.WSMsgType.TEXT, b'{"result":null,"id":1}')
                if n == 1:
                    for f in (_ticker("BTCUSDT", "60000.1", "60000.2", T_MS), b"garbage{",
                              _ticker("DOGEUSDT", "0.1", "0.2", T_MS),
                              _ticker("ETHUSDT", "3000.5", "3000.4", T_MS),  # crossed: refused
                              _ticker("ETHUSDT", "3000.1", "3000.3", T_MS + 1)):
                        transport.send(picows.WSMsgType.TEXT, f)
                    asyncio.get_running_loop().call_later(0.3, transport.disconnect)
                elif n >= 3:
                    transport.send(picows.WSMsgType.TEXT, _ticker("BTCUSDT", "61000.0", "61000.5", T_MS + 2))
                    server.third_open.set()

        return L()


async def _until(what: str, cond: Any, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + DEADLINE_S
    while not cond():
        assert proc.poll() is None, f"feed exited ({proc.returncode}) while waiting for {what}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_feed_process_parses_counts_reconnects_and_stops(tmp_path: Path) -> None:
    raw = example_raw()
    raw["feed"].update(silent_reconnect_ms=600, reconnect_initial_ms=50, reconnect_max_ms=200, heartbeat_ms=50,
                       symbol_stale_ms=300)
    cfg = parse_config(raw)
    run_dir = Path(tempfile.mkdtemp(prefix="pbf"))
    run_id = unique_run_id()

    async def scenario() -> None:
        server = ScriptedServer()
        ws = await picows.ws_create_server(server.listener, "127.0.0.1", 0)
        port = ws.sockets[0].getsockname()[1]
        (run_dir / CONFIG_COPY).write_text(yaml.safe_dump(raw, sort_keys=False))
        write_run_file(run_dir, run_id, tmp_path, {"binanceusdm": f"ws://127.0.0.1:{port}/public/stream"})
        with segments(cfg, run_id) as (board, status):
            proc = subprocess.Popen(
                [sys.executable, "-m", "perpbot.feeds.process", "--run-dir", str(run_dir), "--slot", "1",
                 "--venue", "binanceusdm"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                feed = status.feeds[0]
                await _until("two good quotes and the bad frames counted",
                             lambda: feed["quotes"] >= 2 and feed["parse_errors"] >= 2
                             and feed["unknown_symbols"] >= 1, proc)
                btc = board.read(0, 0)
                eth = board.read(0, 1)
                assert btc is not None
                assert (btc.bid, btc.ask, btc.bid_size, btc.ask_size) == (60000.1, 60000.2, 1.5, 2.5)
                assert btc.ts_exchange_ns == T_MS * 1_000_000
                assert 0 < btc.ts_recv_ns <= btc.ts_write_ns
                assert eth is not None and (eth.bid, eth.ask) == (3000.1, 3000.3)  # the crossed one never landed
                assert board.read(1, 0) is None  # other venues' rows untouched
                # SOLUSDT is subscribed but the server never quotes it: counted stale
                await _until("the unquoted symbol counted stale", lambda: feed["stale_symbols"] >= 1, proc)
                assert server.subscribes[0] == {"method": "SUBSCRIBE", "params": [
                    "btcusdt@bookTicker", "ethusdt@bookTicker", "solusdt@bookTicker"], "id": 1}

                # dropped, then silent, then a good connection again
                await asyncio.wait_for(server.third_open.wait(), DEADLINE_S)
                await _until("the third connection's quote", lambda: (board.read(0, 0) or btc).bid == 61000.0, proc)
                await _until("state CONNECTED", lambda: status.feed_state(0) == FeedState.CONNECTED, proc)
                assert server.connections >= 3
                await _until("reconnects counted", lambda: feed["reconnects"] >= 2, proc)
                assert status.procs[1]["state"] == ProcState.RUNNING

                proc.send_signal(signal.SIGTERM)
                out, _ = await asyncio.get_running_loop().run_in_executor(None, proc.communicate, None)
                assert proc.returncode == 0, out.decode()
                assert status.procs[1]["state"] == ProcState.STOPPED
                assert status.feed_state(0) == FeedState.DOWN
                text = out.decode()
                assert "bad frame" in text and "silent for 600 ms" in text
                assert text.count("first of its kind") == 2  # logged once per kind: not_json, crossed_book
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                ws.close()

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
