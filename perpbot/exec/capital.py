"""Capital: how much margin each venue may put to work, and for what.

Pools
-----
A venue's equity is the `total` of its quote assets (`capital.quote_assets`,
stablecoins counted 1:1 as USD). It is split by percentage into three pools:

=========  ===============================================================
volume     hedged volume generation (both legs at once, edge is secondary)
arbitrage  the trades the scanner finds
reserve    never reserved for a trade: the cushion for adverse moves, fees,
           funding and the margin a venue asks beyond our estimate
=========  ===============================================================

A pool's budget on a venue is its percentage of the venue's latest equity,
rounded down to the cent (`allocate`). A leg's margin is its notional divided by
the venue's leverage, rounded up to the cent (`margin_needed`): budgets err low
and needs err high, so rounding can never make room that is not there.

Lifecycle of one trade's margin (`CapitalOrchestrator`)
-------------------------------------------------------
reserve  before any order is sent: every venue of the decision at once, or
         none (a trade that can only pay for one leg must not open that leg)
commit   as a leg fills: that part of the reservation becomes margin held by a
         position
release  what will not fill (IOC remainder, cancel, rejected leg) goes back
close    the trade is flat: everything it holds, committed too, goes back

Invariant
---------
For every (venue, pool), reserved + committed grows only while it stays within
the budget. Two things can leave it above the budget, and neither is a new
reservation: the venue's equity falling (margin already at work cannot be taken
back) and trades adopted after a restart. While a pool is over its budget,
nothing new is reserved from it on that venue.

`SnapshotProvider` is the thin async shell: it reads every venue's balances,
feeds the equity to the orchestrator and builds the CAPITAL_SNAPSHOT_UPDATE
payload.

Money is `Decimal` throughout; floats appear only in the event payload, for
display.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from perpbot.clock import Clock, now_ns
from perpbot.config import CapitalConfig
from perpbot.errors import PerpBotError
from perpbot.exec.risk import Reason
from perpbot.exec.venues.base import Balance, Venue

__all__ = [
    "TRADING_POOLS",
    "CapitalError",
    "CapitalOrchestrator",
    "CapitalSnapshot",
    "Holding",
    "Pool",
    "PoolState",
    "Refusal",
    "Reservation",
    "Shortfall",
    "SnapshotProvider",
    "VenueBalance",
    "VenueCapital",
    "allocate",
    "margin_needed",
    "pool_pcts",
    "venue_leverage",
]

CENT = Decimal("0.01")
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


class Pool(str, enum.Enum):
    VOLUME = "volume"
    ARBITRAGE = "arbitrage"
    RESERVE = "reserve"


#: the pools a trade may reserve from (the reserve pool never lends)
TRADING_POOLS: tuple[Pool, ...] = (Pool.VOLUME, Pool.ARBITRAGE)


class CapitalError(PerpBotError):
    """A caller broke the capital contract (duplicate or unknown key, bad amount); a bug, never a refusal."""


# -- pure pieces -------------------------------------------------------------------------------


def pool_pcts(cfg: CapitalConfig) -> dict[Pool, Decimal]:
    """The configured percentages as decimals of the values as written (80.0 -> Decimal('80.0'))."""
    return {
        Pool.VOLUME: Decimal(str(cfg.volume_pct)),
        Pool.ARBITRAGE: Decimal(str(cfg.arbitrage_pct)),
        Pool.RESERVE: Decimal(str(cfg.reserve_pct)),
    }


def venue_leverage(cfg: CapitalConfig, venue: str) -> Decimal:
    """The leverage margin is computed with on `venue` (its override, else `capital.leverage`)."""
    return Decimal(str(cfg.leverage_per_venue.get(venue, cfg.leverage)))


def margin_needed(notional: Decimal, leverage: Decimal) -> Decimal:
    """Margin for a leg of `notional` USD: notional / leverage, rounded UP to the cent."""
    _check_amount(notional, "notional")
    if not isinstance(leverage, Decimal) or not leverage.is_finite() or leverage <= 0:
        raise CapitalError(f"leverage must be a positive finite Decimal, got {leverage!r}")
    return (notional / leverage).quantize(CENT, rounding=ROUND_CEILING)


def allocate(equity_by_venue: Mapping[str, Decimal],
             pcts: Mapping[Pool, Decimal]) -> dict[str, dict[Pool, Decimal]]:
    """Each venue's equity split into pool budgets.

    The trading pools get their percentage rounded down to the cent; the reserve
    gets the rest of the equity rounded down to the cent. So the budgets sum to
    exactly the equity rounded down to the cent (never above the equity), and any
    rounding remainder lands in the reserve, the side that is never lent. A
    negative equity gives empty budgets.
    """
    if set(pcts) != set(Pool):
        raise CapitalError(f"need a percentage for every pool ({', '.join(p.value for p in Pool)})")
    if any(not p.is_finite() or p < 0 for p in pcts.values()) or sum(pcts.values()) != _HUNDRED:
        raise CapitalError(f"pool percentages must be non-negative and sum to 100, got "
                           f"{', '.join(f'{k.value}={v}' for k, v in pcts.items())}")
    out: dict[str, dict[Pool, Decimal]] = {}
    for venue, equity in equity_by_venue.items():
        if not isinstance(equity, Decimal) or not equity.is_finite():
            raise CapitalError(f"{venue}: equity must be a finite Decimal, got {equity!r}")
        whole = max(equity, _ZERO).quantize(CENT, rounding=ROUND_FLOOR)
        budgets = {p: (whole * pcts[p] / _HUNDRED).quantize(CENT, rounding=ROUND_FLOOR) for p in TRADING_POOLS}
        budgets[Pool.RESERVE] = whole - sum(budgets.values(), _ZERO)
        out[venue] = budgets
    return out


def _check_amount(x: object, what: str) -> Decimal:
    # floats never enter the money path: a float here is a caller's bug, caught at once
    if not isinstance(x, Decimal) or not x.is_finite() or x < 0:
        raise CapitalError(f"{what} must be a non-negative finite Decimal, got {x!r}")
    return x


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """Margin set aside for one decision, per venue."""

    key: str
    pool: Pool
    margins: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class Shortfall:
    venue: str
    needed: Decimal
    available: Decimal


@dataclass(frozen=True, slots=True)
class Refusal:
    """Nothing was reserved: at least one venue lacks the margin. `reason` names venue, pool, needed, available."""

    key: str
    pool: Pool
    reason: str
    shortfalls: tuple[Shortfall, ...]
    code: Reason = Reason.CAPITAL


@dataclass(frozen=True, slots=True)
class Holding:
    """What one trade holds now, per venue."""

    key: str
    pool: Pool
    reserved: Mapping[str, Decimal]
    committed: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class PoolState:
    budget: Decimal
    reserved: Decimal
    committed: Decimal
    #: what `reserve` would grant now (0 for the reserve pool, and while over budget)
    available: Decimal


@dataclass(frozen=True, slots=True)
class VenueCapital:
    #: the latest equity the orchestrator was given; None before the first
    equity: Decimal | None
    pools: Mapping[Pool, PoolState]


@dataclass(slots=True)
class _Held:
    pool: Pool
    reserved: dict[str, Decimal]
    committed: dict[str, Decimal]


# -- the orchestrator --------------------------------------------------------------------------


class CapitalOrchestrator:
    """Budgets per (venue, pool) from the latest equity, and the margin every open trade holds.

    Every method is synchronous, so it is atomic on one event loop; each also
    holds a lock, so threads may call it too. Refusals are values; breaking the
    contract (duplicate key, unknown key, committing more than was reserved)
    raises `CapitalError`.
    """

    def __init__(self, cfg: CapitalConfig, *, log: logging.Logger | None = None) -> None:
        self._pcts = pool_pcts(cfg)
        self._log = log or logging.getLogger("perpbot.exec")
        self._lock = threading.Lock()
        self._equity: dict[str, Decimal] = {}
        self._budget: dict[tuple[str, Pool], Decimal] = {}
        # running totals per (venue, pool), kept in step with `_held` so a check is O(legs)
        self._reserved: defaultdict[tuple[str, Pool], Decimal] = defaultdict(Decimal)
        self._committed: defaultdict[tuple[str, Pool], Decimal] = defaultdict(Decimal)
        self._held: dict[str, _Held] = {}

    # -- equity -----------------------------------------------------------------------------

    def on_equity(self, venue: str, equity: Decimal) -> None:
        """A venue's latest equity: its budgets follow. Margin in use is never taken back."""
        budgets = allocate({venue: equity}, self._pcts)[venue]
        with self._lock:
            self._equity[venue] = equity
            for pool, budget in budgets.items():
                k = (venue, pool)
                used = self._in_use(k)
                if budget < used <= self._budget.get(k, _ZERO):
                    self._log.warning("capital: %s %s pool budget %s is below the %s in use after equity fell "
                                      "to %s; nothing new is reserved there until usage is under budget",
                                      venue, pool.value, budget, used, equity)
                self._budget[k] = budget

    # -- the lifecycle ------------------------------------------------------------------------

    def reserve(self, key: str, pool: Pool, margins: Mapping[str, Decimal]) -> Reservation | Refusal:
        """Reserve `margins` (venue -> USD) from `pool` on every venue, or on none."""
        if pool not in TRADING_POOLS:
            raise CapitalError(f"{key}: nothing is reserved from the {pool.value} pool")
        if not margins:
            raise CapitalError(f"{key}: a reservation needs at least one venue")
        wanted = {v: _check_amount(m, f"{key}: margin on {v}") for v, m in margins.items()}
        with self._lock:
            if key in self._held:
                raise CapitalError(f"{key}: already holds capital")
            # check every venue before touching any: all of the decision or none of it
            short = [Shortfall(v, m, self._available((v, pool))) for v, m in wanted.items()
                     if m > self._available((v, pool))]
            if short:
                reason = "; ".join(self._shortfall_text(s, pool) for s in short)
                return Refusal(key, pool, reason, tuple(short))
            for v, m in wanted.items():
                self._reserved[(v, pool)] += m
            self._held[key] = _Held(pool, dict(wanted), {v: _ZERO for v in wanted})
            return Reservation(key, pool, dict(wanted))

    def commit(self, key: str, venue: str, amount: Decimal) -> None:
        """A leg filled: move `amount` of its venue's reservation to committed.

        Reserve with the order's limit price, so a fill never needs more than
        was reserved; committing more raises.
        """
        _check_amount(amount, f"{key}: commit on {venue}")
        with self._lock:
            held = self._get(key)
            if venue not in held.reserved:
                raise CapitalError(f"{key}: holds nothing on {venue}")
            if amount > held.reserved[venue]:
                raise CapitalError(f"{key}: commit of {amount} on {venue} exceeds the {held.reserved[venue]} "
                                   f"still reserved there")
            k = (venue, held.pool)
            held.reserved[venue] -= amount
            held.committed[venue] += amount
            self._reserved[k] -= amount
            self._committed[k] += amount

    def release(self, key: str, venue: str | None = None) -> Decimal:
        """Return the still-reserved (uncommitted) margin of a trade on `venue`, or on all its venues.

        The trade keeps what it committed until `close`. Returns the amount released.
        """
        with self._lock:
            held = self._get(key)
            if venue is not None and venue not in held.reserved:
                raise CapitalError(f"{key}: holds nothing on {venue}")
            total = _ZERO
            for v in [venue] if venue is not None else list(held.reserved):
                amount = held.reserved[v]
                held.reserved[v] = _ZERO
                self._reserved[(v, held.pool)] -= amount
                total += amount
            return total

    def close(self, key: str) -> Decimal:
        """The trade is over: release everything it holds, committed too. Returns the amount released."""
        with self._lock:
            held = self._get(key)
            del self._held[key]
            total = _ZERO
            for v in held.reserved:
                k = (v, held.pool)
                self._reserved[k] -= held.reserved[v]
                self._committed[k] -= held.committed[v]
                total += held.reserved[v] + held.committed[v]
            return total

    def adopt(self, key: str, pool: Pool, committed: Mapping[str, Decimal]) -> None:
        """A trade recovered after a restart: its margin is committed whatever the budget.

        The positions exist on the venues whether or not they fit; refusing to
        count them would only hide them. Over budget is logged, and that pool
        then reserves nothing new on that venue until usage falls under budget.
        """
        if pool not in TRADING_POOLS:
            raise CapitalError(f"{key}: nothing is held in the {pool.value} pool")
        amounts = {v: _check_amount(m, f"{key}: adopted margin on {v}") for v, m in committed.items()}
        with self._lock:
            if key in self._held:
                raise CapitalError(f"{key}: already holds capital")
            self._held[key] = _Held(pool, {v: _ZERO for v in amounts}, dict(amounts))
            for v, m in amounts.items():
                k = (v, pool)
                self._committed[k] += m
                budget = self._budget.get(k, _ZERO)
                if self._in_use(k) > budget:
                    self._log.warning("capital: adopted trade %s puts %s %s pool at %s in use, over its budget "
                                      "%s", key, v, pool.value, self._in_use(k), budget)

    # -- queries ----------------------------------------------------------------------------

    def available(self, venue: str, pool: Pool) -> Decimal:
        """What `reserve` would grant now on `venue` from `pool`."""
        with self._lock:
            return self._available((venue, pool))

    def in_use(self, venue: str, pool: Pool) -> Decimal:
        """Reserved plus committed margin on `venue` in `pool`."""
        with self._lock:
            return self._in_use((venue, pool))

    def budget(self, venue: str, pool: Pool) -> Decimal:
        with self._lock:
            return self._budget.get((venue, pool), _ZERO)

    def holding(self, key: str) -> Holding | None:
        """What trade `key` holds now; None when it holds nothing (never reserved, or closed)."""
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return None
            return Holding(key, held.pool, dict(held.reserved), dict(held.committed))

    def keys(self) -> frozenset[str]:
        """Keys of the trades holding capital."""
        with self._lock:
            return frozenset(self._held)

    def snapshot(self) -> dict[str, VenueCapital]:
        """Per venue (every venue with equity or margin in use): equity and each pool's state, taken atomically."""
        with self._lock:
            venues = sorted({v for v, _ in self._budget} | {v for v, _ in self._reserved}
                            | {v for v, _ in self._committed})
            return {
                v: VenueCapital(
                    self._equity.get(v),
                    {p: PoolState(self._budget.get((v, p), _ZERO), self._reserved.get((v, p), _ZERO),
                                  self._committed.get((v, p), _ZERO), self._available((v, p)))
                     for p in Pool},
                )
                for v in venues
            }

    # -- internals (the lock is held) ---------------------------------------------------------

    def _get(self, key: str) -> _Held:
        held = self._held.get(key)
        if held is None:
            raise CapitalError(f"{key}: holds no capital (never reserved, or already closed)")
        return held

    def _in_use(self, k: tuple[str, Pool]) -> Decimal:
        return self._reserved.get(k, _ZERO) + self._committed.get(k, _ZERO)

    def _available(self, k: tuple[str, Pool]) -> Decimal:
        if k[1] not in TRADING_POOLS:
            return _ZERO
        return max(self._budget.get(k, _ZERO) - self._in_use(k), _ZERO)

    def _shortfall_text(self, s: Shortfall, pool: Pool) -> str:
        k = (s.venue, pool)
        if s.venue not in self._equity:
            return f"{s.venue} {pool.value} pool: needs {s.needed} USD, {s.available} available (no equity known yet)"
        return (f"{s.venue} {pool.value} pool: needs {s.needed} USD, {s.available} available "
                f"(budget {self._budget.get(k, _ZERO)}, in use {self._in_use(k)})")


