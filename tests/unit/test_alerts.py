"""Alerts without a network: config, payload shapes, rate limit, dedup, failing sinks, events to alerts."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from perpbot.alerts import (
    PROCESS_EXITED,
    WATCHED_TOPICS,
    Alert,
    Alerter,
    AlertsConfig,
    CallbackSink,
    EventAlertState,
    LogSink,
    alerts_from_events,
    build_sinks,
    parse_alerts_config,
    payload_for,
    terminal_bell,
)
from perpbot.errors import ConfigError

S = 1_000_000_000  # ns per second


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000 * S

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * S)


def _alerter(clock: FakeClock, **cfg: Any) -> tuple[Alerter, list[Alert]]:
    got: list[Alert] = []
    alerter = Alerter(AlertsConfig(**cfg), sinks=[CallbackSink("rec", got.append)], clock=clock,
                      wall_clock=lambda: 42, source="run t1")
    return alerter, got


# -- config ----------------------------------------------------------------------------


def test_defaults_log_only() -> None:
    cfg = parse_alerts_config(None)
    assert [s.kind for s in cfg.sinks] == ["log"]
    assert cfg.max_per_kind >= 1 and cfg.dedup_window_s >= 0 and cfg.feed_down_after_ms >= 1


def test_full_config_parses() -> None:
    cfg = parse_alerts_config({
        "sinks": [
            {"kind": "log"},
            {"kind": "bell", "kinds": ["kill", "halt"]},
            {"kind": "webhook", "url": "https://hooks.example.com/x", "format": "generic", "timeout_ms": 2000},
            {"kind": "webhook", "format": "telegram", "chat_id": "-100123", "token_env": "TG_TOKEN"},
            {"kind": "webhook", "format": "lark", "url": "https://open.feishu.cn/open-apis/bot/v2/hook/abc"},
        ],
        "max_per_kind": 3, "rate_window_s": 30, "dedup_window_s": 120, "feed_down_after_ms": 5000,
    })
    assert cfg.sinks[1].kinds == ("kill", "halt")
    assert cfg.sinks[3].url is None and cfg.sinks[3].token_env == "TG_TOKEN"
    assert cfg.rate_window_s == 30.0


@pytest.mark.parametrize(("raw", "path"), [
    ({"sinks": [{"kind": "pager"}]}, "$.alerts.sinks[0].kind"),
    ({"sinks": [{"kind": "log", "colour": "red"}]}, "$.alerts.sinks[0].colour"),
    ({"max_per_kind": 0}, "$.alerts.max_per_kind"),
    ({"sinks": [{"kind": "webhook"}]}, "$.alerts.sinks[0].url"),
    ({"sinks": [{"kind": "webhook", "url": "ftp://x"}]}, "$.alerts.sinks[0].url"),
    ({"sinks": [{"kind": "webhook", "format": "telegram", "token_env": "T"}]}, "$.alerts.sinks[0].chat_id"),
    ({"sinks": [{"kind": "webhook", "format": "telegram", "chat_id": "1"}]}, "$.alerts.sinks[0].token_env"),
    ({"sinks": [{"kind": "webhook", "format": "telegram", "chat_id": "1", "token_env": "123:abc"}]},
     "$.alerts.sinks[0].token_env"),
    ({"sinks": [{"kind": "webhook", "url": "http://h", "chat_id": "1"}]}, "$.alerts.sinks[0].chat_id"),
    ({"sinks": [{"kind": "log", "url": "http://h"}]}, "$.alerts.sinks[0].url"),
    ({"sinks": [{"kind": "log", "kinds": ["lunch"]}]}, "$.alerts.sinks[0].kinds[0]"),
])
def test_config_errors_name_the_key(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_alerts_config(raw)
    assert e.value.path == path


def test_telegram_without_token_in_env_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_alerts_config({"sinks": [{"kind": "webhook", "format": "telegram", "chat_id": "1",
                                          "token_env": "PERPBOT_TEST_NO_SUCH_TOKEN"}, {"kind": "log"},
                                         {"kind": "bell"}]})
    sinks = build_sinks(cfg, env={})
    assert [s.name for s in sinks] == ["log"]  # no token, no bell callable
    assert "PERPBOT_TEST_NO_SUCH_TOKEN is not set" in caplog.text
    rung: list[str] = []
    assert [s.name for s in build_sinks(cfg, env={}, bell=terminal_bell(rung.append))] == ["log", "bell"]


# -- payloads ----------------------------------------------------------------------------


def _sample() -> Alert:
    return Alert(kind="feed_down", message="okx feed down for 12.0 s", key="okx", severity="warning",
                 context={"venue": "okx"}, ts_ns=1, source="run r1", repeats=2, dropped=1)


def test_payload_shapes() -> None:
    a = _sample()
    tg = payload_for("telegram", a, "-100123")
    assert tg["chat_id"] == "-100123" and "okx feed down" in tg["text"]
    lark = payload_for("lark", a)
    assert lark == {"msg_type": "text", "content": {"text": a.text()}}
    gen = payload_for("generic", a)
    assert gen["kind"] == "feed_down" and gen["context"] == {"venue": "okx"} and gen["repeats"] == 2
    assert "2 repeats" in a.text() and "1 more feed_down alert (rate limit)" in a.text()


def test_text_is_bounded_for_chat_apis() -> None:
    a = Alert(kind="halt", message="x" * 10_000, key="k", severity="critical", context={}, ts_ns=1)
    assert len(a.text()) <= 4000


# -- rate limit and dedup -----------------------------------------------------------


def test_dedup_sends_once_per_window_and_counts_repeats() -> None:
    clock = FakeClock()
    alerter, got = _alerter(clock, dedup_window_s=60, max_per_kind=100)
    assert alerter.alert("feed_down", "okx down", key="okx", venue="okx")
    for _ in range(5):
        clock.advance(1)
        assert not alerter.alert("feed_down", "okx down again", key="okx")
    # another key of the same kind is a different problem
    assert alerter.alert("feed_down", "gate down", key="gate")
    clock.advance(60)
    assert alerter.alert("feed_down", "okx still down", key="okx")
    assert [(a.key, a.repeats) for a in got] == [("okx", 0), ("gate", 0), ("okx", 5)]
    assert got[0].context == {"venue": "okx"} and got[0].source == "run t1" and got[0].ts_ns == 42
    assert alerter.statistics().repeats_held == 5
    # the count was reported: the next one after another window starts from zero
    clock.advance(61)
    alerter.alert("feed_down", "okx", key="okx")
    assert got[-1].repeats == 0


def test_default_key_is_the_message() -> None:
    clock = FakeClock()
    alerter, got = _alerter(clock)
    assert alerter.alert("halt", "halted by kill")
    assert not alerter.alert("halt", "halted by kill")
    assert alerter.alert("halt", "halted: daily loss")
    assert len(got) == 2


def test_rate_limit_per_kind_and_window() -> None:
    clock = FakeClock()
    alerter, got = _alerter(clock, max_per_kind=3, rate_window_s=10, dedup_window_s=0)
    sent = [alerter.alert("legging", f"leg {i}") for i in range(5)]
    assert sent == [True, True, True, False, False]
    # other kinds have their own budget
    assert alerter.alert("kill", "kill from ctl")
    clock.advance(5)
    assert not alerter.alert("legging", "leg 5")
    clock.advance(5)  # the first three leave the window
    assert alerter.alert("legging", "leg 6")
    assert got[-1].dropped == 3 and got[-1].message == "leg 6"
    assert alerter.statistics().rate_dropped == 3
    assert alerter.statistics().sent == 5


def test_sink_kind_filter() -> None:
    clock = FakeClock()
    rung: list[Alert] = []
    everything: list[Alert] = []
    alerter = Alerter(AlertsConfig(), clock=clock, sinks=[
        CallbackSink("bell", rung.append, kinds=["kill"]), CallbackSink("all", everything.append)])
    alerter.alert("kill", "k")
    alerter.alert("feed_down", "f")
    assert [a.kind for a in rung] == ["kill"]
    assert [a.kind for a in everything] == ["kill", "feed_down"]


def test_a_failing_sink_never_raises_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    got: list[Alert] = []
    broken = True

    def flaky(alert: Alert) -> None:
        if broken:
            raise ConnectionError("terminal gone")
        got.append(alert)

    alerter = Alerter(AlertsConfig(dedup_window_s=0), clock=clock,
                      sinks=[CallbackSink("flaky", flaky), CallbackSink("ok", got.append)])
    with caplog.at_level(logging.WARNING, logger="perpbot.alerts"):
        for i in range(4):
            assert alerter.alert("position_mismatch", f"mismatch {i}")  # returns, never raises
        broken = False
        alerter.alert("position_mismatch", "mismatch 4")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "flaky" in r.getMessage()]
    assert len(errors) == 1 and "terminal gone" in errors[0].getMessage()
    assert "flaky works again" in caplog.text
    assert alerter.statistics().sink_errors == 4
    assert len(got) == 4 + 2  # the healthy sink got every alert, the flaky one the last


def test_log_sink_levels(caplog: pytest.LogCaptureFixture) -> None:
    alerter = Alerter(AlertsConfig(), sinks=[LogSink()], clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="perpbot.alerts"):
        alerter.alert("kill", "kill from perpbot-ctl")
        alerter.alert("feed_down", "okx down", venue="okx")
    levels = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "perpbot.alerts"]
    assert levels[0][0] == "CRITICAL" and "kill from perpbot-ctl" in levels[0][1]
    assert levels[1][0] == "WARNING" and "venue=okx" in levels[1][1]


def test_unknown_kind_is_sent_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    alerter, got = _alerter(FakeClock())
    assert alerter.alert("lunch", "sandwiches")
    assert got[0].severity == "warning" and "unknown alert kind" in caplog.text


# -- events to alerts -------------------------------------------------------------------


def _hb(comp: str, status: str, ts: int) -> tuple[str, dict[str, Any]]:
    return "HEARTBEAT", {"component_name": comp, "status": status, "ts": ts}


def test_feed_down_longer_than_the_threshold_alerts_once_per_outage() -> None:
    st = EventAlertState()
    t = 100 * S
    st, out = alerts_from_events(st, [_hb("feed-okx", "connected", t), _hb("exec", "RUNNING", t)], t,
                                 feed_down_after_ms=5000)
    assert out == []
    st, out = alerts_from_events(st, [_hb("feed-okx", "down", t + 1 * S)], t + 1 * S, feed_down_after_ms=5000)
    assert out == []
    st, out = alerts_from_events(st, [_hb("feed-okx", "down", t + 5 * S)], t + 5 * S, feed_down_after_ms=5000)
    assert out == []  # down for 4 s only
    st, out = alerts_from_events(st, [_hb("feed-okx", "down", t + 6 * S)], t + 6 * S, feed_down_after_ms=5000)
    assert [(a.kind, a.key) for a in out] == [("feed_down", "okx")]
    assert out[0].context["down_ms"] == 5000 and out[0].message == "okx feed down for 5.0 s"
    st, out = alerts_from_events(st, [_hb("feed-okx", "down", t + 20 * S)], t + 20 * S, feed_down_after_ms=5000)
    assert out == []  # same outage
    st, out = alerts_from_events(st, [_hb("feed-okx", "connected", t + 21 * S)], t + 21 * S,
                                 feed_down_after_ms=5000)
    assert out == []
    st, out = alerts_from_events(st, [_hb("feed-okx", "down", t + 22 * S)], t + 22 * S, feed_down_after_ms=5000)
    st, out = alerts_from_events(st, (), t + 28 * S, feed_down_after_ms=5000)  # a timer tick finds it
    assert [a.kind for a in out] == ["feed_down"]


def test_a_feed_that_goes_silent_alerts() -> None:
    t = 100 * S
    st, _ = alerts_from_events(EventAlertState(), [_hb("feed-gate", "connected", t)], t, feed_down_after_ms=3000)
    st, out = alerts_from_events(st, (), t + 2 * S, feed_down_after_ms=3000)
    assert out == []
    st, out = alerts_from_events(st, (), t + 3 * S, feed_down_after_ms=3000)
    assert [(a.kind, a.key) for a in out] == [("feed_down", "gate")] and "no heartbeat" in out[0].message
    st, out = alerts_from_events(st, (), t + 9 * S, feed_down_after_ms=3000)
    assert out == []


def test_the_state_is_not_mutated() -> None:
    st0 = EventAlertState()
    st1, _ = alerts_from_events(st0, [_hb("feed-okx", "down", 5)], 10, feed_down_after_ms=1)
    assert dict(st0.feeds) == {} and "feed-okx" in st1.feeds


def test_process_crash_and_proposed_events() -> None:
    events: list[tuple[str, dict[str, Any]]] = [
        (PROCESS_EXITED, {"name": "scanner", "returncode": -11}),
        ("KILL", {"reason": "kill from perpbot-ctl"}),
        ("LEGGING", {"symbol": "BTC-PERP", "exchange": "okx", "action": "hedged"}),
        ("POSITION_MISMATCH", {"exchange": "gate", "symbol": "ETH-PERP", "expected": 1.0, "actual": 0.5}),
        ("DAILY_LOSS_LIMIT", {"realized_pnl": -510.0, "limit": 500.0}),
        ("ORDER_FILLED", {"order_id": "1"}),
    ]
    _, out = alerts_from_events(EventAlertState(), events, 1, feed_down_after_ms=1000)
    assert [(a.kind, a.key) for a in out] == [
        ("process_crash", "scanner"), ("kill", "kill"), ("legging", "BTC-PERP/okx"),
        ("position_mismatch", "gate/ETH-PERP"), ("daily_loss_limit", "daily_loss_limit")]
    assert out[0].message == "process scanner exited with code -11"
    assert out[1].message == "kill from perpbot-ctl"
    assert "expected 1.0, venue reports 0.5" in out[3].message
    # and the alerter takes them as they are
    got: list[Alert] = []
    Alerter(AlertsConfig(), sinks=[CallbackSink("rec", got.append)], clock=FakeClock()).submit(out)
    assert [a.kind for a in got] == [a.kind for a in out]
    assert got[0].severity == "critical" and got[2].severity == "warning"


def test_watched_topics_cover_what_the_mapper_reads() -> None:
    assert b"HEARTBEAT" in WATCHED_TOPICS and b"LEGGING" in WATCHED_TOPICS
    assert b"QUOTE_UPDATED" not in WATCHED_TOPICS  # the forwarder must not decode the quote stream


def test_a_legging_event_from_exec_becomes_a_legging_alert() -> None:
    from perpbot.alerts import EventAlertState, alerts_from_events

    payload = {"symbol": "BTC-PERP", "exchange": "okx/bybit", "action": "leg_mismatch", "detail": "sell expired"}
    _, reqs = alerts_from_events(EventAlertState(), [("LEGGING", payload)], 1, feed_down_after_ms=1000)
    assert [r.kind for r in reqs] == ["legging"]
