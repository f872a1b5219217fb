"""The monitor's model, view and controller on real segments, without a terminal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urwid
import yaml
from kit import example_raw, make_config, segments

from perpbot import bus
from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.metrics import bucket_of
from perpbot.monitor import (
    DEGRADED_AFTER_MS,
    MonitorController,
    MonitorModel,
    MonitorView,
    attach_readonly,
    board_markup,
    describe_reply,
    main,
    snapshot,
    sparkline,
    summary_line,
)
from perpbot.scanner.edge import net_edge_bps
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import N_BUCKETS, FeedState, Hop, ProcState, Role, TradingState

MS = 1_000_000


@pytest.fixture
def cfg() -> Config:
    return make_config()


@pytest.fixture
def segs(cfg: Config) -> Iterator[tuple[QuoteBoard, StatusBoard]]:
    with segments(cfg) as (board, status):
        yield board, status


def _set_capital(status: StatusBoard, venue: int, free: float, locked: float, total: float, realized: float,
                 open_orders: int = 0) -> None:
    rec = status.capital[venue]
    rec["free"], rec["locked"], rec["total"], rec["realized_pnl"] = free, locked, total, realized
    rec["open_orders"] = open_orders


def _vi(cfg: Config, name: str) -> int:
    return cfg.venue_names.index(name)


def _si(cfg: Config, name: str) -> int:
    return cfg.symbol_names.index(name)


def _quote(board: QuoteBoard, status: StatusBoard, venue: int, symbol: int, bid: float, ask: float,
           recv_ns: int | None = None) -> None:
    t = now_ns() if recv_ns is None else recv_ns
    status.set_feed_state(venue, FeedState.CONNECTED)
    status.feeds[venue]["last_recv_ns"] = t
    board.writer(venue).write(symbol, bid, ask, 5.0, 5.0, t, t)


def _btc_market(cfg: Config, board: QuoteBoard, status: StatusBoard) -> None:
    """Every venue at 60000/60001, bitget with the highest gross bid, extended the best net of fees."""
    btc = _si(cfg, "BTC-PERP")
    for v in range(len(cfg.venue_names)):
        _quote(board, status, v, btc, 60000.0, 60001.0)
    # bitget (6 bps taker) bids highest gross; extended (2.5 bps) pays more after fees
    _quote(board, status, _vi(cfg, "bitget"), btc, 60040.0, 60041.0)
    _quote(board, status, _vi(cfg, "extended"), btc, 60038.0, 60039.0)


def test_best_edge_is_net_of_fees_and_highlighted(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    _btc_market(cfg, board, status)
    m = snapshot(status, board, cfg, None, now_ns())
    row = m.board[_si(cfg, "BTC-PERP")]
    assert row.best is not None
    # cheapest buy after fees is paradex (3 bps) at the common ask; best sell after fees is extended
    assert (cfg.venue_names[row.best.buy_venue], cfg.venue_names[row.best.sell_venue]) == ("paradex", "extended")
    want = net_edge_bps(60001.0, 60038.0, cfg.venues["paradex"].taker_fee_bps, cfg.venues["extended"].taker_fee_bps)
    assert row.best.edge_bps == pytest.approx(want)
    assert row.best.edge_bps > 0
    assert (row.best.buy_price, row.best.sell_price) == (60001.0, 60038.0)
    markup = board_markup(m)
    assert ("buy", "60001.0") in markup and ("sell", "60038.0") in markup
    # the gross best bid is not highlighted
    assert ("sell", "60040.0") not in markup
    # symbols nobody quoted have no pair
    assert m.board[_si(cfg, "ETH-PERP")].best is None


def test_stale_and_disconnected_quotes_are_flagged_and_never_the_best(
        cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    _btc_market(cfg, board, status)
    btc = _si(cfg, "BTC-PERP")
    t = now_ns()
    old = t - (cfg.scanner.stale_after_ms + 500) * MS
    # extended's quote is old, so is its feed; okx disconnected right after a very good bid
    _quote(board, status, _vi(cfg, "extended"), btc, 60038.0, 60039.0, recv_ns=old)
    _quote(board, status, _vi(cfg, "okx"), btc, 60100.0, 60101.0)
    status.set_feed_state(_vi(cfg, "okx"), FeedState.DOWN)
    m = snapshot(status, board, cfg, None, t)
    row = m.board[btc]
    assert row.cells[_vi(cfg, "extended")] is not None and row.cells[_vi(cfg, "extended")].stale  # type: ignore[union-attr]
    assert row.cells[_vi(cfg, "okx")].stale  # type: ignore[union-attr]
    assert not row.cells[_vi(cfg, "binanceusdm")].stale  # type: ignore[union-attr]
    assert row.best is not None
    assert cfg.venue_names[row.best.sell_venue] == "bitget"
    venues = {v.name: v for v in m.venues}
    assert venues["extended"].stale and venues["extended"].last_quote_age_ms == pytest.approx(
        cfg.scanner.stale_after_ms + 500, abs=1)
    assert venues["okx"].stale and venues["okx"].state == "DOWN"
    assert not venues["bitget"].stale and venues["bitget"].state == "CONNECTED"
    status.feeds[_vi(cfg, "gate")]["stale_symbols"] = 2
    status.feeds[_vi(cfg, "gate")]["reconnects"] = 3
    g = {v.name: v for v in snapshot(status, board, cfg, None, t).venues}["gate"]
    assert (g.stale_symbols, g.reconnects) == (2, 3)
    assert "stale: okx,extended" in summary_line(m)


def test_message_rate_comes_from_counter_deltas(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    okx, bybit = _vi(cfg, "okx"), _vi(cfg, "bybit")
    status.feeds[okx]["frames"] = 100
    status.feeds[bybit]["frames"] = 50
    t0 = now_ns()
    first = snapshot(status, board, cfg, None, t0)
    assert all(v.rate_fps is None for v in first.venues)  # one sample has no rate
    status.feeds[okx]["frames"] = 600
    second = snapshot(status, board, cfg, first, t0 + 500 * MS)
    rates = {v.name: v.rate_fps for v in second.venues}
    assert rates["okx"] == pytest.approx(1000.0)
    assert rates["bybit"] == pytest.approx(0.0)
    # a restarted feed's counter starts again from zero: no negative rate
    status.feeds[okx]["frames"] = 10
    third = snapshot(status, board, cfg, second, t0 + 1000 * MS)
    assert {v.name: v.rate_fps for v in third.venues}["okx"] is None


def test_heartbeat_older_than_a_second_is_degraded(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    t = now_ns()
    status.register_proc(0, "launcher", Role.LAUNCHER, 111)
    status.set_proc_state(0, ProcState.RUNNING)
    status.register_proc(1, "scanner", Role.SCANNER, 222)
    status.set_proc_state(1, ProcState.RUNNING)
    status.procs[1]["heartbeat_ns"] = t - int((DEGRADED_AFTER_MS + 200) * MS)
    status.register_proc(2, "feed-okx", Role.FEED, 333)
    status.set_proc_state(2, ProcState.STOPPED)
    status.procs[2]["heartbeat_ns"] = t - 60_000 * MS  # stopped processes do not beat
    m = snapshot(status, board, cfg, None, t)
    procs = {p.name: p for p in m.processes}
    assert set(procs) == {"launcher", "scanner", "feed-okx"}
    assert procs["launcher"].state == "RUNNING" and not procs["launcher"].degraded
    assert procs["scanner"].state == "DEGRADED" and procs["scanner"].degraded
    assert procs["scanner"].heartbeat_age_ms == pytest.approx(DEGRADED_AFTER_MS + 200)
    assert procs["feed-okx"].state == "STOPPED" and not procs["feed-okx"].degraded
    assert procs["scanner"].pid == 222
    assert m.degraded == ("scanner",)
    assert "DEGRADED: scanner" in summary_line(m)


def test_positions_are_netted_per_asset_and_capital_summed(
        cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    btc, eth = _si(cfg, "BTC-PERP"), _si(cfg, "ETH-PERP")
    status.positions[_vi(cfg, "binanceusdm"), btc] = (0.1, 60000.0)
    status.positions[_vi(cfg, "okx"), btc] = (-0.1, 60010.0)
    status.positions[_vi(cfg, "bybit"), eth] = (2.0, 3000.0)
    status.positions[_vi(cfg, "gate"), eth] = (-0.5, 3001.0)
    _set_capital(status, _vi(cfg, "okx"), 9000.0, 1000.0, 10000.0, 1.25)
    _set_capital(status, _vi(cfg, "bybit"), 5000.0, 0.0, 5000.0, -0.5)
    m = snapshot(status, board, cfg, None, now_ns())
    assert {(p.venue, p.symbol, p.qty) for p in m.positions} == {
        ("binanceusdm", "BTC-PERP", 0.1), ("okx", "BTC-PERP", -0.1), ("bybit", "ETH-PERP", 2.0),
        ("gate", "ETH-PERP", -0.5)}
    assert dict(m.net_by_asset) == {"BTC": 0.0, "ETH": 1.5}
    okx = {c.venue: c for c in m.capital}["okx"]
    assert (okx.free, okx.locked, okx.total, okx.realized_pnl) == (9000.0, 1000.0, 10000.0, 1.25)
    assert m.realized_pnl == pytest.approx(0.75)


def test_recent_opportunities_trades_and_their_outcome(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    t = now_ns()
    btc, eth = _si(cfg, "BTC-PERP"), _si(cfg, "ETH-PERP")
    pv, ev = _vi(cfg, "paradex"), _vi(cfg, "extended")
    status.push_opportunity(ts_detect_ns=t - 5000 * MS, opp_id=1, symbol=btc, buy_venue=pv, sell_venue=ev,
                            edge_bps=3.5, buy_price=60001.0, sell_price=60038.0, size=1.0)
    status.push_opportunity(ts_detect_ns=t - 4000 * MS, opp_id=2, symbol=eth, buy_venue=ev, sell_venue=pv,
                            edge_bps=1.5, buy_price=3000.0, sell_price=3001.0, size=1.0)
    status.push_opportunity(ts_detect_ns=t - 1 * MS, opp_id=3, symbol=eth, buy_venue=pv, sell_venue=ev,
                            edge_bps=2.0, buy_price=3000.0, sell_price=3001.0, size=1.0)
    # trade 7 came from opportunity 1 (opened 20 ms after it) and closed with a profit
    idx = status.push_trade(trade_id=7, symbol=btc, buy_venue=pv, sell_venue=ev, state=1, size=0.016,
                            open_ns=t - 4980 * MS, close_ns=0, realized_pnl=0.0)
    status.update_trade(idx, state=2, close_ns=t - 4500 * MS, realized_pnl=0.4321)
    status.push_trade(trade_id=8, symbol=eth, buy_venue=ev, sell_venue=pv, state=1, size=0.3,
                      open_ns=t - 100 * MS, close_ns=0, realized_pnl=0.0)
    m = snapshot(status, board, cfg, None, t)
    assert [o.opp_id for o in m.opportunities] == [3, 2, 1]  # newest first
    outcomes = {o.opp_id: o.outcome for o in m.opportunities}
    assert outcomes == {1: "trade #7", 2: "not traded", 3: "pending"}
    trades = {tr.trade_id: tr for tr in m.trades}
    assert trades[7].closed and trades[7].realized_pnl == pytest.approx(0.4321)
    assert trades[7].held_ms == pytest.approx(480)
    assert not trades[8].closed and (trades[8].buy_venue, trades[8].sell_venue) == ("extended", "paradex")


def test_latency_percentiles_and_text_histogram(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    counts = [0] * N_BUCKETS
    for ns in [20_000] * 90 + [200_000] * 10:
        counts[bucket_of(ns)] += 1
    status.add_histogram(Hop.TICK_TO_SIGNAL, counts)
    m = snapshot(status, board, cfg, None, now_ns())
    hops = {h.name: h for h in m.latency}
    h = hops["tick_to_signal"]
    assert h.count == 100
    assert h.p50_us == pytest.approx(20, rel=0.15) and h.p99_us == pytest.approx(200, rel=0.15)
    assert 1 < len(h.bins) <= 16 and sum(h.bins) == 100
    assert h.lo_us <= 20 and h.hi_us >= 200
    spark = sparkline(h.bins)
    assert spark[0] == "█" and spark[-1] != " " and len(spark) == len(h.bins)
    assert hops["tick_to_order"].count == 0 and hops["tick_to_order"].p50_us is None


def _screen_text(view: MonitorView, size: tuple[int, int]) -> str:
    return "\n".join(line.decode() for line in view.frame.render(size).text)


def test_view_renders_at_80x24_and_flows_wider(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    _btc_market(cfg, board, status)
    _set_capital(status, 0, 1000.0, 0.0, 1000.0, 2.5)
    m = snapshot(status, board, cfg, None, now_ns(), run_id="r1")
    view = MonitorView()
    view.update(m)
    small = _screen_text(view, (80, 24))
    lines = small.splitlines()
    assert len(lines) == 24 and all(len(ln) <= 80 for ln in lines)
    assert "PnL +2.50 USD" in lines[0] and "RUNNING" in lines[0]
    assert "binanceusdm" in small and "60038.0" in small and "k kill" in lines[-1]
    wide = _screen_text(view, (170, 50))
    # two sections side by side: the board and the feeds table share their first row
    assert any("BOARD" in ln and "FEEDS" in ln for ln in wide.splitlines())
    assert "LATENCY" in wide
    # scrolling reaches the last section at 80x24
    for _ in range(6):
        view.frame.keypress((80, 24), "page down")
    assert "LATENCY" in _screen_text(view, (80, 24))


class _FakeRun:
    """What the controller needs from an attached run, over test segments."""

    def __init__(self, cfg: Config, board: QuoteBoard, status: StatusBoard) -> None:
        self.cfg, self.board, self.status = cfg, board, status
        self.run_id = "fake"
        self.endpoints = bus.endpoints(Path("nowhere"))
        self.is_alive = True

    def alive(self) -> bool:
        return self.is_alive

    def snapshot(self, prev: MonitorModel | None) -> MonitorModel:
        return snapshot(self.status, self.board, self.cfg, prev, now_ns(), run_id=self.run_id)


def _wait_status(ctl: MonitorController, view: MonitorView, want: str) -> str:
    end = time.monotonic() + 5
    while time.monotonic() < end:
        ctl.refresh()
        text = view.status.text
        if want in text:
            return str(text)
        time.sleep(0.01)
    raise AssertionError(f"status line never showed {want!r}: {view.status.text!r}")


def test_controller_keys_confirmations_and_replies(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    sent: list[str] = []

    def request(ep: bus.Endpoints, cmd: str) -> dict[str, Any]:
        sent.append(cmd)
        if cmd == "flatten":
            return {"ok": False, "error": "'flatten' is not available in this build"}
        if cmd == "kill":
            status.set_halt()
            return {"ok": True, "state": "HALTED", "command_to_halt_us": 12.5}
        return {"ok": True, "state": {"pause": "PAUSED", "resume": "RUNNING"}[cmd]}

    view = MonitorView()
    run = _FakeRun(cfg, board, status)
    ctl = MonitorController(run, view, request=request)  # type: ignore[arg-type]
    ctl.refresh()
    assert ctl.on_key("k")
    assert "y/n" in view.status.text and sent == []
    assert ctl.on_key("n")
    assert "kill cancelled" in view.status.text and sent == []
    ctl.on_key("p")
    _wait_status(ctl, view, "pause: ok, PAUSED")
    ctl.on_key("f")
    ctl.on_key("y")
    _wait_status(ctl, view, "not available in this build")
    ctl.on_key("k")
    ctl.on_key("y")
    _wait_status(ctl, view, "trading HALTED")
    assert sent == ["pause", "flatten", "kill"]
    assert ctl.model is not None and ctl.model.halted and ctl.model.trading_state == TradingState.HALTED.name
    assert not ctl.on_key("x")  # unknown keys fall through to urwid
    run.is_alive = False
    ctl.refresh()
    assert "ended" in view.status.text
    ctl.on_key("p")
    assert "nothing to control" in view.status.text and sent == ["pause", "flatten", "kill"]
    with pytest.raises(urwid.ExitMainLoop):
        ctl.on_key("q")


def test_describe_reply() -> None:
    assert describe_reply("resume", {"ok": False, "error": "trading is halted"}) == "resume: refused: trading is halted"
    assert describe_reply("pause", {"ok": True, "state": "PAUSED"}) == "pause: ok, PAUSED"


def test_attach_is_read_only(cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    run_id = status.segment.name.removeprefix("perpbot-").removesuffix("-status")
    _btc_market(cfg, board, status)
    ro_status, ro_board = attach_readonly(run_id, cfg)
    try:
        m = snapshot(ro_status, ro_board, cfg, None, now_ns())
        assert m.board[_si(cfg, "BTC-PERP")].best is not None
        with pytest.raises(ValueError, match="read-only"):  # PROT_READ: numpy refuses, the kernel would fault
            ro_status.glob["halt"] = 1
        with pytest.raises(TypeError):
            ro_board.segment.buf[0] = 0
        assert not ro_status.halted()
    finally:
        ro_status.close()
        ro_board.close()
    # the writer's mapping outlives the reader's
    status.set_halt()
    assert status.halted()


def test_run_totals_come_from_the_exec_and_scanner_counters(
        cfg: Config, segs: tuple[QuoteBoard, StatusBoard]) -> None:
    board, status = segs
    status.register_proc(2, "exec", Role.EXEC, 444)
    status.heartbeat(2, [0] * 5 + [5, 3])  # TRADES_OPENED, TRADES_CLOSED
    status.register_proc(3, "scanner", Role.SCANNER, 555)
    status.heartbeat(3, [100, 50, 42])  # PASSES, CHANGES, OPPORTUNITIES
    m = snapshot(status, board, cfg, None, now_ns(), run_id="r2")
    assert (m.trades_opened, m.trades_closed, m.opportunities_found) == (5, 3, 42)
    assert "opportunities 42 trades 3 closed 2 open" in summary_line(m)
    view = MonitorView()
    view.update(m)
    assert "trades 3" in _screen_text(view, (80, 24)).splitlines()[0]


def test_main_without_a_live_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = example_raw()
    raw["run"].update(run_root=str(tmp_path / "runs"))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(cfg_path)]) == 3
    assert "no live PerpBot run" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_the_monitor_rings_the_bell_for_alert_events(tmp_path: Path) -> None:
    import time as _time

    import orjson
    import zmq

    from perpbot import bus
    from perpbot.monitor import MonitorController, MonitorView

    ep = bus.endpoints(tmp_path)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.bind(ep.events)

    class Run:
        endpoints = ep

    rang: list[int] = []
    view = MonitorView()
    c = MonitorController(Run(), view, request=lambda *a: {})  # type: ignore[arg-type]
    c.subscribe_alerts(lambda: rang.append(1))
    try:
        assert pub.poll(5000), "the monitor never subscribed"
        assert pub.recv() == b"\x01ALERT"
        pub.send_multipart([b"ALERT", orjson.dumps({"kind": "kill", "message": "kill from perpbot-ctl"})])
        end = _time.monotonic() + 5
        while not rang and _time.monotonic() < end:
            c._poll_alerts()
            _time.sleep(0.01)
        assert rang == [1]
        assert "ALERT kill: kill from perpbot-ctl" in view.status.text
    finally:
        c.close()
        pub.close(0)
        ctx.term()


def test_recent_fills_and_open_orders_are_shown(segs: tuple[QuoteBoard, StatusBoard], cfg: Config) -> None:
    board, status = segs
    _btc_market(cfg, board, status)
    _set_capital(status, 0, 1000.0, 0.0, 1000.0, 0.0, open_orders=2)
    status.push_fill(ts_ns=now_ns(), trade_id=7, symbol=0, venue=1, side=2, qty=0.016, price=60300.0, fee=0.48)
    m = snapshot(status, board, cfg, None, now_ns())
    (f,) = m.fills
    assert (f.trade_id, f.venue, f.symbol, f.side, f.qty, f.price, f.fee) == (
        7, cfg.venue_names[1], "BTC-PERP", "sell", 0.016, 60300.0, 0.48)
    assert m.capital[0].open_orders == 2
    view = MonitorView()
    view.update(m, "")
    text = "".join(w.text for w in view.sections)
    assert "FILLS" in text and "60300" in text
