"""Event schema published on the events PUB socket (topic frame = event type).

The seed's fields are kept as they are (add fields, never drop these):
QUOTE_UPDATED {symbol, bid, ask, bid_size, ask_size, exchange, ts}
ARBITRAGE_OPPORTUNITY_FOUND {symbol, buy_exchange, sell_exchange, spread_pct}
ORDER_PLACED {order_id, symbol, exchange, side, size, price}
ORDER_FILLED {order_id, fill_price, fill_size, fee, is_partial}
ORDER_CANCELLED {order_id}
TRADE_COMPLETED {buy_order, sell_order, realized_pnl}
CAPITAL_SNAPSHOT_UPDATE {exchange: {free, locked, total}}
POSITION_UPDATED {exchange: {symbol: position}}
HEARTBEAT {component_name, status, ts}

Added here: LEGGING {symbol, exchange, action, detail} when a trade's legs disagree
(`action`: unwind, hedge, naked_leg, ...), which the launcher turns into an alert;
POSITION_MISMATCH {exchange, symbol, expected, actual} when the periodic reconciliation
finds the venue holding something else (the symbol is paused).
"""

from __future__ import annotations

import enum

#: the seed's required fields per event type; `check_event` enforces them
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "QUOTE_UPDATED": ("symbol", "bid", "ask", "bid_size", "ask_size", "exchange", "ts"),
    "ARBITRAGE_OPPORTUNITY_FOUND": ("symbol", "buy_exchange", "sell_exchange", "spread_pct"),
    "ORDER_PLACED": ("order_id", "symbol", "exchange", "side", "size", "price"),
    "ORDER_FILLED": ("order_id", "fill_price", "fill_size", "fee", "is_partial"),
    "ORDER_CANCELLED": ("order_id",),
    "TRADE_COMPLETED": ("buy_order", "sell_order", "realized_pnl"),
    "CAPITAL_SNAPSHOT_UPDATE": (),
    "POSITION_UPDATED": (),
    "HEARTBEAT": ("component_name", "status", "ts"),
    # added by PerpBot (not in the seed): a leg filled differently from its pair, or left naked
    "LEGGING": ("symbol", "exchange", "action", "detail"),
    # added: the day's realized loss reached risk.max_daily_loss_usd
    "DAILY_LOSS_LIMIT": ("realized_pnl", "limit"),
    # added: an alert the launcher raised, for a bell sink (the monitor rings the terminal bell)
    "ALERT": ("kind", "message"),
    # added: exec's position differs from the venue's; the symbol is paused until they agree
    "POSITION_MISMATCH": ("exchange", "symbol", "expected", "actual"),
}


#: the seed's event types (the others are PerpBot's additions)
SEED_EVENT_TYPES: tuple[str, ...] = (
    "QUOTE_UPDATED", "ARBITRAGE_OPPORTUNITY_FOUND", "ORDER_PLACED", "ORDER_FILLED", "ORDER_CANCELLED",
    "TRADE_COMPLETED", "CAPITAL_SNAPSHOT_UPDATE", "POSITION_UPDATED", "HEARTBEAT",
)


class EventType(str, enum.Enum):
    QUOTE_UPDATED = "QUOTE_UPDATED"
    ARBITRAGE_OPPORTUNITY_FOUND = "ARBITRAGE_OPPORTUNITY_FOUND"
    ORDER_PLACED = "ORDER_PLACED"
    ORDER_FILLED = "ORDER_FILLED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    TRADE_COMPLETED = "TRADE_COMPLETED"
    CAPITAL_SNAPSHOT_UPDATE = "CAPITAL_SNAPSHOT_UPDATE"
    POSITION_UPDATED = "POSITION_UPDATED"
    HEARTBEAT = "HEARTBEAT"
    LEGGING = "LEGGING"
    DAILY_LOSS_LIMIT = "DAILY_LOSS_LIMIT"
    ALERT = "ALERT"
    POSITION_MISMATCH = "POSITION_MISMATCH"

    @property
    def topic(self) -> bytes:
        return self.value.encode()


def check_event(kind: str, payload: dict[str, object]) -> None:
    """Raise ValueError if a payload lacks one of the seed's fields for its type."""
    missing = [f for f in REQUIRED_FIELDS[kind] if f not in payload]
    if missing:
        raise ValueError(f"{kind} event lacks {', '.join(missing)}")
