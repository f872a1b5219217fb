"""The risk gate: every order passes it, every refusal is a named reason in a named layer.

`check_legs` is the pure decision over plain values and a read-only `RiskView`;
`RiskGate` is the thin stateful wrapper the engine holds: it reads the kill
switch, trading state and feed states from the status segment at the moment of
the check, counts every order checked, and hands out an `Approval` that is the
only thing the engine can turn into orders (`RiskGate.consume`), so no order is
ever sent unchecked and no approval is sent twice.

All legs of one decision are checked together, before any is sent, against the
positions AFTER applying every leg of the decision; if one check fails, none is
sent. The checks run layer by layer in the order of the table (global, venue,
symbol, order), and within a layer leg by leg; the first failure is the answer
(`Verdict(reason, leg, detail, layer)`, `leg` -1 when the check is not about one
leg). In the table, `yes` means the check applies to orders of that purpose; a
decision-wide check (the global layer) applies when any leg has that purpose.

Positions are valued at the board mid (`RiskView.mark`); a venue and symbol a
leg trades with no mid is valued at that leg's `price`. A position that cannot
be valued at all refuses OPEN and HEDGE decisions with NO_QUOTE: an exposure we
cannot measure is not below a limit.

=======  ==========================================  =================  ====  =====  ============
layer    check                                       reason             OPEN  HEDGE  CLOSE/UNWIND
=======  ==========================================  =================  ====  =====  ============
global   kill switch (`halted()`, or trading state   HALTED             yes   yes    yes: after a
         HALTED)                                                                     kill NO order
global   trading state PAUSED                        PAUSED             yes   no     no
global   trading state REDUCE_ONLY                   REDUCE_ONLY        yes   [1]    no
global   open trades before it < max open trades     MAX_OPEN_TRADES    yes   no     no
global   gross exposure after the decision           GROSS_EXPOSURE     yes   yes    no [2]
venue    quote present (receive stamp > 0)           NO_QUOTE           yes   yes    yes
venue    feed CONNECTED                              FEED_DOWN          yes   yes    yes
venue    quote fresh (`stale_after_ns`)              STALE_QUOTE        yes   yes    yes
venue    venue notional after the decision           VENUE_NOTIONAL     yes   yes    no [2]
venue    resting + this decision's orders            VENUE_OPEN_ORDERS  yes   yes    no [3]
venue    free margin - margin needed >= headroom     MARGIN             yes   no     no
         (free margin unknown: refused)
symbol   symbol paused (position mismatch)           SYMBOL_PAUSED      yes   no     no
symbol   |position| per venue and symbol after       MAX_POSITION       yes   yes    no [2]
symbol   |net position across venues| after         SYMBOL_EXPOSURE    yes   no     no [2]
order    quantity > 0                                NO_SIZE            yes   yes    yes
order    the venue trades the symbol                 NO_MARKET          yes   yes    yes
order    quantity on the lot grid, `limit_price`     OFF_GRID           yes   yes    yes
         (when given) > 0 and on the tick grid
order    price within `price_band_bps` of the mid    PRICE_BAND         yes   yes    no [4]
         (no mid: NO_QUOTE)
order    notional >= the market's min notional       MIN_NOTIONAL       yes   no     no
order    all OPEN legs of a decision the same size   LEGS_UNEQUAL       yes   no     no
order    notional <= max notional per order          MAX_NOTIONAL       yes   no     no
=======  ==========================================  =================  ====  =====  ============

[1] Under REDUCE_ONLY a HEDGE passes only if it does not increase the symbol's
    |net position across venues| (in base units, after all legs of the decision
    on that symbol); otherwise REDUCE_ONLY. Under PAUSED hedges pass: they
    complete a trade already open and shrink the net exposure.
[2] Exits are never blocked by an exposure limit: they exist to reduce it.
[3] Exits are market orders that do not rest; a stuck exit is worse than one
    more order on the venue, whose own cap still applies.
[4] The band is checked for OPEN and HEDGE against the order's `limit_price`,
    or for a market order the quote it was priced from (`price`). An opening
    limit far from the board is a bug. Exits are never band-checked: a market
    exit must never be blocked, and an exit limit is always nearer the board
    than the market order the engine would send instead.

Closing orders need a fresh quote too: their price and the paper fill come from
the board, and a stale board is a price we cannot trust. A trade whose quotes
are stale simply stays open and is retried on the next check. The daily loss
limit (DAILY_LOSS) is enforced by the engine before a decision reaches the
gate; RATE_LIMIT and CAPITAL are the engine's too.

Notional of an order is `qty * price` (its valuation price). Comparisons: a
value exactly at its limit passes; one above it (or below, for the margin
headroom and min notional) is refused.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from perpbot.config import Config
from perpbot.exec.venues.base import Market, Side
from perpbot.shm.layout import FeedState, TradingState


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
    GROSS_EXPOSURE = 18  # global: sum of |position notional| over all venues above the limit
    REDUCE_ONLY = 19  # trading state REDUCE_ONLY: only orders that shrink exposure
    VENUE_NOTIONAL = 20  # venue: |position notional| on the venue above its limit
    VENUE_OPEN_ORDERS = 21  # venue: too many orders resting on the venue
    MARGIN = 22  # venue: not enough free margin (headroom) for the order
    SYMBOL_EXPOSURE = 23  # symbol: net exposure across venues above the limit
    PRICE_BAND = 24  # order: price too far from the board
    OFF_GRID = 25  # order: size off the lot or price off the tick
    LEGS_UNEQUAL = 26  # order: the legs of one trade differ in size after rounding
    SYMBOL_PAUSED = 27  # a position mismatch paused the symbol
    RATE_LIMIT = 28  # the venue's request budget for entries is spent
    CAPITAL = 29  # the capital pool cannot reserve the margin
    READ_ONLY = 30  # mode readonly: the opportunity is journaled, never traded


class Purpose(str, enum.Enum):
    OPEN = "open"
    CLOSE = "close"
    UNWIND = "unwind"  # the excess of a leg that filled more than its partner
    HEDGE = "hedge"  # completes a leg that filled less than its partner (same or next-best venue)


#: where a refusal was decided (the module table's first column)
Layer = Literal["global", "venue", "symbol", "order"]
LAYERS: tuple[Layer, ...] = ("global", "venue", "symbol", "order")

_ZERO = Decimal(0)
_BPS = Decimal(10_000)
#: purposes that add exposure and so are held to the exposure limits
_ADDS = (Purpose.OPEN, Purpose.HEDGE)


@dataclass(frozen=True, slots=True)
class LegCheck:
    """One order as the gate sees it."""

    venue: int
    symbol: int
    side: Side
    qty: Decimal  # base units, > 0
    price: Decimal  # the price its notional is valued at (the quote it was priced from)
    purpose: Purpose
    quote_ts_recv_ns: int  # receive stamp of the quote it was priced from; 0: no quote
    #: margin the order needs on its venue (notional / leverage), USD; checked for OPEN
    margin: Decimal = _ZERO
    #: the order's limit price; None: a market order
    limit_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """The configured limits in the gate's units (USD as `Decimal`, ns)."""

    max_notional_per_trade_usd: Decimal  # per order
    max_position_notional_usd: Decimal  # per venue and symbol
    max_open_trades: int
    stale_after_ns: int
    max_gross_exposure_usd: Decimal  # all venues and symbols
    max_venue_notional_usd: Decimal  # per venue
    max_open_orders_per_venue: int
    min_margin_headroom_usd: Decimal  # per venue
    max_symbol_net_exposure_usd: Decimal  # per symbol, across venues
    price_band_bps: Decimal

    @classmethod
    def from_config(cls, cfg: Config) -> Limits:
        r = cfg.risk
        return cls(
            max_notional_per_trade_usd=Decimal(repr(r.max_notional_per_trade_usd)),
            max_position_notional_usd=Decimal(repr(r.max_position_notional_usd)),
            max_open_trades=r.max_open_trades,
            stale_after_ns=cfg.scanner.stale_after_ms * 1_000_000,
            max_gross_exposure_usd=Decimal(repr(r.max_gross_exposure_usd)),
            max_venue_notional_usd=Decimal(repr(r.max_venue_notional_usd)),
            max_open_orders_per_venue=r.max_open_orders_per_venue,
            min_margin_headroom_usd=Decimal(repr(r.min_margin_headroom_usd)),
            max_symbol_net_exposure_usd=Decimal(repr(r.max_symbol_net_exposure_usd)),
            price_band_bps=Decimal(repr(r.price_band_bps)),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason
    leg: int = -1  # index of the failing leg, -1 when not leg-specific
    detail: str = ""
    layer: Layer | None = None  # None only for OK

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


OK_VERDICT = Verdict(Reason.OK)


class RiskView(Protocol):
    """The engine's state as the gate reads it; every call is a plain read, no I/O.

    Venues and symbols are the board's indices (`0 <= venue < n_venues`,
    `0 <= symbol < n_symbols`). All amounts are USD or base units as `Decimal`.
    The answers describe the moment of the check: positions include every fill
    the engine knows of, and nothing of the decision being checked (the gate
    applies its legs itself).
    """

    @property
    def n_venues(self) -> int:
        """Number of board venues (the gate sums exposure over all of them)."""
        ...

    @property
    def n_symbols(self) -> int:
        """Number of board symbols."""
        ...

    def qty(self, venue: int, symbol: int) -> Decimal:
        """Our signed net position on the venue in the symbol, base units (+ long, - short)."""
        ...

    def held(self) -> Iterable[tuple[int, int, Decimal]]:
        """Every non-zero position as (venue, symbol, signed qty): what exposure is summed over."""
        ...

    def mark(self, venue: int, symbol: int) -> Decimal | None:
        """The board mid of the venue and symbol, USD per base unit; None when it has no quote."""
        ...

    def open_orders(self, venue: int) -> int:
        """Our orders resting on the venue now (not counting the decision being checked)."""
        ...

    def margin_free(self, venue: int) -> Decimal | None:
        """Free margin on the venue, USD, before the decision; None when unknown.

        Unknown margin refuses every OPEN on the venue (MARGIN, "margin unknown").
        """
        ...

    def market(self, venue: int, symbol: int) -> Market | None:
        """The venue's grid for the symbol (tick, lot, min notional); None: not traded there."""
        ...

    def symbol_paused(self, symbol: int) -> bool:
        """True while a position mismatch keeps the symbol from opening."""
        ...


def _refuse(reason: Reason, layer: Layer, detail: str, leg: int = -1) -> Verdict:
    return Verdict(reason, leg, detail, layer)


def check_legs(
    legs: Sequence[LegCheck],
    *,
    limits: Limits,
    halted: bool,
    trading_state: TradingState,
    open_trades: int,
    now_ns: int,
    feed_states: Sequence[FeedState],
    view: RiskView,
) -> Verdict:
    """Decide on all legs of one decision together (the module table is the spec).

    `feed_states` is aligned with `legs` (the state of each leg's venue feed);
    `halted` and `trading_state` are the status segment's, read for this check.
    """
    # -- global -------------------------------------------------------------------------
    if halted or trading_state == TradingState.HALTED:
        return _refuse(Reason.HALTED, "global", "kill switch is set")
    opening = any(leg.purpose is Purpose.OPEN for leg in legs)
    adding = any(leg.purpose in _ADDS for leg in legs)
    if opening and trading_state == TradingState.PAUSED:
        return _refuse(Reason.PAUSED, "global", "trading state PAUSED does not allow new positions")
    if trading_state == TradingState.REDUCE_ONLY:
        if opening:
            return _refuse(Reason.REDUCE_ONLY, "global", "trading state REDUCE_ONLY: nothing new is opened")
        for i, leg in enumerate(legs):
            if leg.purpose is Purpose.HEDGE:
                net0 = sum((q for _, s, q in view.held() if s == leg.symbol), _ZERO)
                net1 = net0 + sum((lg.side.sign * lg.qty for lg in legs if lg.symbol == leg.symbol), _ZERO)
                if abs(net1) > abs(net0):
                    return _refuse(Reason.REDUCE_ONLY, "global",
                                   f"hedge grows the net position across venues {net0} -> {net1}", i)
    if opening and open_trades >= limits.max_open_trades:
        return _refuse(Reason.MAX_OPEN_TRADES, "global", f"{open_trades} open, limit {limits.max_open_trades}")

    # positions after every leg of the decision, and the price each touched pair falls back on
    delta: dict[tuple[int, int], Decimal] = {}
    fallback: dict[tuple[int, int], Decimal] = {}
    for leg in legs:
        key = (leg.venue, leg.symbol)
        delta[key] = delta.get(key, _ZERO) + leg.side.sign * leg.qty
        if leg.price > 0:
            fallback.setdefault(key, leg.price)

    # positions after the decision, only where there are any: exposure sums run over these,
    # not over every venue x symbol of the board (the gate is on the path to every order)
    held: dict[tuple[int, int], Decimal] = {(v, s): q for v, s, q in view.held()}
    for key, d in delta.items():
        held[key] = held.get(key, _ZERO) + d

    def after(v: int, s: int) -> Decimal:
        return held.get((v, s), _ZERO)

    marks: dict[tuple[int, int], Decimal | None] = {}

    def mark(v: int, s: int) -> Decimal | None:
        # one board read per pair per check: several layers value the same position
        key = (v, s)
        if key not in marks:
            marks[key] = view.mark(v, s)
        return marks[key]

    def value(v: int, s: int) -> Decimal | None:
        m = mark(v, s)
        return fallback.get((v, s)) if m is None else m

    def notional(pairs: Sequence[tuple[int, int]]) -> tuple[Decimal, tuple[int, int] | None]:
        """Sum of |position after| x mark over `pairs`; or the first pair that cannot be valued."""
        total = _ZERO
        for v, s in pairs:
            q = after(v, s)
            if q:
                m = value(v, s)
                if m is None:
                    return total, (v, s)
                total += abs(q) * m
        return total, None

    if adding:
        gross, unvalued = notional(list(held))
        if unvalued is not None:
            return _refuse(Reason.NO_QUOTE, "global",
                           f"cannot value the position on venue {unvalued[0]} symbol {unvalued[1]}: no mid")
        if gross > limits.max_gross_exposure_usd:
            return _refuse(Reason.GROSS_EXPOSURE, "global",
                           f"gross exposure after {gross} > {limits.max_gross_exposure_usd}")

    # -- venue --------------------------------------------------------------------------
    venue_done: set[int] = set()
    for i, leg in enumerate(legs):
        if leg.quote_ts_recv_ns <= 0:
            return _refuse(Reason.NO_QUOTE, "venue", "no quote on the board", i)
        if feed_states[i] != FeedState.CONNECTED:
            return _refuse(Reason.FEED_DOWN, "venue", f"feed state {FeedState(feed_states[i]).name}", i)
        age = now_ns - leg.quote_ts_recv_ns
        if age > limits.stale_after_ns:
            return _refuse(Reason.STALE_QUOTE, "venue", f"quote {age / 1e6:.1f} ms old", i)
        v = leg.venue
        if leg.purpose not in _ADDS or v in venue_done:
            continue
        venue_done.add(v)  # venue-wide checks once, at the venue's first adding leg
        on_venue = [lg for lg in legs if lg.venue == v]
        total, unvalued = notional([k for k in held if k[0] == v])
        if unvalued is not None:
            return _refuse(Reason.NO_QUOTE, "venue",
                           f"cannot value the position in symbol {unvalued[1]}: no mid", i)
        if total > limits.max_venue_notional_usd:
            return _refuse(Reason.VENUE_NOTIONAL, "venue",
                           f"venue notional after {total} > {limits.max_venue_notional_usd}", i)
        orders = view.open_orders(v) + len(on_venue)
        if orders > limits.max_open_orders_per_venue:
            return _refuse(Reason.VENUE_OPEN_ORDERS, "venue",
                           f"{orders} orders with this decision > {limits.max_open_orders_per_venue}", i)
        need = sum((lg.margin for lg in on_venue if lg.purpose is Purpose.OPEN), _ZERO)
        if any(lg.purpose is Purpose.OPEN for lg in on_venue):
            free = view.margin_free(v)
            if free is None:
                return _refuse(Reason.MARGIN, "venue", "margin unknown", i)
            if free - need < limits.min_margin_headroom_usd:
                return _refuse(Reason.MARGIN, "venue",
                               f"free margin {free} - needed {need} < headroom "
                               f"{limits.min_margin_headroom_usd}", i)

    # -- symbol -------------------------------------------------------------------------
    for i, leg in enumerate(legs):
        if leg.purpose not in _ADDS:
            continue
        v, s = leg.venue, leg.symbol
        if leg.purpose is Purpose.OPEN and view.symbol_paused(s):
            return _refuse(Reason.SYMBOL_PAUSED, "symbol", "symbol paused by a position mismatch", i)
        pos, unvalued = notional([(v, s)])
        if unvalued is not None:
            return _refuse(Reason.NO_QUOTE, "symbol", "cannot value the position: no mid", i)
        if pos > limits.max_position_notional_usd:
            return _refuse(Reason.MAX_POSITION, "symbol",
                           f"position after {pos} > {limits.max_position_notional_usd}", i)
        if leg.purpose is Purpose.OPEN:
            price = value(v, s)
            if price is None:
                return _refuse(Reason.NO_QUOTE, "symbol", "no mid to value the net position at", i)
            net = sum((q for (_, t), q in held.items() if t == s), _ZERO)
            exposure = abs(net) * price
            if exposure > limits.max_symbol_net_exposure_usd:
                return _refuse(Reason.SYMBOL_EXPOSURE, "symbol",
                               f"net {net} across venues, {exposure} > "
                               f"{limits.max_symbol_net_exposure_usd}", i)

    # -- order --------------------------------------------------------------------------
    markets: list[Market] = []
    for i, leg in enumerate(legs):
        if leg.qty <= 0:
            return _refuse(Reason.NO_SIZE, "order", f"quantity {leg.qty}", i)
        mkt = view.market(leg.venue, leg.symbol)
        if mkt is None:
            return _refuse(Reason.NO_MARKET, "order", "the venue does not trade the symbol", i)
        markets.append(mkt)
        if leg.qty % mkt.lot_size:
            return _refuse(Reason.OFF_GRID, "order", f"quantity {leg.qty} off lot {mkt.lot_size}", i)
        lp = leg.limit_price
        if lp is not None and (lp <= 0 or lp % mkt.tick_size):
            return _refuse(Reason.OFF_GRID, "order", f"limit price {lp} off tick {mkt.tick_size}", i)
        if leg.purpose in _ADDS:
            ref = leg.price if lp is None else lp
            mid = mark(leg.venue, leg.symbol)
            if mid is None or mid <= 0:
                return _refuse(Reason.NO_QUOTE, "order", "no board mid to check the price against", i)
            if abs(ref - mid) * _BPS > limits.price_band_bps * mid:
                off = abs(ref - mid) * _BPS / mid
                return _refuse(Reason.PRICE_BAND, "order",
                               f"price {ref} is {off:.2f} bps from mid {mid} > {limits.price_band_bps}", i)
        if leg.purpose is Purpose.OPEN and leg.qty * leg.price < mkt.min_notional_usd:
            return _refuse(Reason.MIN_NOTIONAL, "order",
                           f"{leg.qty * leg.price} < min notional {mkt.min_notional_usd}", i)
    first_open: LegCheck | None = None
    for i, leg in enumerate(legs):
        if leg.purpose is Purpose.OPEN:
            if first_open is None:
                first_open = leg
            elif leg.qty != first_open.qty:
                return _refuse(Reason.LEGS_UNEQUAL, "order", f"quantities {first_open.qty} and {leg.qty}", i)
    for i, leg in enumerate(legs):
        if leg.purpose is Purpose.OPEN and leg.qty * leg.price > limits.max_notional_per_trade_usd:
            return _refuse(Reason.MAX_NOTIONAL, "order",
                           f"{leg.qty * leg.price} > {limits.max_notional_per_trade_usd}", i)
    return OK_VERDICT


class GateStatus(Protocol):
    """What the gate reads from the status segment (`StatusBoard` satisfies it)."""

    def halted(self) -> bool: ...
    def trading_state(self) -> TradingState: ...
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
    """Counts and enforces `check_legs` for the engine.

    Counters (orders are legs, decisions are `check` calls):

    - `checked`: orders checked;
    - `approved`: orders in decisions the check approved;
    - `sent`: orders released by `consume`;
    - `held`: orders of approved decisions a kill switch held back at `consume`;
    - `rejected`: decisions refused, at the check or by a kill at `consume`;
    - `rejections` / `layer_rejections`: the same refusals by reason and by layer
      (a kill at `consume` counts as HALTED, global).

    Invariant, for the status segment: every order sent was approved and
    approved exactly once, so `sent + held + pending == approved <= checked`,
    where `pending` is approved orders whose approval has not been consumed
    yet (zero whenever no decision sits between its check and its dispatch).
    Hence for approved orders "checked" and "sent" are provably equal: each
    one is either sent or counted as held.
    """

    def __init__(self, limits: Limits, status: GateStatus) -> None:
        self.limits = limits
        self._status = status
        self.checked = 0
        self.approved = 0
        self.sent = 0
        self.held = 0
        self.rejected = 0
        self.rejections: Counter[Reason] = Counter()
        self.layer_rejections: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        """Approved orders not yet released or held back."""
        return self.approved - self.sent - self.held

    def check(
        self,
        legs: Sequence[LegCheck],
        *,
        open_trades: int,
        now_ns: int,
        view: RiskView,
    ) -> Approval:
        """Check all legs together, reading the status flags now."""
        st = self._status
        legs = tuple(legs)
        self.checked += len(legs)
        verdict = check_legs(
            legs,
            limits=self.limits,
            halted=st.halted(),
            trading_state=st.trading_state(),
            open_trades=open_trades,
            now_ns=now_ns,
            feed_states=[st.feed_state(leg.venue) for leg in legs],
            view=view,
        )
        if verdict.ok:
            self.approved += len(legs)
        else:
            self._count_refusal(verdict.reason, verdict.layer or "global")
        return Approval(verdict, legs)

    def validate(
        self,
        legs: Sequence[LegCheck],
        *,
        open_trades: int,
        now_ns: int,
        view: RiskView,
    ) -> Verdict:
        """The same decision as `check`, for legs that are NOT about to be sent.

        Used to pre-validate a pair whose legs go out one after the other (maker
        first, then the taker hedge): each is then `check`ed when it is sent, so
        counting them here too would break `checked` vs `sent`. Gives no Approval.
        """
        st = self._status
        return check_legs(
            tuple(legs),
            limits=self.limits,
            halted=st.halted(),
            trading_state=st.trading_state(),
            open_trades=open_trades,
            now_ns=now_ns,
            feed_states=[st.feed_state(leg.venue) for leg in legs],
            view=view,
        )

    def _count_refusal(self, reason: Reason, layer: str) -> None:
        self.rejected += 1
        self.rejections[reason] += 1
        self.layer_rejections[layer] += 1

    def consume(self, approval: Approval) -> tuple[LegCheck, ...]:
        """Release an approved decision's legs for sending, exactly once.

        The kill switch is read once more here, immediately before dispatch:
        the launcher may throw it while the engine journals the intents. A
        kill in that window releases nothing (an empty tuple) and counts the
        legs as `held`.
        """
        if not approval.ok:
            raise RuntimeError(f"refused decision ({approval.reason.name}) cannot be sent")
        if approval._used:
            raise RuntimeError("approval already used: an order is never sent twice")
        approval._used = True
        if self._status.halted():
            self.held += len(approval.legs)
            self._count_refusal(Reason.HALTED, "global")
            return ()
        self.sent += len(approval.legs)
        return approval.legs
