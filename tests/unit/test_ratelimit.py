"""Rate-limit budgets: exact sliding windows, headroom kept for exits, config overrides."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kit import example_raw

from perpbot.config import ccxt_id_of, parse_config
from perpbot.errors import ConfigError
from perpbot.exec.ratelimit import (
    DEFAULT_LIMITS,
    VENUE_LIMITS,
    Priority,
    RateBudget,
    RateLimit,
    budgets_from_config,
    limits_for,
)

MS = 1_000_000
ENTRY, EXIT = Priority.ENTRY, Priority.EXIT


class FakeClock:
    def __init__(self, t_ns: int = 1_000 * MS) -> None:
        self.t = t_ns

    def __call__(self) -> int:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += round(ms * MS)


def budget(*limits: RateLimit, headroom: float = 20, clock: FakeClock | None = None) -> RateBudget:
    return RateBudget(limits, headroom, clock=clock or FakeClock())


# -- window arithmetic ---------------------------------------------------------------------------


def test_window_edges_are_exact() -> None:
    clock = FakeClock()
    b = budget(RateLimit(3, 1000, "requests"), headroom=0, clock=clock)
    start = clock.t
    assert [b.try_acquire(EXIT) for _ in range(4)] == [True, True, True, False]
    clock.t = start + 1000 * MS - 1  # 1 ns before the first stamps leave
    assert not b.try_acquire(EXIT)
    assert b.usage()[0].used == 3
    assert b.wait_ms(EXIT) == pytest.approx(1e-6)
    clock.t = start + 1000 * MS  # a stamp counts while now - stamp < window
    assert b.usage()[0].used == 0
    assert b.wait_ms(EXIT) == 0.0
    assert [b.try_acquire(EXIT) for _ in range(4)] == [True, True, True, False]


def test_stamps_leave_one_by_one() -> None:
    clock = FakeClock()
    b = budget(RateLimit(2, 100, "requests"), headroom=0, clock=clock)
    assert b.try_acquire(EXIT)
    clock.advance_ms(40)
    assert b.try_acquire(EXIT)
    assert not b.try_acquire(EXIT)
    assert b.wait_ms(EXIT) == pytest.approx(60.0)  # the first stamp leaves at 100 ms
    clock.advance_ms(60)
    assert b.try_acquire(EXIT)
    assert not b.try_acquire(EXIT)
    assert b.wait_ms(EXIT) == pytest.approx(40.0)  # now the one from 40 ms is the oldest


def test_all_windows_or_nothing() -> None:
    clock = FakeClock()
    b = budget(RateLimit(10, 1000, "requests"), RateLimit(2, 1000, "orders"), headroom=0, clock=clock)
    assert b.try_acquire(EXIT, orders=1)
    assert b.try_acquire(EXIT, orders=1)
    assert not b.try_acquire(EXIT, orders=1)  # orders full: the request is not counted either
    used = {u.kind: u.used for u in b.usage()}
    assert used == {"requests": 2, "orders": 2}
    assert b.try_acquire(EXIT)  # a read needs no order slot
    assert {u.kind: u.used for u in b.usage()} == {"requests": 3, "orders": 2}


def test_weights_and_waits_over_several_stamps() -> None:
    clock = FakeClock()
    b = budget(RateLimit(10, 1000, "requests"), headroom=0, clock=clock)
    assert b.try_acquire(EXIT, requests=4)
    clock.advance_ms(100)
    assert b.try_acquire(EXIT, requests=4)
    clock.advance_ms(100)
    # 8 used: 5 more need the first 4 gone (3 would do, but stamps leave whole)
    assert b.wait_ms(EXIT, requests=5) == pytest.approx(800.0)
    assert b.wait_ms(EXIT, requests=7) == pytest.approx(900.0)  # needs both stamps gone
    assert b.wait_ms(EXIT, requests=11) is None  # more than the window ever holds
    assert not b.try_acquire(EXIT, requests=11)


def test_waits_for_the_slowest_window() -> None:
    clock = FakeClock()
    b = budget(RateLimit(5, 100, "requests"), RateLimit(1, 1000, "orders"), headroom=0, clock=clock)
    assert b.try_acquire(EXIT, orders=1)
    assert b.wait_ms(EXIT, orders=1) == pytest.approx(1000.0)
    assert b.wait_ms(EXIT) == 0.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        RateLimit(0, 1000, "requests")
    with pytest.raises(ValueError, match="window_ms"):
        RateLimit(1, -5, "orders")
    with pytest.raises(ValueError, match="kind"):
        RateLimit(1, 1000, "weight")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="headroom"):
        RateBudget([RateLimit(1, 1, "requests")], 95)
    with pytest.raises(ValueError, match="at least one"):
        RateBudget([], 20)
    b = budget(RateLimit(1, 1, "requests"))
    with pytest.raises(ValueError, match="orders"):
        b.try_acquire(EXIT, orders=-1)


# -- headroom --------------------------------------------------------------------------------------


def test_entries_are_refused_while_exits_still_pass() -> None:
    clock = FakeClock()
    b = budget(RateLimit(10, 1000, "requests"), RateLimit(5, 1000, "orders"), headroom=20, clock=clock)
    # orders: 5 * 80% = 4 for entries
    assert [b.try_acquire(ENTRY, orders=1) for _ in range(5)] == [True, True, True, True, False]
    assert b.wait_ms(ENTRY, orders=1) == pytest.approx(1000.0)
    assert b.try_acquire(EXIT, orders=1)  # the reserved fifth
    assert not b.try_acquire(EXIT, orders=1)
    assert b.try_acquire(EXIT)  # cancels and fetches still have request room (6 of 10 used)
    assert not b.try_acquire(ENTRY, orders=1)
    assert b.try_acquire(ENTRY)  # 7 of the 8 requests entries may use
    assert not b.try_acquire(ENTRY, requests=2)
    assert b.try_acquire(EXIT, requests=3)  # 10 of 10
    assert not b.try_acquire(EXIT)


def test_entry_read_fits_under_the_entry_share() -> None:
    clock = FakeClock()
    b = budget(RateLimit(10, 1000, "requests"), headroom=20, clock=clock)
    assert sum(b.try_acquire(ENTRY) for _ in range(20)) == 8
    assert sum(b.try_acquire(EXIT) for _ in range(20)) == 2
    assert [u.as_dict() for u in b.usage()] == [
        {"kind": "requests", "limit": 10, "window_ms": 1000, "used": 10, "entry_limit": 8}]


@pytest.mark.parametrize("limit", [1, 3, 7, 10, 17, 300, 2400])
@pytest.mark.parametrize("headroom", [0, 5, 12.5, 20, 33.3, 90])
def test_a_burst_of_entries_never_takes_the_headroom(limit: int, headroom: float) -> None:
    clock = FakeClock()
    b = budget(RateLimit(limit, 1000, "requests"), RateLimit(limit, 500, "orders"), headroom=headroom,
               clock=clock)
    for i in range(1000):
        b.try_acquire(ENTRY, orders=1)
        if i % 10 == 0:
            clock.advance_ms(3)  # the burst spans several windows: stamps leave while it goes on
    for u in b.usage():
        free = u.limit - u.used
        assert free >= u.limit * headroom / 100 - 1e-9, u
        assert u.used <= u.entry_limit
    # and the reserve really is usable by exits, in every window at once
    reserve = min(u.limit - u.used for u in b.usage())
    assert all(b.try_acquire(EXIT, orders=1) for _ in range(reserve))


def test_zero_headroom_lets_entries_use_everything() -> None:
    b = budget(RateLimit(4, 1000, "orders"), headroom=0)
    assert sum(b.try_acquire(ENTRY, orders=1, requests=0) for _ in range(10)) == 4


def test_entries_get_nothing_when_the_share_rounds_to_zero() -> None:
    b = budget(RateLimit(1, 1000, "orders"), headroom=20)
    assert b.wait_ms(ENTRY, orders=1) is None
    assert not b.try_acquire(ENTRY, orders=1)
    assert b.try_acquire(EXIT, orders=1)


# -- acquire (real sleeps, tiny windows; outcomes only) -----------------------------------------------


def test_acquire_waits_for_the_oldest_stamp_then_succeeds() -> None:
    async def run() -> tuple[bool, bool, bool]:
        b = RateBudget([RateLimit(2, 30, "orders")], headroom_pct=0)
        first = b.try_acquire(EXIT, orders=1) and b.try_acquire(EXIT, orders=1)
        full = b.try_acquire(EXIT, orders=1)
        waited = await b.acquire(EXIT, orders=1, timeout_s=2.0)
        return first, full, waited

    assert asyncio.run(run()) == (True, False, True)


def test_acquire_times_out_when_the_window_cannot_clear_in_time() -> None:
    async def run() -> tuple[bool, bool, int]:
        b = RateBudget([RateLimit(1, 60_000, "orders")], headroom_pct=0)
        assert b.try_acquire(EXIT, orders=1)
        timed_out = await b.acquire(EXIT, orders=1, timeout_s=0.02)
        never = await b.acquire(EXIT, orders=2, timeout_s=0.02)
        return timed_out, never, b.usage()[0].used

    assert asyncio.run(run()) == (False, False, 1)  # nothing counted for the refused calls


def test_concurrent_exits_share_the_window() -> None:
    async def run() -> list[bool]:
        b = RateBudget([RateLimit(2, 40, "orders")], headroom_pct=0)
        return list(await asyncio.gather(*(b.acquire(EXIT, orders=1, timeout_s=2.0) for _ in range(5))))

    assert asyncio.run(run()) == [True] * 5


# -- the table and the config ------------------------------------------------------------------------


def test_every_native_feed_has_published_limits() -> None:
    from perpbot.feeds.registry import FEEDS

    for feed in FEEDS:
        assert feed in VENUE_LIMITS, feed
        assert limits_for(feed) == VENUE_LIMITS[feed]
        kinds = {r.kind for r in VENUE_LIMITS[feed]}
        assert "requests" in kinds, feed
    assert ccxt_id_of(None, "ccxt:okx") == "okx"
    assert ccxt_id_of(None, "gate") == "gate"
    assert limits_for("ccxt:okx") == VENUE_LIMITS["okx"]
    assert limits_for("ccxt:aster") == DEFAULT_LIMITS


def test_budgets_from_the_example_config() -> None:
    cfg = parse_config(example_raw())
    budgets = budgets_from_config(cfg)
    assert set(budgets) == set(cfg.venues)
    for name, b in budgets.items():
        assert b.limits == limits_for(cfg.venues[name].feed)
        assert b.headroom_pct == 20.0
    bn = budgets["binanceusdm"]
    assert [(u.kind, u.limit, u.window_ms, u.entry_limit) for u in bn.usage()] == [
        ("requests", 2400, 60_000, 1920), ("orders", 300, 10_000, 240), ("orders", 1200, 60_000, 960)]


def _with(mutate: Any) -> dict[str, Any]:
    raw = example_raw()
    mutate(raw)
    return raw


def test_config_overrides_a_venues_limits_and_the_headroom() -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["venues"]["okx"]["rate_limits"] = [{"limit": 5, "window_ms": 1000, "kind": "orders"},
                                               {"limit": 50, "window_ms": 2000, "kind": "requests"}]
        raw.setdefault("exec", {})["hedge_headroom_pct"] = 40

    cfg = parse_config(_with(mutate))
    budgets = budgets_from_config(cfg, clock=FakeClock())
    assert budgets["okx"].limits == (RateLimit(5, 1000, "orders"), RateLimit(50, 2000, "requests"))
    assert [u.entry_limit for u in budgets["okx"].usage()] == [3, 30]
    assert budgets["bybit"].limits == VENUE_LIMITS["bybit"]
    assert budgets["bybit"].headroom_pct == 40.0


@pytest.mark.parametrize(("entries", "path", "words"), [
    ([{"limit": 0, "window_ms": 1000, "kind": "orders"}], "$.venues.okx.rate_limits[0].limit", "positive"),
    ([{"limit": 5, "window_ms": 1000, "kind": "orders"}, {"limit": 5, "window_ms": -1, "kind": "orders"}],
     "$.venues.okx.rate_limits[1].window_ms", "positive"),
    ([{"limit": 5, "window_ms": 1000, "kind": "weight"}], "$.venues.okx.rate_limits[0].kind", "requests, orders"),
    ([], "$.venues.okx.rate_limits", "at least one"),
    ([{"limit": "5", "window_ms": 1000, "kind": "orders"}], "$.venues.okx.rate_limits[0].limit", "positive"),
    ([{"limit": 2.5, "window_ms": 1000, "kind": "orders"}], "$.venues.okx.rate_limits[0].limit", "whole"),
    ([{"limit": 5, "kind": "orders"}], "$.venues.okx.rate_limits[0].window_ms", "missing"),
    ([{"limit": 5, "window_ms": 1000}], "$.venues.okx.rate_limits[0].kind", "missing"),
])
def test_bad_rate_limits_name_the_key(entries: list[dict[str, Any]], path: str, words: str) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["venues"]["okx"]["rate_limits"] = entries

    with pytest.raises(ConfigError) as e:
        parse_config(_with(mutate))
    assert e.value.path == path
    assert words in e.value.problem


def test_rate_limit_entries_allow_only_their_keys() -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["venues"]["okx"]["rate_limits"] = [{"limit": 5, "window_ms": 1000, "kind": "orders", "burst": 2}]

    with pytest.raises(ConfigError, match="burst"):
        parse_config(_with(mutate))


@pytest.mark.parametrize("value", [-1, 90.5, 100])
def test_headroom_out_of_range_names_the_key(value: float) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw.setdefault("exec", {})["hedge_headroom_pct"] = value

    with pytest.raises(ConfigError) as e:
        parse_config(_with(mutate))
    assert e.value.path == "$.exec.hedge_headroom_pct"
