"""One order, from send to its final state, asking the venue whenever unsure.

`OrderRunner.run` is the only way the engine talks to a venue about an
order. It owns three rules that keep money from being lost or doubled:

- **Retry** only when the outcome is unknown (`RetryableError`, a timeout,
  a dropped connection) and only after asking the venue for the order by
  its client order id: if the venue has it, that is the answer; if not, the
  same request (same client order id, so the venue would refuse a second
  copy) is sent again, at most `retry_attempts` times with doubling backoff.
  A refusal (`RejectedError`) is never retried: it is a REJECTED result.
- **Follow** an order that rests (status OPEN: a maker order, or a taker
  order the venue has not finished) by polling `fetch_order` until it is
  terminal or its deadline passes, quickly at first and then backing off.
  Every question asked (fetch, cancel) is
  one request from the venue's rate budget at exit priority, which paces the
  polling on a real venue.
- **Cancel, then ask**: at the deadline the order is cancelled and its final
  state is whatever the venue then reports. A cancel can lose a race with a
  fill (the cancel returns False, or the order fills while the cancel is in
  flight); only the venue's answer says which, so nothing is assumed.

When the venue cannot be made to say (every question fails), the outcome
is `unknown`: the engine journals an incident and keeps asking on its
periodic check, and the position reconciliation is the last line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from perpbot.clock import now_ns
from perpbot.errors import FatalError, RejectedError
from perpbot.exec.ratelimit import Priority, RateBudget
from perpbot.exec.venues.base import OpenOrder, OrderRequest, OrderResult, OrderStatus, Venue

_MS = 1_000_000
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class OrderPolicy:
    """How hard to try; from `exec` config."""

    retry_attempts: int = 3  # sends of one request, the first included
    retry_backoff_ms: float = 20.0  # before the 2nd send; doubles after each
    poll_ms: float = 2.0  # first fetch_order interval while an order rests; doubles each time
    max_poll_ms: float = 100.0  # up to this
    cancel_timeout_ms: float = 1000.0  # after a cancel, how long to wait for a terminal state


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one order."""

    result: OrderResult  # terminal unless `unknown`
    sends: int = 1  # how many times the request went out (resends reuse the client order id)
    cancelled: bool = False  # we cancelled it at its deadline
    #: the cancel lost to a fill (the venue filled more after we decided to cancel)
    race_filled: Decimal = _ZERO
    #: nothing could establish the final state; `result` holds what was last known
    unknown: bool = False
    note: str = ""


def is_unknown_outcome(exc: BaseException) -> bool:
    """True for errors after which the order may or may not exist at the venue."""
    return not isinstance(exc, (RejectedError, FatalError, asyncio.CancelledError))


