"""Binance USDⓈ-M futures as the demo market speaks it: the reference protocol module.

Copy this module for a new venue: one `SimProtocol` subclass named like the
feed, exported as `PROTOCOL`, every byte on the wire built here and nowhere
else.

Wire behaviour (combined streams on the routed `/public/stream` path):

- URL subscription: `/public/stream?streams=btcusdt@bookTicker/ethusdt@bookTicker`.
- Requests: `{"method":"SUBSCRIBE","params":[...],"id":1}`, `UNSUBSCRIBE`
  likewise, `{"method":"LIST_SUBSCRIPTIONS","id":3}`. Acks are
  `{"result":null,"id":1}`; LIST_SUBSCRIPTIONS answers `{"result":[...],"id":3}`.
- Errors, as Binance sends them: `{"error":{"code":3,"msg":"Invalid JSON: ..."},"id":null}`
  (codes: 0 unknown property, 1 invalid value type, 2 invalid request,
  3 invalid JSON). A stream name that is not a Binance stream at all
  (`"not a stream"`, `btcusdt@bookticker`) is refused as a whole request with
  code 2 `Invalid request: invalid stream`, as the venue does.
- A well-formed stream for a symbol the venue does not list, or for a channel
  served on another routed path (`btcusdt@aggTrade` lives under `/market`), is
  acked and then silent: Binance does not report either.
- Data: one combined-stream bookTicker frame per quote change, text.

Symbols are matched case-insensitively and channels exactly, as Binance does.
Numbers are written as fixed-point decimal strings with exactly the tick's
(or lot's) decimals, as the venue does, so the text is exact for on-grid
values. Frames are built with f-strings: about ten times cheaper than a dict
dump.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

import orjson

from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol

#: USDⓈ-M futures stream names (symbol part already lower-cased): per-symbol and all-market streams
_STREAM = re.compile(
    r"^(?:"
    r"[a-z0-9_]+@(?:aggTrade|markPrice(?:@1s)?|miniTicker|ticker|bookTicker|forceOrder|compositeIndex"
    r"|kline_(?:1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)"
    r"|continuousKline_(?:1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)"
    r"|depth(?:5|10|20)?(?:@(?:100|250|500)ms)?)"
    r"|!(?:markPrice@arr(?:@1s)?|miniTicker@arr|ticker@arr|bookTicker|forceOrder@arr|contractInfo|assetIndex@arr)"
    r")$"
)

_METHODS = "SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS"


def stream_name(name: str) -> str:
    """Normalise a stream name as Binance matches it: the symbol part case-insensitively, the rest exactly."""
    if name.startswith("!"):
        return name  # an all-market stream has no symbol part
    sym, at, channel = name.partition("@")
    return f"{sym.lower()}{at}{channel}"


def result(request_id: int | None, value: list[str] | None = None) -> bytes:
    """Reply to a request: `{"result":null,"id":N}` acks; a list answers LIST_SUBSCRIPTIONS."""
    return orjson.dumps({"result": value, "id": request_id})


def error(code: int, msg: str, request_id: int | None = None) -> bytes:
    """Reply to an invalid request, e.g. `{"error":{"code":3,"msg":"Invalid JSON: ..."},"id":null}`."""
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id})


class BinanceUsdmProtocol(SimProtocol):
    """Combined-stream bookTicker with Binance's request/ack/error replies."""

    name = "binanceusdm"

    def topic(self, symbol: str) -> str:
        """`BTCUSDT` -> `btcusdt@bookTicker` (stream names are lower case)."""
        return f"{symbol.lower()}@bookTicker"

    def route(self, path: str) -> list[str] | None:
        """`/public/stream?streams=btcusdt@bookTicker/ethusdt@bookTicker` -> the two stream names."""
        route, _, query = path.partition("?")
        if route.rstrip("/") != self.demo_path.rstrip("/"):
            return None
        streams = parse_qs(query).get("streams", [])
        return [stream_name(s) for value in streams for s in value.split("/") if s]

    def on_message(self, payload: bytes, binary: bool, session: Session) -> list[Frame]:
        """Answer one request frame: SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS."""
        return [Frame(self._answer(payload, session.topics))]

    def quote(self, inst: Instrument, q: SimQuote, update_id: int, ts_ms: int) -> Frame:
        """A combined-stream bookTicker frame, e.g.

        {"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":17,"s":"BTCUSDT",
         "b":"60000.1","B":"0.812","a":"60000.2","A":"1.090","T":1786541241006,"E":1786541241006}}
        """
        p, s = inst.price_dp, inst.size_dp
        return Frame((
            f'{{"stream":"{inst.topic}","data":{{"e":"bookTicker","u":{update_id},"s":"{inst.symbol}",'
            f'"b":"{q.bid:.{p}f}","B":"{q.bid_size:.{s}f}",'
            f'"a":"{q.ask:.{p}f}","A":"{q.ask_size:.{s}f}",'
            f'"T":{ts_ms},"E":{ts_ms}}}}}'
        ).encode())

    def _answer(self, payload: bytes, topics: set[str]) -> bytes:
        try:
            msg: Any = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            return error(3, f"Invalid JSON: {e}")
        if type(msg) is not dict:
            return error(2, "Invalid request: expected an object")
        rid = msg.get("id")
        if rid is not None and (type(rid) is not int or rid < 0):
            return error(2, "Invalid request: request ID must be an unsigned integer")
        method = msg.get("method")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            params = msg.get("params")
            if type(params) is not list or not all(type(p) is str for p in params):
                return error(2, "Invalid request: params must be a list of stream names", rid)
            names = [stream_name(p) for p in params]
            if not all(_STREAM.match(n) for n in names):
                return error(2, "Invalid request: invalid stream", rid)
            if method == "SUBSCRIBE":
                topics.update(names)
            else:
                topics.difference_update(names)
            return result(rid)
        if method == "LIST_SUBSCRIPTIONS":
            return result(rid, sorted(topics))
        return error(2, f"Invalid request: unknown variant {method!r}, expected one of {_METHODS}", rid)


PROTOCOL = BinanceUsdmProtocol
