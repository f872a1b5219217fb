"""Capital: exact allocation, config checks, the reserve/commit/release/close lifecycle, races, snapshots."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import threading
import time
from decimal import ROUND_FLOOR
from decimal import Decimal as D
from typing import Any

import pytest
from kit import example_raw

from perpbot.config import CapitalConfig, parse_config
from perpbot.errors import ConfigError
from perpbot.events import check_event
from perpbot.exec.capital import (
    TRADING_POOLS,
    CapitalError,
    CapitalOrchestrator,
    Pool,
    Refusal,
    Reservation,
    SnapshotProvider,
    allocate,
    margin_needed,
    pool_pcts,
    venue_leverage,
)
from perpbot.exec.risk import Reason
from perpbot.exec.venues.base import (
    Balance,
    Fill,
    FundingRate,
    Market,
    OpenOrder,
    OrderRequest,
    OrderResult,
    Venue,
    VenuePosition,
)

CENT = D("0.01")
PCTS = {Pool.VOLUME: D(0), Pool.ARBITRAGE: D(80), Pool.RESERVE: D(20)}


def floor_cent(x: D) -> D:
    return x.quantize(CENT, rounding=ROUND_FLOOR)


def orchestrator(**kw: Any) -> CapitalOrchestrator:
    return CapitalOrchestrator(CapitalConfig(**kw))


# -- the allocator ------------------------------------------------------------------------------


def test_allocate_default_split_is_exact() -> None:
    out = allocate({"a": D("1000"), "b": D("12.5")}, PCTS)
    assert out["a"] == {Pool.VOLUME: D("0.00"), Pool.ARBITRAGE: D("800.00"), Pool.RESERVE: D("200.00")}
    assert out["b"] == {Pool.VOLUME: D("0.00"), Pool.ARBITRAGE: D("10.00"), Pool.RESERVE: D("2.50")}


def test_allocate_rounds_down_and_the_remainder_goes_to_the_reserve() -> None:
    pcts = {Pool.VOLUME: D("33.3"), Pool.ARBITRAGE: D("33.3"), Pool.RESERVE: D("33.4")}
    out = allocate({"a": D("1234.567")}, pcts)["a"]
    # 1234.56 * 0.333 = 411.10848 -> 411.10 each; the reserve takes the rest of 1234.56
    assert out == {Pool.VOLUME: D("411.10"), Pool.ARBITRAGE: D("411.10"), Pool.RESERVE: D("412.36")}
    assert sum(out.values()) == D("1234.56") <= D("1234.567")


def test_allocate_never_sums_above_equity_over_many_odd_equities() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        v, a = rng.randint(0, 100), 0
        a = rng.randint(0, 100 - v)
        tenth = D(rng.randint(0, 9)) / 10 if v + a < 100 else D(0)
        pcts = {Pool.VOLUME: D(v), Pool.ARBITRAGE: D(a) + tenth, Pool.RESERVE: D(100 - v - a) - tenth}
        equity = D(rng.randint(0, 10**12)) / D(10) ** rng.randint(0, 9)
        out = allocate({"x": equity}, pcts)["x"]
        assert sum(out.values()) == floor_cent(equity) <= equity
        for p in TRADING_POOLS:
            assert out[p] == floor_cent(floor_cent(equity) * pcts[p] / 100)
        assert out[Pool.RESERVE] >= floor_cent(floor_cent(equity) * pcts[Pool.RESERVE] / 100)
        assert all(x >= 0 and x == x.quantize(CENT) for x in out.values())


def test_allocate_negative_equity_and_bad_percentages() -> None:
    assert allocate({"a": D("-5")}, PCTS)["a"] == dict.fromkeys(Pool, D(0))
    with pytest.raises(CapitalError, match="sum to 100"):
        allocate({"a": D(1)}, {Pool.VOLUME: D(10), Pool.ARBITRAGE: D(80), Pool.RESERVE: D(20)})
    with pytest.raises(CapitalError, match="non-negative"):
        allocate({"a": D(1)}, {Pool.VOLUME: D(-10), Pool.ARBITRAGE: D(90), Pool.RESERVE: D(20)})
    with pytest.raises(CapitalError, match="every pool"):
        allocate({"a": D(1)}, {Pool.ARBITRAGE: D(80), Pool.RESERVE: D(20)})
    with pytest.raises(CapitalError, match="finite Decimal"):
        allocate({"a": 1000.0}, PCTS)  # type: ignore[dict-item]


def test_margin_needed_rounds_up_to_the_cent() -> None:
    assert margin_needed(D("1000"), D("5")) == D("200.00")
    assert margin_needed(D("1000"), D("3")) == D("333.34")
    assert margin_needed(D("0.001"), D("5")) == D("0.01")
    assert margin_needed(D("0"), D("5")) == D("0.00")
    with pytest.raises(CapitalError):
        margin_needed(D("-1"), D("5"))
    with pytest.raises(CapitalError):
        margin_needed(D("1"), D("0"))
    with pytest.raises(CapitalError):
        margin_needed(1000.0, D("5"))  # type: ignore[arg-type]


def test_leverage_per_venue_and_pcts_from_config() -> None:
    cfg = CapitalConfig(leverage=5.0, leverage_per_venue={"okx": 2.5})
    assert venue_leverage(cfg, "okx") == D("2.5") and venue_leverage(cfg, "bybit") == D("5.0")
    assert pool_pcts(CapitalConfig(volume_pct=33.3, arbitrage_pct=33.3, reserve_pct=33.4)) == {
        Pool.VOLUME: D("33.3"), Pool.ARBITRAGE: D("33.3"), Pool.RESERVE: D("33.4")}


# -- config ---------------------------------------------------------------------------------------


def _with_capital(**capital: Any) -> Any:
    raw = example_raw()
    raw["capital"] = capital
    return parse_config(raw)


def test_config_defaults_and_exact_sum() -> None:
    cfg = parse_config(example_raw())
    assert (cfg.capital.volume_pct, cfg.capital.arbitrage_pct, cfg.capital.reserve_pct) == (0.0, 80.0, 20.0)
    assert cfg.capital.quote_assets == ("USD", "USDT", "USDC")
    # 33.3 + 33.3 + 33.4 is not 100 in floats, but is as written
    cfg = _with_capital(volume_pct=33.3, arbitrage_pct=33.3, reserve_pct=33.4, leverage_per_venue={"okx": 3})
    assert cfg.capital.leverage_per_venue == {"okx": 3.0}


@pytest.mark.parametrize(
    "capital, path, words",
    [
        ({"volume_pct": 10}, "$.capital", "10.0 + 80.0 + 20.0 = 110.0"),
        ({"arbitrage_pct": 70}, "$.capital", "must sum to exactly 100"),
        ({"volume_pct": -10, "arbitrage_pct": 90}, "$.capital.volume_pct", ">= 0"),
        ({"leverage": 0}, "$.capital.leverage", "> 0"),
        ({"leverage_per_venue": {"kraken": 3}}, "$.capital.leverage_per_venue.kraken", "unknown venue; allowed"),
        ({"leverage_per_venue": {"okx": -1}}, "$.capital.leverage_per_venue.okx", "> 0"),
        ({"snapshot_interval_ms": 0}, "$.capital.snapshot_interval_ms", ">= 1"),
        ({"quote_assets": []}, "$.capital.quote_assets", "at least one asset"),
        ({"quote_assets": ["USDT", "usd c"]}, "$.capital.quote_assets[1]", "asset codes"),
        ({"bogus": 1}, "$.capital.bogus", "unknown key"),
    ],
)
def test_config_errors_name_the_key(capital: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        _with_capital(**capital)
    assert e.value.path == path, str(e.value)
    assert words in e.value.problem, str(e.value)


# -- the orchestrator -----------------------------------------------------------------------------


def test_reserve_is_all_or_nothing_across_venues() -> None:
    orch = orchestrator()
    orch.on_equity("a", D(1000))  # arbitrage budget 800.00
    orch.on_equity("b", D(125))  # arbitrage budget 100.00
    r = orch.reserve("t1", Pool.ARBITRAGE, {"a": D("500"), "b": D("200")})
    assert isinstance(r, Refusal) and r.code is Reason.CAPITAL
    assert [(s.venue, s.needed, s.available) for s in r.shortfalls] == [("b", D(200), D("100.00"))]
    assert "b arbitrage pool: needs 200 USD, 100.00 available" in r.reason
    # nothing was taken on the venue that could have paid
    assert orch.in_use("a", Pool.ARBITRAGE) == 0 and orch.holding("t1") is None
    ok = orch.reserve("t1", Pool.ARBITRAGE, {"a": D("500"), "b": D("100.00")})
    assert ok == Reservation("t1", Pool.ARBITRAGE, {"a": D("500"), "b": D("100.00")})
    assert orch.available("a", Pool.ARBITRAGE) == D("300.00") and orch.available("b", Pool.ARBITRAGE) == 0
    # the volume pool (0 %) and the reserve lend nothing; an unknown venue has nothing
    assert orch.available("a", Pool.VOLUME) == 0 and orch.available("a", Pool.RESERVE) == 0
    r2 = orch.reserve("t2", Pool.ARBITRAGE, {"a": D("0.01"), "c": D("0.01")})
    assert isinstance(r2, Refusal) and "c arbitrage pool" in r2.reason and "no equity known" in r2.reason
    # a zero margin fits anywhere
    assert isinstance(orch.reserve("t3", Pool.ARBITRAGE, {"a": D("300.00"), "c": D(0)}), Reservation)
    r4 = orch.reserve("t4", Pool.ARBITRAGE, {"a": D("0.01")})
    assert isinstance(r4, Refusal) and "budget 800.00, in use 800.00" in r4.reason


def test_pools_are_separate_budgets() -> None:
    orch = orchestrator(volume_pct=30.0, arbitrage_pct=50.0, reserve_pct=20.0)
    orch.on_equity("a", D(1000))
    assert isinstance(orch.reserve("v", Pool.VOLUME, {"a": D(300)}), Reservation)
    assert isinstance(orch.reserve("v2", Pool.VOLUME, {"a": D("0.01")}), Refusal)
    assert isinstance(orch.reserve("x", Pool.ARBITRAGE, {"a": D(500)}), Reservation)
    snap = orch.snapshot()["a"]
    assert snap.equity == D(1000)
    assert {p: (s.budget, s.reserved, s.committed, s.available) for p, s in snap.pools.items()} == {
        Pool.VOLUME: (D("300.00"), D(300), D(0), D(0)),
        Pool.ARBITRAGE: (D("500.00"), D(500), D(0), D(0)),
        Pool.RESERVE: (D("200.00"), D(0), D(0), D(0)),
    }


def test_commit_release_close_arithmetic_is_exact() -> None:
    orch = orchestrator()
    orch.on_equity("a", D(1000))
    orch.on_equity("b", D(1000))
    orch.reserve("t", Pool.ARBITRAGE, {"a": D("300.00"), "b": D("300.00")})
    orch.commit("t", "a", D("120.55"))
    orch.commit("t", "b", D("100.50"))
    orch.commit("t", "b", D("20.05"))
    h = orch.holding("t")
    assert h is not None and h.reserved == {"a": D("179.45"), "b": D("179.45")}
    assert h.committed == {"a": D("120.55"), "b": D("120.55")}
    assert orch.in_use("a", Pool.ARBITRAGE) == D("300.00")
    with pytest.raises(CapitalError, match="exceeds"):
        orch.commit("t", "a", D("179.46"))
    with pytest.raises(CapitalError, match="holds nothing on c"):
        orch.commit("t", "c", D(1))
    assert orch.release("t", "a") == D("179.45")
    assert orch.in_use("a", Pool.ARBITRAGE) == D("120.55") and orch.available("a", Pool.ARBITRAGE) == D("679.45")
    assert orch.release("t", "a") == 0  # nothing left to release there
    assert orch.release("t") == D("179.45")
    assert orch.in_use("b", Pool.ARBITRAGE) == D("120.55")
    with pytest.raises(CapitalError, match="exceeds"):
        orch.commit("t", "b", D("0.01"))  # released margin cannot be committed
    assert orch.close("t") == D("241.10")
    for v in ("a", "b"):
        assert orch.in_use(v, Pool.ARBITRAGE) == 0 and orch.available(v, Pool.ARBITRAGE) == D("800.00")
    assert orch.keys() == frozenset() and orch.holding("t") is None
    for call in (lambda: orch.close("t"), lambda: orch.release("t"), lambda: orch.commit("t", "a", D(0))):
        with pytest.raises(CapitalError, match="holds no capital"):
            call()


def test_duplicate_key_and_contract_errors() -> None:
    orch = orchestrator()
    orch.on_equity("a", D(1000))
    orch.reserve("t", Pool.ARBITRAGE, {"a": D(1)})
    with pytest.raises(CapitalError, match="already holds"):
        orch.reserve("t", Pool.ARBITRAGE, {"a": D(1)})
    with pytest.raises(CapitalError, match="already holds"):
        orch.adopt("t", Pool.ARBITRAGE, {"a": D(1)})
    assert orch.in_use("a", Pool.ARBITRAGE) == D(1)  # the failed calls changed nothing
    with pytest.raises(CapitalError, match="reserve pool"):
        orch.reserve("r", Pool.RESERVE, {"a": D(1)})
    with pytest.raises(CapitalError, match="non-negative finite Decimal"):
        orch.reserve("f", Pool.ARBITRAGE, {"a": 1.0})  # type: ignore[dict-item]
    with pytest.raises(CapitalError, match="non-negative finite Decimal"):
        orch.reserve("n", Pool.ARBITRAGE, {"a": D(-1)})
    with pytest.raises(CapitalError, match="at least one venue"):
        orch.reserve("e", Pool.ARBITRAGE, {})
    orch.close("t")
    assert isinstance(orch.reserve("t", Pool.ARBITRAGE, {"a": D(1)}), Reservation)  # a closed key may return


def test_shrinking_budget_takes_nothing_back_and_blocks_new_reservations(caplog: pytest.LogCaptureFixture) -> None:
    orch = orchestrator()
    orch.on_equity("a", D(1000))
    orch.reserve("t", Pool.ARBITRAGE, {"a": D(700)})
    with caplog.at_level(logging.WARNING):
        orch.on_equity("a", D(500))  # budget 400.00, 700 in use
    assert "below the 700 in use" in caplog.text
    assert orch.budget("a", Pool.ARBITRAGE) == D("400.00")
    assert orch.in_use("a", Pool.ARBITRAGE) == D(700) and orch.available("a", Pool.ARBITRAGE) == 0
    assert isinstance(orch.reserve("u", Pool.ARBITRAGE, {"a": D("0.01")}), Refusal)
    orch.commit("t", "a", D(350))
    orch.release("t")
    assert orch.available("a", Pool.ARBITRAGE) == D("50.00")
    assert isinstance(orch.reserve("u", Pool.ARBITRAGE, {"a": D("50.01")}), Refusal)
    assert isinstance(orch.reserve("u", Pool.ARBITRAGE, {"a": D("50.00")}), Reservation)
    orch.on_equity("a", D(-20))  # a venue in the red lends nothing
    assert orch.budget("a", Pool.ARBITRAGE) == 0 and orch.in_use("a", Pool.ARBITRAGE) == D(400)


def test_adopt_commits_even_over_budget(caplog: pytest.LogCaptureFixture) -> None:
    orch = orchestrator()
    with caplog.at_level(logging.WARNING):
        orch.adopt("old", Pool.ARBITRAGE, {"a": D("500.00"), "b": D("250.00")})
    assert "adopted trade old puts a arbitrage pool at 500.00 in use, over its budget 0" in caplog.text
    h = orch.holding("old")
    assert h is not None and h.committed == {"a": D("500.00"), "b": D("250.00")}
    assert h.reserved == {"a": D(0), "b": D(0)}
    assert isinstance(orch.reserve("n", Pool.ARBITRAGE, {"a": D("0.01")}), Refusal)
    orch.on_equity("a", D(1000))
    assert orch.available("a", Pool.ARBITRAGE) == D("300.00")
    with pytest.raises(CapitalError, match="exceeds"):
        orch.commit("old", "a", D("0.01"))
    assert orch.close("old") == D("750.00")
    assert orch.in_use("a", Pool.ARBITRAGE) == 0 and orch.in_use("b", Pool.ARBITRAGE) == 0


# -- races ------------------------------------------------------------------------------------


class Model:
    """An independent ledger of what every trade holds, and the invariant checked against it.

    Usage above budget is allowed only up to what it was right after the last
    equity update or adoption (margin at work is not taken back), and that
    allowance shrinks as usage falls; any growth must stay within the budget.
    """

    VENUES = ("a", "b", "c")

    def __init__(self, orch: CapitalOrchestrator) -> None:
        self.orch = orch
        self.reserved: dict[str, dict[str, D]] = {}
        self.committed: dict[str, dict[str, D]] = {}
        self.pool: dict[str, Pool] = {}
        self.allowed: dict[tuple[str, Pool], D] = {(v, p): D(0) for v in self.VENUES for p in TRADING_POOLS}
        self.steps = 0

    def _sum(self, book: dict[str, dict[str, D]], v: str, p: Pool) -> D:
        return sum((m.get(v, D(0)) for k, m in book.items() if self.pool[k] is p), D(0))

    def check(self, *, excess_may_grow: bool = False) -> None:
        self.steps += 1
        snap = self.orch.snapshot()
        for v in self.VENUES:
            for p in TRADING_POOLS:
                st = snap[v].pools[p] if v in snap else None
                reserved = st.reserved if st else D(0)
                committed = st.committed if st else D(0)
                budget = st.budget if st else D(0)
                assert reserved == self._sum(self.reserved, v, p), (v, p)
                assert committed == self._sum(self.committed, v, p), (v, p)
                used = reserved + committed
                k = (v, p)
                if excess_may_grow:
                    self.allowed[k] = used
                assert used <= max(budget, self.allowed[k]), f"{v} {p.value} over-allocated: {used} > {budget}"
                self.allowed[k] = min(self.allowed[k], used)
                if st:
                    assert st.available == max(budget - used, D(0))

    def check_refusal(self, r: Refusal, margins: dict[str, D]) -> None:
        # a refusal must be deserved: the venue really lacked the margin
        snap = self.orch.snapshot()
        assert r.shortfalls
        for s in r.shortfalls:
            st = snap[s.venue].pools[r.pool] if s.venue in snap else None
            free = max(st.budget - st.reserved - st.committed, D(0)) if st else D(0)
            assert s.needed == margins[s.venue] > free == s.available

    def reserved_ok(self, key: str, pool: Pool, margins: dict[str, D]) -> None:
        self.pool[key] = pool
        self.reserved[key] = dict(margins)
        self.committed[key] = dict.fromkeys(margins, D(0))

    def committed_ok(self, key: str, v: str, amount: D) -> None:
        self.reserved[key][v] -= amount
        self.committed[key][v] += amount

    def released_ok(self, key: str, v: str | None) -> D:
        out = D(0)
        for x in [v] if v else list(self.reserved[key]):
            out += self.reserved[key][x]
            self.reserved[key][x] = D(0)
        return out

    def closed_ok(self, key: str) -> D:
        out = sum(self.reserved.pop(key).values(), D(0)) + sum(self.committed.pop(key).values(), D(0))
        del self.pool[key]
        return out


def _cents(rng: random.Random, hi: int) -> D:
    return D(rng.randint(0, hi * 100)) / 100


async def _pause(rng: random.Random) -> None:
    for _ in range(rng.randint(0, 3)):
        await asyncio.sleep(0)
    if rng.random() < 0.1:
        await asyncio.sleep(rng.random() / 2000)


def test_race_asyncio_tasks_never_over_allocate() -> None:
    orch = orchestrator(volume_pct=30.0, arbitrage_pct=50.0, reserve_pct=20.0)
    model = Model(orch)
    rng = random.Random(20240501)
    outcomes = {"ok": 0, "refused": 0, "adopted": 0}

    async def trade(i: int) -> None:
        key = f"t{i}"
        for _ in range(rng.randint(0, 300)):  # arrivals spread over many loop passes
            await asyncio.sleep(0)
        venues = rng.sample(Model.VENUES, rng.choice((1, 2, 2, 2)))
        margins = {v: _cents(rng, 120) for v in venues}
        pool = rng.choice(TRADING_POOLS)
        if rng.random() < 0.03:  # a trade recovered after a restart
            orch.adopt(key, pool, margins)
            model.pool[key], model.reserved[key] = pool, dict.fromkeys(margins, D(0))
            model.committed[key] = dict(margins)
            model.check(excess_may_grow=True)
            outcomes["adopted"] += 1
        else:
            r = orch.reserve(key, pool, margins)
            if isinstance(r, Refusal):
                model.check_refusal(r, margins)
                model.check()
                outcomes["refused"] += 1
                return
            model.reserved_ok(key, pool, margins)
            model.check()
            outcomes["ok"] += 1
            for v in venues:  # a leg fills in one or two parts, or not at all
                await _pause(rng)
                left = margins[v]
                for _ in range(rng.randint(0, 2)):
                    part = min(_cents(rng, 150), left)
                    orch.commit(key, v, part)
                    model.committed_ok(key, v, part)
                    model.check()
                    left -= part
                    await _pause(rng)
            if rng.random() < 0.5:  # the unfilled rest of one leg goes back first
                v = rng.choice(venues)
                assert orch.release(key, v) == model.released_ok(key, v)
                model.check()
                await _pause(rng)
            if rng.random() < 0.5:
                assert orch.release(key) == model.released_ok(key, None)
                model.check()
                await _pause(rng)
        assert orch.close(key) == model.closed_ok(key)
        model.check()

    async def equity(stop: asyncio.Event) -> None:
        while not stop.is_set():
            v = rng.choice(Model.VENUES)
            # mostly room for a few trades, sometimes a collapse far below what is in use
            orch.on_equity(v, rng.choice((D(0), D(-50), _cents(rng, 300)) + (_cents(rng, 4000),) * 12))
            model.check(excess_may_grow=True)
            await _pause(rng)

    for v in Model.VENUES:
        orch.on_equity(v, D(2000))
    model.check(excess_may_grow=True)

    async def main() -> None:
        stop = asyncio.Event()
        eq = [asyncio.create_task(equity(stop)) for _ in range(2)]
        await asyncio.gather(*(trade(i) for i in range(400)))
        stop.set()
        await asyncio.gather(*eq)

    asyncio.run(main())
    assert orch.keys() == frozenset() and not model.pool
    for v, cap in orch.snapshot().items():
        for p, st in cap.pools.items():
            assert st.reserved == 0 and st.committed == 0, (v, p)
    # the run exercised every path: grants, refusals, adoption, many checks
    assert outcomes["ok"] > 100 and outcomes["refused"] > 20 and outcomes["adopted"] > 0, outcomes
    assert model.steps > 1000


def test_race_threads_never_over_allocate() -> None:
    orch = orchestrator(volume_pct=30.0, arbitrage_pct=50.0, reserve_pct=20.0)
    venues = ("a", "b", "c")
    for v in venues:
        orch.on_equity(v, D(500))
    violations: list[str] = []
    errors: list[BaseException] = []
    counts = {"ok": 0, "refused": 0}
    count_lock = threading.Lock()
    stop = threading.Event()

    def audit() -> None:
        # a snapshot is taken under the orchestrator's lock: one consistent moment
        for v, cap in orch.snapshot().items():
            for p in TRADING_POOLS:
                st = cap.pools[p]
                if st.reserved < 0 or st.committed < 0 or st.reserved + st.committed > st.budget:
                    violations.append(f"{v} {p.value}: {st}")

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(300):
                key = f"w{n}-{i}"
                pool = rng.choice(TRADING_POOLS)
                margins = {v: _cents(rng, 120) for v in rng.sample(venues, 2)}
                r = orch.reserve(key, pool, margins)
                audit()
                if isinstance(r, Refusal):
                    with count_lock:
                        counts["refused"] += 1
                    continue
                with count_lock:
                    counts["ok"] += 1
                # only this thread touches this trade, so its holding must be exactly what it did
                mine = {v: (m, D(0)) for v, m in margins.items()}
                for v, m in margins.items():
                    part = min(_cents(rng, 80), m)
                    orch.commit(key, v, part)
                    mine[v] = (m - part, part)
                    time.sleep(0)
                h = orch.holding(key)
                assert h is not None
                assert {v: (h.reserved[v], h.committed[v]) for v in margins} == mine
                held = sum(margins.values(), D(0))
                if rng.random() < 0.5:
                    assert orch.release(key) == sum((x for x, _ in mine.values()), D(0))
                    held = sum((c for _, c in mine.values()), D(0))
                    audit()
                assert orch.close(key) == held
                audit()
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)

    def grow() -> None:
        # equity only rises here, so any usage above budget is an over-allocation
        rng = random.Random(99)
        while not stop.is_set():
            v = rng.choice(venues)
            orch.on_equity(v, (orch.snapshot()[v].equity or D(0)) + _cents(rng, 2))
            audit()
            time.sleep(0.0005)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races surface
    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        grower = threading.Thread(target=grow)
        grower.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stop.set()
        grower.join(timeout=10)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[0]
    assert not violations, violations[:5]
    assert counts["ok"] > 100 and counts["refused"] > 0, counts
    assert orch.keys() == frozenset()
    for cap in orch.snapshot().values():
        for st in cap.pools.values():
            assert st.reserved == 0 and st.committed == 0


# -- the snapshot provider ------------------------------------------------------------------------


class StubVenue(Venue):
    """A venue that only answers balances(): as scripted, by raising, or by hanging."""

    def __init__(self, name: str, *answers: Any) -> None:
        self.name = name
        self.answers = list(answers)
        self.calls = 0

    async def balances(self) -> dict[str, Balance]:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            answer = await answer()
        if isinstance(answer, BaseException):
            raise answer
        return dict(answer)

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def place_order(self, req: OrderRequest) -> OrderResult:
        raise NotImplementedError

    async def cancel_order(self, client_order_id: str, symbol: str) -> bool:
        raise NotImplementedError

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderResult | OpenOrder | None:
        raise NotImplementedError

    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]:
        raise NotImplementedError

    async def positions(self) -> dict[str, VenuePosition]:
        raise NotImplementedError

    async def my_trades(self, symbol: str | None = None, since_ms: int | None = None) -> list[Fill]:
        raise NotImplementedError

    async def funding_rate(self, symbol: str) -> FundingRate:
        raise NotImplementedError

    async def server_time_ms(self) -> int:
        raise NotImplementedError

    def markets(self) -> dict[str, Market]:
        return {}


def bal(asset: str, total: str, locked: str = "0") -> tuple[str, Balance]:
    return asset, Balance(asset, D(total) - D(locked), D(locked), D(total))


def provider(**kw: Any) -> tuple[SnapshotProvider, CapitalOrchestrator]:
    cfg = CapitalConfig(**kw)
    orch = CapitalOrchestrator(cfg)
    return SnapshotProvider(cfg, orch, clock=time.monotonic_ns), orch


def test_refresh_counts_quote_assets_and_feeds_the_orchestrator() -> None:
    prov, orch = provider()
    a = StubVenue("a", [bal("USDT", "900.50", "100"), bal("USDC", "99.50"), bal("BTC", "3")])
    b = StubVenue("b", [bal("usd", "250")])
    snap = asyncio.run(prov.refresh([a, b]))
    assert snap.balances["a"].equity == D("1000.00") and snap.balances["a"].locked == D(100)
    assert snap.balances["b"].equity == D(250) and not snap.balances["b"].stale
    assert orch.budget("a", Pool.ARBITRAGE) == D("800.00") and orch.budget("b", Pool.ARBITRAGE) == D("200.00")
    payload = prov.event_payload(snap)
    check_event("CAPITAL_SNAPSHOT_UPDATE", payload)
    assert payload["a"]["total"] == 1000.0 and payload["a"]["free"] == 900.0 and payload["a"]["locked"] == 100.0
    assert payload["a"]["pools"]["arbitrage"] == {"budget": 800.0, "reserved": 0.0, "committed": 0.0,
                                                  "available": 800.0}
    assert payload["b"]["stale"] is False and payload["b"]["error"] == ""
    assert all(isinstance(x, float) for x in (payload["b"]["free"], payload["b"]["locked"], payload["b"]["total"]))


def test_failing_venue_keeps_its_last_equity_flagged_stale_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    prov, orch = provider()
    ok = [bal("USDT", "1000")]
    a = StubVenue("a", ok, ConnectionError("reset by peer"), ConnectionError("reset again"), [bal("USDT", "500")],
                  RuntimeError("boom"), RuntimeError("boom"))
    b = StubVenue("b", ok)

    async def main() -> list[Any]:
        return [await prov.refresh([a, b]) for _ in range(6)]

    with caplog.at_level(logging.INFO):
        snaps = asyncio.run(main())
    s1 = snaps[1].balances["a"]
    assert s1.stale and s1.equity == D(1000) and s1.error == "ConnectionError: reset by peer"
    assert snaps[2].balances["a"].error == "ConnectionError: reset again"
    assert snaps[2].balances["a"].ts_ns == snaps[0].balances["a"].ts_ns  # still the first read's value
    assert not snaps[3].balances["a"].stale and snaps[3].balances["a"].equity == D(500)
    assert snaps[5].balances["a"].stale and snaps[5].balances["a"].equity == D(500)
    assert not snaps[5].balances["b"].stale  # one venue's trouble never spoils the others
    assert orch.budget("a", Pool.ARBITRAGE) == D("400.00")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per failure streak
    assert "reset by peer" in warnings[0] and "boom" in warnings[1]
    assert any("readable again" in r.getMessage() for r in caplog.records)
    payload = prov.event_payload(snaps[5])
    check_event("CAPITAL_SNAPSHOT_UPDATE", payload)
    assert payload["a"]["stale"] is True and payload["a"]["error"] == "RuntimeError: boom"


def test_timeout_and_never_read_venue() -> None:
    prov, orch = provider(balance_timeout_ms=50)

    async def hang() -> None:
        await asyncio.sleep(30)

    slow = StubVenue("slow", hang)
    bad = StubVenue("bad", [("USDT", Balance("USDT", D(1), D(0), 1.0))])  # type: ignore[arg-type]  # a float total is refused
    good = StubVenue("good", [bal("USDT", "10")])
    t0 = time.monotonic()
    snap = asyncio.run(prov.refresh([slow, bad, good]))
    assert time.monotonic() - t0 < 5
    assert snap.balances["slow"].stale and snap.balances["slow"].equity is None
    assert snap.balances["slow"].error == "no balances within 50 ms"
    assert snap.balances["bad"].stale and "not a finite Decimal" in snap.balances["bad"].error
    assert snap.balances["good"].equity == D(10)
    assert orch.budget("slow", Pool.ARBITRAGE) == 0
    payload = prov.event_payload(snap)
    check_event("CAPITAL_SNAPSHOT_UPDATE", payload)
    assert payload["slow"] == {"free": 0.0, "locked": 0.0, "total": 0.0, "equity": 0.0, "stale": True,
                               "error": "no balances within 50 ms", "pools": {}}


def test_venues_are_read_concurrently() -> None:
    # a's answer waits for b's call: read one after the other, a would time out
    prov, _ = provider(balance_timeout_ms=1000)
    b_called = asyncio.Event()

    async def after_b() -> list[tuple[str, Balance]]:
        await b_called.wait()
        return [bal("USDT", "1")]

    async def mark_b() -> list[tuple[str, Balance]]:
        b_called.set()
        return [bal("USDT", "2")]

    snap = asyncio.run(prov.refresh([StubVenue("a", after_b), StubVenue("b", mark_b)]))
    assert not snap.balances["a"].stale and snap.balances["a"].equity == D(1)


def test_an_older_slower_refresh_never_overwrites_a_newer_one() -> None:
    prov, orch = provider()

    async def slow_old() -> list[tuple[str, Balance]]:
        await asyncio.sleep(0.05)
        return [bal("USDT", "500")]

    a = StubVenue("a", slow_old, [bal("USDT", "700")])

    async def main() -> None:
        first = asyncio.create_task(prov.refresh([a]))
        await asyncio.sleep(0)  # the first read is under way
        await prov.refresh([a])
        await first

    asyncio.run(main())
    assert prov.snapshot().balances["a"].equity == D(700)
    assert orch.snapshot()["a"].equity == D(700)


def test_due_follows_the_interval() -> None:
    now = [1_000_000_000]
    cfg = CapitalConfig(snapshot_interval_ms=5000)
    prov = SnapshotProvider(cfg, CapitalOrchestrator(cfg), clock=lambda: now[0])
    assert prov.due(now[0])
    asyncio.run(prov.refresh([StubVenue("a", [bal("USDT", "1")])]))
    assert not prov.due(now[0] + 4_999_999_999)
    assert prov.due(now[0] + 5_000_000_000)
