"""The launcher's restart policy: backoff per crash, a crash loop halts trading, the market's death ends the run."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from kit import EXAMPLE_CONFIG, make_config, segments

from perpbot.launch import CRASH_LIMIT, RESTART_BASE_S, Child, ChildFailed, Launcher


def _dead_child(name: str, restartable: bool) -> Child:
    c = Child(name, "x", slot=3, restartable=restartable)
    c.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    c.proc.wait()
    return c


def test_restart_backoff_doubles_and_a_crash_loop_halts_trading() -> None:
    cfg = make_config()
    with segments(cfg) as (_, status):
        launcher = Launcher(cfg, EXAMPLE_CONFIG, out=io.StringIO())
        launcher.status = status
        c = _dead_child("feed-okx", restartable=True)
        now = 100.0
        delays = []
        for _ in range(CRASH_LIMIT - 1):
            launcher._child_exited(c, now)
            assert c.proc is None and c.restart_at is not None
            delays.append(c.restart_at - now)
            c.proc = _dead_child("feed-okx", True).proc
            now += 1.0
        assert delays == [RESTART_BASE_S * 2**i for i in range(CRASH_LIMIT - 1)]
        assert int(status.procs[3]["restarts"]) == CRASH_LIMIT - 1
        assert not status.halted()
        with pytest.raises(ChildFailed, match="crashed 5 times"):
            launcher._child_exited(c, now)
        assert status.halted()


def test_crashes_outside_the_window_do_not_add_up() -> None:
    cfg = make_config()
    with segments(cfg) as (_, status):
        launcher = Launcher(cfg, EXAMPLE_CONFIG, out=io.StringIO())
        launcher.status = status
        c = _dead_child("scanner", restartable=True)
        for i in range(CRASH_LIMIT * 2):
            launcher._child_exited(c, 1000.0 * i)  # one crash every 1000 s: never a loop
            assert c.restart_at == pytest.approx(1000.0 * i + RESTART_BASE_S)
            c.proc = _dead_child("scanner", True).proc
        assert not status.halted()


def test_a_process_that_cannot_be_restarted_ends_the_run() -> None:
    cfg = make_config()
    with segments(cfg) as (_, status):
        launcher = Launcher(cfg, EXAMPLE_CONFIG, out=io.StringIO())
        launcher.status = status
        # the market's ports are gone with it (exec is restartable now: see test_recovery)
        with pytest.raises(ChildFailed, match="market exited unexpectedly with code 3"):
            launcher._child_exited(_dead_child("market", restartable=False), 1.0)


def _capturing_launcher(cfg, status):  # type: ignore[no-untyped-def]
    from perpbot.alerts import Alerter, CallbackSink

    launcher = Launcher(cfg, EXAMPLE_CONFIG, out=io.StringIO())
    launcher.status = status
    got: list[str] = []
    launcher.alerter = Alerter(cfg.alerts, sinks=[CallbackSink("test", lambda a: got.append(a.kind))])
    return launcher, got


def test_exec_refusing_to_trade_on_a_position_mismatch_alerts_as_such() -> None:
    from perpbot.shm.layout import ProcError

    cfg = make_config()
    with segments(cfg) as (_, status):
        launcher, got = _capturing_launcher(cfg, status)
        c = _dead_child("exec", restartable=True)
        status.procs[3]["last_error"] = int(ProcError.POSITION_MISMATCH)
        launcher._child_exited(c, 1.0)
        launcher.alerter.wait_idle()
        assert got == ["position_mismatch"]


def test_the_daily_loss_limit_turns_trading_reduce_only_and_alerts() -> None:
    from perpbot.alerts import EventAlertState, alerts_from_events
    from perpbot.shm.layout import TradingState

    cfg = make_config()
    with segments(cfg) as (_, status):
        launcher, got = _capturing_launcher(cfg, status)
        status.set_trading_state(TradingState.RUNNING)
        launcher.watched = [("DAILY_LOSS_LIMIT", {"realized_pnl": -120.0, "limit": 100.0})]
        launcher._daily_loss_limit()
        assert status.trading_state() == TradingState.REDUCE_ONLY
        _, reqs = alerts_from_events(EventAlertState(), launcher.watched, 1, feed_down_after_ms=1000)
        launcher.alerter.submit(reqs)
        launcher.alerter.wait_idle()
        assert got == ["daily_loss_limit"]