# -- the async shell -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VenueBalance:
    """One venue's quote-asset balance as last read."""

    venue: str
    #: sum of the quote assets' `total`, USD; None until a read succeeds
    equity: Decimal | None
    free: Decimal
    locked: Decimal
    #: the last read failed or timed out: the values are the last good ones
    stale: bool
    #: why the last read failed; "" when it did not
    error: str
    #: clock stamp of the last good read; 0 before one
    ts_ns: int


@dataclass(frozen=True, slots=True)
class CapitalSnapshot:
    ts_ns: int
    balances: Mapping[str, VenueBalance]
    pools: Mapping[str, VenueCapital]


@dataclass(slots=True)
class _VenueState:
    balance: VenueBalance
    applied_gen: int = 0
    failing: bool = False


class SnapshotProvider:
    """Reads venue balances into equity for the orchestrator; never raises for a venue's failure.

    The engine calls `refresh` when `due` says so and after fills. Refreshes may
    overlap (a periodic one and one after a fill): each venue keeps the result of
    the newest refresh that reached it, so an older, slower read never
    overwrites a newer one.
    """

    def __init__(self, cfg: CapitalConfig, orchestrator: CapitalOrchestrator, *, clock: Clock = now_ns,
                 log: logging.Logger | None = None) -> None:
        self._orch = orchestrator
        self._clock = clock
        self._log = log or logging.getLogger("perpbot.exec")
        self._quote = frozenset(a.upper() for a in cfg.quote_assets)
        self._timeout_s = cfg.balance_timeout_ms / 1000
        self._interval_ns = cfg.snapshot_interval_ms * 1_000_000
        self._last_start_ns: int | None = None
        self._gen = 0
        self._venues: dict[str, _VenueState] = {}

    def due(self, now_ns: int) -> bool:
        """True when the periodic refresh is due (never refreshed, or `snapshot_interval_ms` since the last)."""
        return self._last_start_ns is None or now_ns - self._last_start_ns >= self._interval_ns

    async def refresh(self, venues: Sequence[Venue]) -> CapitalSnapshot:
        """Read every venue's balances at once, each within `balance_timeout_ms`, and feed the orchestrator."""
        self._gen += 1
        gen = self._gen
        self._last_start_ns = self._clock()
        await asyncio.gather(*(self._refresh_one(v, gen) for v in venues))
        return self.snapshot()

    def snapshot(self) -> CapitalSnapshot:
        """The balances as last read, with the orchestrator's pools."""
        return CapitalSnapshot(self._clock(), {n: s.balance for n, s in sorted(self._venues.items())},
                               self._orch.snapshot())

    def event_payload(self, snapshot: CapitalSnapshot) -> dict[str, Any]:
        """The CAPITAL_SNAPSHOT_UPDATE payload: {exchange: {free, locked, total, ...}}, floats for display."""
        out: dict[str, Any] = {}
        for name in sorted(set(snapshot.balances) | set(snapshot.pools)):
            b = snapshot.balances.get(name)
            caps = snapshot.pools.get(name)
            equity = b.equity if b is not None and b.equity is not None else _ZERO
            out[name] = {
                "free": float(b.free) if b is not None else 0.0,
                "locked": float(b.locked) if b is not None else 0.0,
                "total": float(equity),
                "equity": float(equity),
                "stale": b.stale if b is not None else True,
                "error": b.error if b is not None else "",
                "pools": {} if caps is None else {
                    p.value: {"budget": float(s.budget), "reserved": float(s.reserved),
                              "committed": float(s.committed), "available": float(s.available)}
                    for p, s in caps.pools.items()
                },
            }
        return out

    async def _refresh_one(self, venue: Venue, gen: int) -> None:
        name = venue.name
        try:
            balances = await asyncio.wait_for(venue.balances(), self._timeout_s)
            equity, free, locked = self._quote_sums(balances.values())
        except TimeoutError:
            self._failed(name, gen, f"no balances within {self._timeout_s * 1000:.0f} ms")
        except Exception as e:  # a venue's failure must never stop the others' refresh
            self._failed(name, gen, f"{type(e).__name__}: {e}")
        else:
            self._succeeded(name, gen, equity, free, locked)

    def _quote_sums(self, balances: Iterable[Balance]) -> tuple[Decimal, Decimal, Decimal]:
        equity = free = locked = _ZERO
        for b in balances:
            if b.asset.upper() not in self._quote:
                continue
            for what, x in (("total", b.total), ("free", b.free), ("locked", b.locked)):
                if not isinstance(x, Decimal) or not x.is_finite():
                    raise CapitalError(f"{b.asset} {what} is not a finite Decimal: {x!r}")
            equity += b.total
            free += b.free
            locked += b.locked
        return equity, free, locked

    def _state(self, name: str) -> _VenueState:
        st = self._venues.get(name)
        if st is None:
            st = self._venues[name] = _VenueState(VenueBalance(name, None, _ZERO, _ZERO, True, "", 0))
        return st

    def _succeeded(self, name: str, gen: int, equity: Decimal, free: Decimal, locked: Decimal) -> None:
        st = self._state(name)
        if gen < st.applied_gen:
            return  # a newer refresh already answered for this venue
        st.applied_gen = gen
        if st.failing:
            self._log.info("capital: %s balances readable again", name)
        st.failing = False
        st.balance = VenueBalance(name, equity, free, locked, False, "", self._clock())
        self._orch.on_equity(name, equity)

    def _failed(self, name: str, gen: int, error: str) -> None:
        st = self._state(name)
        if gen < st.applied_gen:
            return
        st.applied_gen = gen
        if not st.failing:  # once per streak: a venue down for an hour must not flood the log
            self._log.warning("capital: %s balances unavailable, keeping the last equity (%s): %s",
                              name, st.balance.equity, error)
        st.failing = True
        b = st.balance
        st.balance = VenueBalance(name, b.equity, b.free, b.locked, True, error, b.ts_ns)