class OrderRunner:
    """Sends and follows orders on one venue (see the module docstring)."""

    def __init__(self, venue: Venue, policy: OrderPolicy, *, clock: Callable[[], int] = now_ns,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 log: logging.Logger | None = None, budget: RateBudget | None = None) -> None:
        self.venue = venue
        self._budget = budget
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._log = log or logging.getLogger("perpbot.exec")

    async def run(self, req: OrderRequest, *, deadline_ns: int) -> Outcome:
        """Send `req` and return its final state; an OPEN order is cancelled at `deadline_ns`."""
        sent = await self._send(req)
        if isinstance(sent, Outcome):
            return sent
        res, sends = sent
        if res.status.terminal:
            return Outcome(res, sends)
        return await self.follow(req, res, deadline_ns=deadline_ns, sends=sends)

    async def follow(self, req: OrderRequest, res: OrderResult, *, deadline_ns: int,
                     sends: int = 1) -> Outcome:
        """Poll a resting order until terminal or `deadline_ns`, then cancel and settle."""
        wait = self.policy.poll_ms
        while self._clock() < deadline_ns:
            await self._sleep(min(wait, max(deadline_ns - self._clock(), 0) / 1e6) / 1000)
            # quick at first (most orders finish at once), then backing off: a venue's request
            # budget is not spent on one resting order
            wait = min(wait * 2, self.policy.max_poll_ms)
            got = await self._ask(req)
            if isinstance(got, OrderResult) and got.status.terminal:
                return Outcome(got, sends)
        return await self.cancel_and_settle(req, res, sends=sends)

    async def cancel_and_settle(self, req: OrderRequest, last: OrderResult, *,
                                sends: int = 1) -> Outcome:
        """Cancel a resting order and take the venue's word for its final state."""
        coid, sym = req.client_order_id, req.symbol
        try:
            await self._spend()
            await self.venue.cancel_order(coid, sym)
        except Exception as e:  # the venue's answer below decides
            self._log.warning("cancel of %s on %s failed: %r; asking for its state", coid,
                              self.venue.name, e)
        stop = self._clock() + int(self.policy.cancel_timeout_ms * _MS)
        while True:
            got = await self._ask(req)
            if isinstance(got, OrderResult) and got.status.terminal:
                raced = got.filled_qty - last.filled_qty
                note = (f"filled {got.filled_qty} while the cancel was in flight"
                        if raced > 0 else "")
                return Outcome(got, sends, cancelled=True, race_filled=max(raced, _ZERO),
                               note=note)
            if self._clock() >= stop:
                return Outcome(last, sends, cancelled=True, unknown=True,
                               note="still resting after the cancel" if got is not None
                               else "the venue does not know the order after the cancel")
            await self._sleep(self.policy.poll_ms / 1000)

    async def _send(self, req: OrderRequest) -> tuple[OrderResult, int] | Outcome:
        p = self.policy
        backoff = p.retry_backoff_ms / 1000
        last_error: BaseException | None = None
        for attempt in range(1, p.retry_attempts + 1):
            try:
                return await self.venue.place_order(req), attempt
            except (RejectedError, FatalError) as e:
                return Outcome(self._rejected(req, f"{type(e).__name__}: {e}"), attempt)
            except Exception as e:  # unknown outcome: ask before resending
                last_error = e
                self._log.warning("order %s on %s: %r (send %d of %d); asking the venue",
                                  req.client_order_id, self.venue.name, e, attempt,
                                  p.retry_attempts)
            got = await self._ask(req)
            if isinstance(got, OrderResult):
                return got, attempt
            if isinstance(got, OpenOrder):
                return _resting(req, self.venue.name), attempt
            if got is _ASK_FAILED:
                # the venue cannot say whether it has the order: a resend could double it
                break
            if attempt < p.retry_attempts:
                await self._sleep(backoff)
                backoff *= 2
        res = self._rejected(req, f"outcome unknown: {last_error!r}")
        if got is None:
            # the venue said, after every send, that it never received the order
            return Outcome(res, p.retry_attempts, note=f"never received: {last_error!r}")
        return Outcome(res, attempt, unknown=True, note=f"outcome unknown: {last_error!r}")

    async def _ask(self, req: OrderRequest) -> OrderResult | OpenOrder | object | None:
        try:
            await self._spend()
            return await self.venue.fetch_order(req.client_order_id, req.symbol)
        except Exception as e:  # reported as "cannot say"
            self._log.warning("fetch_order %s on %s failed: %r", req.client_order_id,
                              self.venue.name, e)
            return _ASK_FAILED

    async def lookup(self, req: OrderRequest) -> OrderResult | OpenOrder | None:
        """The venue's answer about one order (raises when it cannot say), paid from the budget."""
        await self._spend()
        return await self.venue.fetch_order(req.client_order_id, req.symbol)

    async def _spend(self) -> None:
        """One request from the venue's budget, at exit priority: settling an order is never an
        entry. Polling a resting order is what this paces on a real venue."""
        if self._budget is not None and not await self._budget.acquire(
                Priority.EXIT, requests=1, timeout_s=self.policy.cancel_timeout_ms / 1000):
            self._log.warning("%s: request budget spent; asking about an order anyway", self.venue.name)

    def _rejected(self, req: OrderRequest, reason: str) -> OrderResult:
        ts = self._clock()
        return OrderResult(req.client_order_id, self.venue.name, req.symbol, req.side, req.qty,
                           OrderStatus.REJECTED, ts_accepted_ns=ts, ts_done_ns=ts, reason=reason)


_ASK_FAILED = object()


def _resting(req: OrderRequest, venue: str) -> OrderResult:
    # fills of a resting order arrive with its terminal state; until then it is just OPEN
    return OrderResult(req.client_order_id, venue, req.symbol, req.side, req.qty,
                       OrderStatus.OPEN)
