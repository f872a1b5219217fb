"""Hyperliquid perps: the `bbo` channel (best bid and offer per coin, pushed per block on change).

Sample (captured from wss://api.hyperliquid.xyz/ws, HIP-3 market; BTC frames
are identical with coin "BTC")::

    {"channel":"bbo","data":{"coin":"xyz:SILVER","time":1790119644141,
     "bbo":[{"px":"67.388","sz":"10.08","n":1},{"px":"67.389","sz":"76.55","n":2}]}}

`bbo[0]` is the bid, `bbo[1]` the ask; either can be `null` while that side
of the book is empty, and nothing is emitted until both are there (shape per
the @nktkas/hyperliquid `BboEvent` schema). `time` is the block time in ms.
`l2Book` frames (`"levels":[[bids...],[asks...]]`, as in ccxt's recorded
fixtures) are read too, from their first level per side. Venue symbols are
coin names (`BTC`; HIP-3 builder perps `dex:COIN`); sizes are base units.

Protocol, as the official python SDK and ccxt speak it:
- on connect the server sends the bare text `Websocket connection established.`;
- ONE coin per subscribe frame, `{"method":"subscribe","subscription":{"type":"bbo","coin":"BTC"}}`
  (no batching; 1000 subscriptions per IP and 2000 client messages a minute);
- ack `{"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":{...}}}`;
- errors `{"channel":"error","data":"<sentence>"}`, e.g. `Already subscribed: {...}`;
- the server drops a connection it has heard nothing from for 60 s: the client
  sends `{"method":"ping"}` (SDK every 50 s, ccxt 20 s), the reply is `{"channel":"pong"}`.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from perpbot.feeds.spec import (
    BBO,
    FeedSpec,
    ParseError,
    Parser,
    ParserContext,
    PingRule,
    check_quote,
    ms_to_ns,
)

#: the bare text the server sends right after the handshake
GREETING = b"Websocket connection established."
PING = b'{"method":"ping"}'
_PONG = b'{"channel":"pong"}'

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    """One `bbo` subscribe frame per coin: the venue takes a single coin per message."""
    return [orjson.dumps({"method": "subscribe", "subscription": {"type": "bbo", "coin": c}}) for c in symbols]


def is_pong(frame: bytes) -> bool:
    """True for the reply to `{"method":"ping"}` (tolerates JSON whitespace)."""
    return len(frame) < 40 and frame.replace(b" ", b"") == _PONG


def _control(msg: dict[str, object], channel: object) -> list[BBO]:
    """Frames that carry no quote: acks, pongs, other channels; an error reply raises."""
    if channel == "error":
        raise ParseError("error_reply", str(msg.get("data"))[:80])
    if type(channel) is str:
        return []  # subscriptionResponse, pong, or a channel this feed never asked for
    raise ParseError("unexpected_shape", "no channel")


def make_parser(ctx: ParserContext) -> Parser:
    """A stateless parser: every `bbo`/`l2Book` frame is a complete top of book."""
    sizes = ctx.contract_sizes  # empty for Hyperliquid (base units); honoured if configured

    def parse(frame: bytes, binary: bool = False) -> list[BBO]:
        if binary:
            raise ParseError("unexpected_binary", f"{len(frame)} bytes")
        try:
            msg = _loads(frame)
        except _JSONDecodeError:
            if frame == GREETING:
                return []
            raise ParseError("not_json", frame[:60].decode(errors="replace")) from None
        if type(msg) is not dict:
            raise ParseError("unexpected_shape", "top level is not an object")
        channel = msg.get("channel")
        if channel != "bbo" and channel != "l2Book":
            return _control(msg, channel)
        # ParseError is a ValueError: nothing in this block may raise one
        try:
            data = msg["data"]
            if channel == "bbo":
                bid_lv, ask_lv = data["bbo"]
                if bid_lv is None or ask_lv is None:
                    return []  # one side of the book is empty
            else:
                bids, asks = data["levels"]
                if not bids or not asks:
                    return []
                bid_lv = bids[0]
                ask_lv = asks[0]
            coin = data["coin"]
            ts = data["time"]
            bid = float(bid_lv["px"])
            ask = float(ask_lv["px"])
            bsz = float(bid_lv["sz"])
            asz = float(ask_lv["sz"])
        except KeyError as e:
            raise ParseError("missing_field", str(e)) from None
        except (TypeError, ValueError, OverflowError) as e:
            raise ParseError("bad_value", str(e)[:60]) from None
        if type(coin) is not str:
            raise ParseError("bad_field", "coin")
        if sizes:
            cs = sizes.get(coin, 1.0)
            bsz *= cs
            asz *= cs
        check_quote(bid, ask, bsz, asz)
        return [BBO(coin, bid, ask, bsz, asz, ms_to_ns(ts))]

    return parse


SPEC = FeedSpec(
    name="hyperliquid",
    public_url="wss://api.hyperliquid.xyz/ws",
    demo_path="/ws",
    subscribe=subscribe,
    make_parser=make_parser,
    # the server closes after 60 s without a client message; 30 s leaves room for a lost ping
    ping=PingRule(interval_s=30.0, payload=lambda: PING, is_pong=is_pong),
)
