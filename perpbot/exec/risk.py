"""The risk gate: every order passes it, denials are reason codes.

`check_legs` is the pure decision over plain values; `RiskGate` is the thin
stateful wrapper the engine holds: it reads the kill switch, trading state and
feed states from the status segment at the moment of the check, counts every
order checked, and hands out an `Approval` that is the only thing the engine
can turn into orders (`RiskGate.consume`), so no order is ever sent unchecked
and no approval is sent twice.

What is checked, per order purpose:

============================  ======  =============
check                         open    close/unwind
============================  ======  =============
kill switch (`halted()`)      yes     yes: after a kill NO order of any kind
trading state (`may_open()`)  yes     no: getting out stays allowed when paused
max open trades               yes     no
max notional per order        yes     no
max position after the order  yes     no: it reduces the trade's exposure
feed CONNECTED                yes     yes
quote present and fresh       yes     yes
quantity > 0                  yes     yes
============================  ======  =============

Closing orders need a fresh quote too: their price and the paper fill come
from the board, and a stale board is a price we cannot trust. A trade whose
quotes are stale simply stays open and is retried on the next check.

All legs of one decision are checked together, before any is sent; if one
fails, none is sent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from perpbot.config import Config
from perpbot.exec.venues.base import Side
from perpbot.shm.layout import FeedState


class Reason(enum.IntEnum):
    """Why an opportunity or an order was not acted on (OK means it was)."""

    OK = 0
    HALTED = 1  # kill switch thrown
    PAUSED = 2  # trading state does not allow new positions
    MAX_NOTIONAL = 3
    MAX_POSITION = 4
    MAX_OPEN_TRADES = 5
    STALE_QUOTE = 6  # quote older than scanner.stale_after_ms
    NO_SIZE = 7  # nothing left after the book caps and lot rounding
    EDGE_GONE = 8  # re-read quotes no longer pay min_edge_bps after fees
    TOO_OLD = 9  # opportunity older than exec.max_opportunity_age_ms
    NO_QUOTE = 10  # slot never written
    FEED_DOWN = 11  # venue feed not CONNECTED
    MIN_NOTIONAL = 12  # size below a leg's min notional
    NO_MARKET = 13  # a venue does not trade the symbol
    BAD_MESSAGE = 14  # indices out of range, same venue on both legs
    STOPPING = 15  # the process is shutting down
    SUPERSEDED = 16  # a newer opportunity for the same pair arrived in the same batch
    DAILY_LOSS = 17  # risk.max_daily_loss_usd reached today: nothing new is opened


class Purpose(str, enum.Enum):
    OPEN = "open"
    CLOSE = "close"
    UNWIND = "unwind"  # the excess of a leg that filled more than its partner


@dataclass(frozen=True, slots=True)
class LegCheck:
    """One order as the gate sees it."""

    venue: int
    symbol: int
    side: Side
    qty: Decimal
    price: Decimal  # the price its notional is valued at (the quote it was priced from)
    purpose: Purpose
    quote_ts_recv_ns: int  # receive stamp of the quote it was priced from; 0: no quote


@dataclass(frozen=True, slots=True)
class Limits:
    max_notional_per_trade_usd: Decimal
    max_position_notional_usd: Decimal
    max_open_trades: int
    stale_after_ns: int

    @classmethod
    def from_config(cls, cfg: Config) -> Limits:
        return cls(
            max_notional_per_trade_usd=Decimal(repr(cfg.risk.max_notional_per_trade_usd)),
            max_position_notional_usd=Decimal(repr(cfg.risk.max_position_notional_usd)),
            max_open_trades=cfg.risk.max_open_trades,
            stale_after_ns=cfg.scanner.stale_after_ms * 1_000_000,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason
    leg: int = -1  # index of the failing leg, -1 when not leg-specific
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


OK_VERDICT = Verdict(Reason.OK)


def check_legs(
    legs: Sequence[LegCheck],
    *,
    limits: Limits,
    halted: bool,
    may_open: bool,
    open_trades: int,
    now_ns: int,
    feed_states: Sequence[FeedState],
    positions: Sequence[Decimal],
) -> Verdict:
    """Decide on all legs of one decision together (see the module table).

    `feed_states` and `positions` (current signed net position at the leg's
    venue and symbol) are aligned with `legs`.
    """
    if halted:
        return Verdict(Reason.HALTED, detail="kill switch is set")
    opening = any(leg.purpose is Purpose.OPEN for leg in legs)
    if opening:
        if not may_open:
            return Verdict(Reason.PAUSED, detail="trading state does not allow new positions")
        if open_trades >= limits.max_open_trades:
            return Verdict(Reason.MAX_OPEN_TRADES,
                           detail=f"{open_trades} open, limit {limits.max_open_trades}")
    for i, leg in enumerate(legs):
        if leg.qty <= 0:
            return Verdict(Reason.NO_SIZE, i, f"quantity {leg.qty}")
        if leg.quote_ts_recv_ns <= 0:
            return Verdict(Reason.NO_QUOTE, i, "no quote on the board")
        if feed_states[i] != FeedState.CONNECTED:
            return Verdict(Reason.FEED_DOWN, i, f"feed state {FeedState(feed_states[i]).name}")
        age = now_ns - leg.quote_ts_recv_ns
        if age > limits.stale_after_ns:
            return Verdict(Reason.STALE_QUOTE, i, f"quote {age / 1e6:.1f} ms old")
        if leg.purpose is not Purpose.OPEN:
            continue
        notional = leg.qty * leg.price
        if notional > limits.max_notional_per_trade_usd:
            return Verdict(Reason.MAX_NOTIONAL, i,
                           f"{notional} > {limits.max_notional_per_trade_usd}")
        after = abs(positions[i] + leg.side.sign * leg.qty) * leg.price
        if after > limits.max_position_notional_usd:
            return Verdict(Reason.MAX_POSITION, i,
                           f"position after order {after} > {limits.max_position_notional_usd}")
    return OK_VERDICT


class GateStatus(Protocol):
    """What the gate reads from the status segment (`StatusBoard` satisfies it)."""

    def halted(self) -> bool: ...
    def may_open(self) -> bool: ...
    def feed_state(self, venue: int) -> FeedState: ...


class Approval:
    """The gate's answer for one decision; if `ok`, a one-time ticket to send its legs."""

    __slots__ = ("_used", "legs", "verdict")

    def __init__(self, verdict: Verdict, legs: tuple[LegCheck, ...]) -> None:
        self.verdict = verdict
        self.legs = legs
        self._used = False

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    @property
    def reason(self) -> Reason:
        return self.verdict.reason


