"""A real run: alerts reach a local webhook (kill, a crashed process), logs are JSON lines per
process, and an API key set in the environment appears nowhere the run writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
import yaml
import zmq
from kit import example_raw

from perpbot import bus

pytestmark = pytest.mark.slow

SECRET = "sk-test-9f8e7d6c5b4a"


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def _collect_alerts(sock: zmq.Socket, into: list[dict[str, Any]]) -> bool:
    """Drain what arrived; keep the ALERT events; True once there is one."""
    while sock.poll(100):
        topic, payload = bus.decode_event(sock.recv_multipart())
        if topic == "ALERT":
            into.append(payload)
    return bool(into)


def test_alerts_reach_the_webhook_and_secrets_reach_no_file(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Hook.received = []
    run_root = Path(tempfile.mkdtemp(prefix="pbl"))
    raw = example_raw()
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp_path / "data"))
    raw["venues"]["binanceusdm"]["api_key_env"] = "PB_TEST_BINANCE_KEY"
    raw["alerts"] = {"sinks": [{"kind": "log"}, {"kind": "bell"},
                               {"kind": "webhook", "url": f"http://127.0.0.1:{server.server_port}/hook"}]}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PB_TEST_BINANCE_KEY": SECRET}
    log = tmp_path / "launch.log"
    proc = subprocess.Popen([sys.executable, "-m", "perpbot.launch", "--config", str(cfg), "--duration", "300"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "perpbot.ctl", "--config", str(cfg), *args],
                              capture_output=True, text=True, env=env, timeout=60, check=False)

    def until(what: str, cond: Any) -> None:
        end = time.monotonic() + 60
        while not cond():
            assert proc.poll() is None, f"launcher exited while waiting for {what}:\n{log.read_text()}"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.1)

    try:
        until("start", lambda: b"all processes running" in log.read_bytes())
        st = orjson.loads(ctl("--json", "status").stdout)
        # a bell sink reaches whoever watches (the monitor) as ALERT events on the bus
        zctx = zmq.Context()
        bell = bus.event_subscriber(zctx, bus.endpoints(run_root / st["run_id"]), ("ALERT", "HEARTBEAT"))
        # a heartbeat received proves the subscription reached the forwarder (SUB has no handshake)
        until("a heartbeat through the forwarder", lambda: bell.poll(100) and bell.recv_multipart()[0] == b"HEARTBEAT")
        os.kill(st["processes"]["feed-bybit"]["pid"], signal.SIGKILL)
        until("the crash alert", lambda: any(a.get("kind") == "process_crash" for a in Hook.received))
        alerts: list[dict[str, Any]] = []
        until("the bell's ALERT event", lambda: _collect_alerts(bell, alerts))
        assert alerts[0]["kind"] == "process_crash"
        bell.close()
        zctx.term()
        assert ctl("kill").returncode == 0
        until("the kill alert", lambda: any(a.get("kind") == "kill" for a in Hook.received))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.shutdown()
        shutil.rmtree(run_root, ignore_errors=True)

    crash = next(a for a in Hook.received if a.get("kind") == "process_crash")
    assert "feed-bybit" in json.dumps(crash)
    data = next((tmp_path / "data").iterdir())
    jsonl = {p.name for p in data.glob("*.jsonl")}
    assert {"launcher.jsonl", "exec.jsonl", "scanner.jsonl", "market.jsonl", "feed-okx.jsonl"} <= jsonl
    for line in (data / "exec.jsonl").read_text().splitlines():
        rec = orjson.loads(line)
        assert {"ts", "level", "process", "msg"} <= set(rec)
    everything = [log.read_bytes()] + [p.read_bytes() for p in data.rglob("*") if p.is_file()]
    assert not any(SECRET.encode() in blob for blob in everything)
