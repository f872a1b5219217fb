"""Webhook alerts against a real HTTP server on loopback: payload shapes, an outage, a 500, a hung server.

No test asserts on timing: "alert() never blocks" is shown by a server that
holds its reply until the test has seen alert() return.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from perpbot import logs
from perpbot.alerts import Alerter, AlertsConfig, WebhookSink, build_sinks, parse_alerts_config

WAIT_S = 10.0  # generous upper bounds for waiting on threads; never asserted as latencies


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Server:
    url: str
    requests: list[Received] = field(default_factory=list)
    got_request: threading.Event = field(default_factory=threading.Event)
    #: (status, body) the server answers with
    reply: tuple[int, bytes] = (200, b'{"ok": true}')
    #: when set, handlers wait for it before replying
    hold: threading.Event | None = None


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length", "0"))
            state.requests.append(Received(self.path, dict(self.headers), orjson.loads(self.rfile.read(n))))
            state.got_request.set()
            if state.hold is not None:
                state.hold.wait(WAIT_S)
            status, body = state.reply
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up first (the hung-server test): expected

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nobody listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@pytest.fixture(autouse=True)
def no_registered_secrets() -> Iterator[None]:
    yield
    logs.clear_secrets()


def _alerter(cfg: AlertsConfig, env: dict[str, str] | None = None) -> Alerter:
    return Alerter(cfg, sinks=build_sinks(cfg, env=env), source="run it1")


def _failing_lines(caplog: pytest.LogCaptureFixture, sink: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "perpbot.alerts" and r.levelno >= logging.ERROR and sink in r.getMessage()]


def _wait_for(cond: Callable[[], bool]) -> bool:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if cond():
            return True
        done.wait(0.01)
    return cond()


def test_generic_payload_arrives(server: Server) -> None:
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "url": server.url + "/hooks/perpbot"}]})
    alerter = _alerter(cfg)
    try:
        assert alerter.alert("kill", "kill from perpbot-ctl", key="ctl", halt_us=12.5)
        assert alerter.wait_idle(WAIT_S)
    finally:
        alerter.close()
    [req] = server.requests
    assert req.path == "/hooks/perpbot"
    assert req.headers["Content-Type"].startswith("application/json")
    body = req.body
    assert body["kind"] == "kill" and body["severity"] == "critical"
    assert body["message"] == "kill from perpbot-ctl" and body["key"] == "ctl"
    assert body["context"] == {"halt_us": 12.5} and body["source"] == "run it1"
    assert isinstance(body["ts_ns"], int) and "kill from perpbot-ctl" in body["text"]


def test_telegram_payload_and_token_in_the_path_only(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    token = "123456789:AAF-test-token-xyz"
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "format": "telegram", "url": server.url,
                                          "chat_id": "-100200300", "token_env": "PERPBOT_TEST_TG_TOKEN"}]})
    alerter = _alerter(cfg, env={"PERPBOT_TEST_TG_TOKEN": token})
    try:
        alerter.alert("feed_down", "okx feed down for 12.0 s", key="okx", venue="okx")
        assert alerter.wait_idle(WAIT_S)
        [sink] = alerter.sinks
        assert token not in sink.name
        logging.getLogger("perpbot.alerts").warning("url was %s/bot%s/sendMessage", server.url, token)
    finally:
        alerter.close()
    [req] = server.requests
    assert req.path == f"/bot{token}/sendMessage"
    assert set(req.body) >= {"chat_id", "text"}
    assert req.body["chat_id"] == "-100200300"
    assert "okx feed down for 12.0 s" in req.body["text"] and "venue=okx" in req.body["text"]
    assert token not in caplog.text  # the sink registered its token for redaction


def test_lark_payload(server: Server) -> None:
    server.reply = (200, b'{"code": 0, "msg": "success", "data": {}}')
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "format": "lark",
                                          "url": server.url + "/open-apis/bot/v2/hook/abc-123"}]})
    alerter = _alerter(cfg)
    try:
        alerter.alert("daily_loss_limit", "daily loss limit reached", pnl=-501.2)
        assert alerter.wait_idle(WAIT_S)
        [sink] = alerter.sinks
        assert isinstance(sink, WebhookSink) and sink.sent == 1 and sink.failed == 0
    finally:
        alerter.close()
    [req] = server.requests
    assert req.path == "/open-apis/bot/v2/hook/abc-123"
    assert req.body["msg_type"] == "text" and set(req.body) == {"msg_type", "content"}
    assert set(req.body["content"]) == {"text"}
    assert "daily loss limit reached" in req.body["content"]["text"]


def test_lark_error_reply_with_http_200_is_a_failure(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.reply = (200, b'{"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}')
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "format": "lark", "url": server.url + "/hook"}]})
    alerter = _alerter(cfg)
    try:
        alerter.alert("halt", "halted")
        assert alerter.wait_idle(WAIT_S)
    finally:
        alerter.close()
    [line] = _failing_lines(caplog, "webhook:lark@127.0.0.1")
    assert "19021" in line


def test_server_down_alert_returns_and_failure_logged_once(
    closed_port_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "url": closed_port_url}, {"kind": "log"}],
                               "dedup_window_s": 0})
    alerter = _alerter(cfg)
    try:
        for i in range(5):
            assert alerter.alert("process_crash", f"process scanner exited ({i})")  # never raises
        assert alerter.wait_idle(WAIT_S)
        [webhook, _] = alerter.sinks
        assert isinstance(webhook, WebhookSink) and webhook.failed == 5 and webhook.sent == 0
    finally:
        alerter.close()
    lines = _failing_lines(caplog, "webhook:generic@127.0.0.1")
    assert len(lines) == 1
    assert "cannot reach it" in lines[0] and "refused" in lines[0].lower()
    # the log sink still carried every alert
    assert sum("process scanner exited" in r.getMessage() for r in caplog.records) == 5


def test_http_500_logged_once_then_recovery(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.reply = (500, b'{"error": "backend exploded"}')
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "url": server.url + "/hook"}], "dedup_window_s": 0})
    alerter = _alerter(cfg)
    try:
        for i in range(3):
            alerter.alert("legging", f"leg {i} unwound")
        assert alerter.wait_idle(WAIT_S)
        lines = _failing_lines(caplog, "webhook:generic@127.0.0.1")
        assert len(lines) == 1 and "HTTP 500" in lines[0] and "backend exploded" in lines[0]
        server.reply = (200, b"{}")
        alerter.alert("legging", "leg 3 hedged")
        assert alerter.wait_idle(WAIT_S)
    finally:
        alerter.close()
    assert len(server.requests) == 4
    assert "recovered after 3 failed alert(s)" in caplog.text
    assert len(_failing_lines(caplog, "webhook:generic@127.0.0.1")) == 1


def test_a_hung_server_never_blocks_the_caller(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.hold = threading.Event()
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "url": server.url + "/hook", "timeout_ms": 500}],
                               "dedup_window_s": 0})
    alerter = _alerter(cfg)
    try:
        # the server holds its reply until released below: if alert() waited for it, this would hang
        assert alerter.alert("kill", "first")
        assert alerter.alert("kill", "second")
        assert server.got_request.wait(WAIT_S)
        assert not server.hold.is_set()  # both calls returned while the server was still holding
        assert alerter.wait_idle(WAIT_S)  # the worker gave up on the hung server by its timeout
        [line] = _failing_lines(caplog, "webhook:generic@127.0.0.1")
        assert "timed out" in line.lower()
        server.hold.set()
    finally:
        alerter.close()


def test_rate_limit_and_dedup_through_the_webhook(server: Server) -> None:
    now = [0]
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "url": server.url + "/hook"}],
                               "dedup_window_s": 60, "max_per_kind": 2, "rate_window_s": 60})
    alerter = Alerter(cfg, sinks=build_sinks(cfg), clock=lambda: now[0])
    try:
        for _ in range(4):
            alerter.alert("feed_down", "okx down", key="okx")
        alerter.alert("feed_down", "gate down", key="gate")
        alerter.alert("feed_down", "bybit down", key="bybit")  # third of the kind in the window
        now[0] += 61 * 1_000_000_000
        alerter.alert("feed_down", "okx still down", key="okx")
        assert alerter.wait_idle(WAIT_S)
    finally:
        alerter.close()
    assert _wait_for(lambda: len(server.requests) == 3)
    bodies = [r.body for r in server.requests]
    assert [b["key"] for b in bodies] == ["okx", "gate", "okx"]
    assert bodies[2]["repeats"] == 3 and bodies[2]["dropped"] == 1
