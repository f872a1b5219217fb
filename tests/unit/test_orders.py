"""OrderRunner: when it resends, when it asks, when it gives up, against a scripted venue.

The venue here is a stand-in for an exchange whose answers a test must dictate
exactly (a lookup that fails, an order that rests and fills as the cancel goes
out); the engine-level tests run the same paths against the paper venue.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from typing import Any

import pytest

from perpbot.errors import RejectedError, RetryableError
from perpbot.exec.orders import OrderPolicy, OrderRunner
from perpbot.exec.venues.base import (
    Fill,
    OpenOrder,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Side,
    Venue,
)

REQ = OrderRequest("r-1-open-buy", "BTC-PERP", Side.BUY, D("0.010"), D("60000"))


def _filled(req: OrderRequest = REQ) -> OrderResult:
    f = Fill(f"{req.client_order_id}-1", req.client_order_id, "v", req.symbol, req.side, req.qty,
             D("60000"), D("0.3"), 1)
    return OrderResult(req.client_order_id, "v", req.symbol, req.side, req.qty, OrderStatus.FILLED, (f,))


def _open(req: OrderRequest = REQ) -> OrderResult:
    return OrderResult(req.client_order_id, "v", req.symbol, req.side, req.qty, OrderStatus.OPEN)


class Scripted(Venue):
    """Answers place_order / fetch_order / cancel_order from queues of results or exceptions."""

    name = "v"

    def __init__(self, place: list[Any], fetch: list[Any], cancel: list[Any] | None = None) -> None:
        self.place, self.fetch, self.cancel = place, fetch, cancel or [True]
        self.calls: list[str] = []

    @staticmethod
    def _next(q: list[Any]) -> Any:
        x = q.pop(0) if len(q) > 1 else q[0]
        if isinstance(x, BaseException):
            raise x
        return x

    async def place_order(self, req: OrderRequest) -> OrderResult:
        self.calls.append("place")
        return self._next(self.place)  # type: ignore[no-any-return]

    async def fetch_order(self, client_order_id: str, symbol: str) -> Any:
        self.calls.append("fetch")
        return self._next(self.fetch)

    async def cancel_order(self, client_order_id: str, symbol: str) -> bool:
        self.calls.append("cancel")
        return self._next(self.cancel)  # type: ignore[no-any-return]

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def open_orders(self, symbol: str | None = None) -> list[OpenOrder]: return []
    async def positions(self) -> dict[str, Any]: return {}
    async def balances(self) -> dict[str, Any]: return {}
    async def my_trades(self, symbol: str | None = None, since_ms: int | None = None) -> list[Fill]: return []
    async def funding_rate(self, symbol: str) -> Any: raise NotImplementedError
    async def server_time_ms(self) -> int: return 0
    def markets(self) -> dict[str, Any]: return {}


class Clock:
    def __init__(self) -> None:
        self.t = 0
        self.slept: list[float] = []

    def __call__(self) -> int:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += int(s * 1e9)


def _run(venue: Venue, clock: Clock, deadline_ms: int = 100, **policy: Any) -> Any:
    runner = OrderRunner(venue, OrderPolicy(**policy), clock=clock, sleep=clock.sleep)
    return asyncio.run(runner.run(REQ, deadline_ns=deadline_ms * 1_000_000))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_refusal_is_a_result_and_never_retried(clock: Clock) -> None:
    v = Scripted([RejectedError("insufficient margin")], [None])
    out = _run(v, clock)
    assert out.result.status is OrderStatus.REJECTED and "insufficient margin" in out.result.reason
    assert v.calls == ["place"] and not out.unknown


def test_an_unknown_outcome_is_asked_about_before_any_resend(clock: Clock) -> None:
    v = Scripted([RetryableError("timeout")], [_filled()])
    out = _run(v, clock)
    assert out.result.status is OrderStatus.FILLED and out.sends == 1
    assert v.calls == ["place", "fetch"]


def test_an_order_the_venue_never_got_is_resent_with_backoff_then_given_up(clock: Clock) -> None:
    v = Scripted([RetryableError("timeout")], [None])
    out = _run(v, clock, retry_attempts=3, retry_backoff_ms=20)
    assert v.calls == ["place", "fetch"] * 3
    assert clock.slept == [0.02, 0.04]  # doubling, none after the last send
    assert out.result.status is OrderStatus.REJECTED and not out.unknown
    assert out.sends == 3


def test_when_the_venue_cannot_say_nothing_is_resent(clock: Clock) -> None:
    v = Scripted([RetryableError("timeout")], [RetryableError("lookup down")])
    out = _run(v, clock)
    assert v.calls == ["place", "fetch"]  # a resend could double an order the venue may hold
    assert out.unknown and "outcome unknown" in out.note


def test_a_resting_order_is_followed_until_it_fills(clock: Clock) -> None:
    v = Scripted([_open()], [OpenOrder(REQ.client_order_id, REQ.symbol, REQ.side, REQ.qty, D(0), REQ.price),
                             OpenOrder(REQ.client_order_id, REQ.symbol, REQ.side, REQ.qty, D(0), REQ.price),
                             _filled()])
    out = _run(v, clock, poll_ms=2)
    assert out.result.status is OrderStatus.FILLED and not out.cancelled
    assert v.calls == ["place", "fetch", "fetch", "fetch"]


def test_at_the_deadline_it_is_cancelled_and_a_racing_fill_is_taken_from_the_venue(clock: Clock) -> None:
    resting = OpenOrder(REQ.client_order_id, REQ.symbol, REQ.side, REQ.qty, D(0), REQ.price)
    v = Scripted([_open()], [resting, resting, _filled()], cancel=[False])
    out = _run(v, clock, deadline_ms=3, poll_ms=2)
    assert v.calls[-2:] == ["cancel", "fetch"]
    assert out.cancelled and out.result.status is OrderStatus.FILLED
    assert out.race_filled == REQ.qty and "cancel was in flight" in out.note


def test_an_order_still_resting_after_the_cancel_is_reported_unknown(clock: Clock) -> None:
    resting = OpenOrder(REQ.client_order_id, REQ.symbol, REQ.side, REQ.qty, D(0), REQ.price)
    v = Scripted([_open()], [resting])
    out = _run(v, clock, deadline_ms=1, poll_ms=2, cancel_timeout_ms=10)
    assert out.unknown and out.cancelled and "still resting" in out.note
    assert out.result.status is OrderStatus.OPEN


def test_an_unexpected_error_counts_as_unknown_and_is_asked(clock: Clock) -> None:
    v = Scripted([ConnectionResetError("peer")], [_filled()])
    out = _run(v, clock)
    assert out.result.status is OrderStatus.FILLED and v.calls == ["place", "fetch"]



def test_every_question_is_paid_from_the_venues_budget(clock: Clock) -> None:
    from perpbot.exec.ratelimit import Priority, RateBudget, RateLimit

    budget = RateBudget((RateLimit(100, 1000, "requests"),), headroom_pct=20, clock=clock)
    resting = OpenOrder(REQ.client_order_id, REQ.symbol, REQ.side, REQ.qty, D(0), REQ.price)
    v = Scripted([_open()], [resting, resting, _filled()], cancel=[False])
    runner = OrderRunner(v, OrderPolicy(poll_ms=2), clock=clock, sleep=clock.sleep, budget=budget)
    asyncio.run(runner.run(REQ, deadline_ns=3_000_000))
    asked = v.calls.count("fetch") + v.calls.count("cancel")
    (usage,) = budget.usage()
    assert usage.used == asked == 4
    # the entries' share is what is left of 80: the hedge headroom was not needed here
    assert budget.try_acquire(Priority.ENTRY, requests=76) and not budget.try_acquire(Priority.ENTRY)