class RiskGate:
    """Counts and enforces `check_legs` for the engine."""

    def __init__(self, limits: Limits, status: GateStatus) -> None:
        self.limits = limits
        self._status = status
        self.checked = 0  # orders checked
        self.rejected = 0  # decisions refused
        self.sent = 0  # orders released by `consume`

    def check(
        self,
        legs: Sequence[LegCheck],
        *,
        open_trades: int,
        now_ns: int,
        position: Callable[[int, int], Decimal],
    ) -> Approval:
        """Check all legs together, reading the status flags now."""
        st = self._status
        self.checked += len(legs)
        verdict = check_legs(
            legs,
            limits=self.limits,
            halted=st.halted(),
            may_open=st.may_open(),
            open_trades=open_trades,
            now_ns=now_ns,
            feed_states=[st.feed_state(leg.venue) for leg in legs],
            positions=[position(leg.venue, leg.symbol) for leg in legs],
        )
        if not verdict.ok:
            self.rejected += 1
        return Approval(verdict, tuple(legs))

    def consume(self, approval: Approval) -> tuple[LegCheck, ...]:
        """Release an approved decision's legs for sending, exactly once.

        The kill switch is read once more here, immediately before dispatch:
        the launcher may throw it while the engine journals the intents. A
        kill in that window releases nothing (an empty tuple).
        """
        if not approval.ok:
            raise RuntimeError(f"refused decision ({approval.reason.name}) cannot be sent")
        if approval._used:
            raise RuntimeError("approval already used: an order is never sent twice")
        approval._used = True
        if self._status.halted():
            self.rejected += 1
            return ()
        self.sent += len(approval.legs)
        return approval.legs
