"""Binance USDⓈ-M futures: `<symbol>@bookTicker` on the routed `/public` path.

Sample (combined stream)::

    {"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":400900217,
     "E":1568014460893,"T":1568014460891,"s":"BTCUSDT","b":"25.35190000",
     "B":"31.21000000","a":"25.36520000","A":"40.66000000"}}

Sizes are base units. `T` (transaction time, ms) is the exchange stamp, `E`
when `T` is absent. Since 2026 bookTicker lives under `/public/...`; the old
root path fails silently, so the URL is fixed here and nowhere else.
Subscribe acks are `{"result":null,"id":N}`; errors carry `"error"`.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import orjson

from perpbot.feeds.spec import (
    BBO,
    MAX_EPOCH_MS,
    FeedSpec,
    ParseError,
    Parser,
    ParserContext,
    check_quote,
    ms_to_ns,
)


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    # Binance allows 10 messages/s per connection; one frame carries every stream
    params = [f"{s.lower()}@bookTicker" for s in symbols]
    return [orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": 1})]


class _Ticker(msgspec.Struct, gc=False):
    e: str
    s: str
    # bool first: lenient mode would read a JSON true as 1.0 into a plain float; here it stays
    # a bool, which the type check below refuses
    b: bool | float
    B: bool | float
    a: bool | float
    A: bool | float
    T: int


class _Combined(msgspec.Struct, gc=False):
    data: _Ticker


# a typed decoder builds no dicts and turns the decimal strings into floats in C: about 3x
# cheaper than orjson plus dict lookups and float(); lenient mode is what converts the strings.
# Unknown keys are skipped; anything that does not fit goes the slow way, which names the fault.
_decode_fast = msgspec.json.Decoder(_Combined, strict=False).decode
_FastMiss = (msgspec.ValidationError, msgspec.DecodeError)
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_new_bbo = tuple.__new__  # a BBO without NamedTuple's argument handling: this is the hot path
_INF = float("inf")
_MAX_MS = MAX_EPOCH_MS


def parse(frame: bytes, binary: bool = False) -> list[BBO]:
    if binary:
        raise ParseError("unexpected_binary", f"{len(frame)} bytes")
    try:
        d = _decode_fast(frame).data
    except _FastMiss:
        pass
    else:
        bid, ask, bsz, asz, ts = d.b, d.a, d.B, d.A, d.T
        if (type(bid) is float and type(ask) is float and type(bsz) is float and type(asz) is float
                and d.e == "bookTicker" and 0.0 < bid <= ask < _INF and 0.0 <= bsz < _INF
                and 0.0 <= asz < _INF and 0 < ts < _MAX_MS):
            return [_new_bbo(BBO, (d.s, bid, ask, bsz, asz, ts * 1_000_000))]
    try:
        msg = _loads(frame)
    except _JSONDecodeError:
        raise ParseError("not_json", bytes(frame[:60]).decode(errors="replace")) from None
    return _parse_slow(msg)


def _parse_slow(msg: object) -> list[BBO]:
    """Everything off the fast path: control frames, the raw-stream form, and naming what is wrong."""
    if type(msg) is not dict:
        raise ParseError("unexpected_shape", "top level is not an object")
    data = msg.get("data", msg)
    if type(data) is not dict:
        raise ParseError("unexpected_shape", "data is not an object")
    if data.get("e") != "bookTicker":
        if "error" in msg:
            raise ParseError("error_reply", str(msg["error"])[:80])
        if "result" in msg or "e" in data:
            return []  # subscribe ack or another stream on the same connection
        raise ParseError("unexpected_shape", "no event type")
    try:
        sym = data["s"]
        bid = _number(data["b"])
        ask = _number(data["a"])
        bsz = _number(data["B"])
        asz = _number(data["A"])
        ts = data.get("T") or data["E"]
    except KeyError as e:
        raise ParseError("missing_field", str(e)) from None
    except (TypeError, ValueError) as e:
        raise ParseError("bad_number", str(e)[:60]) from None
    if type(sym) is not str:
        raise ParseError("bad_field", "symbol")
    check_quote(bid, ask, bsz, asz)
    return [BBO(sym, bid, ask, bsz, asz, ms_to_ns(ts))]


def _number(v: object) -> float:
    """A decimal string (or a plain JSON number); never a bool, which float() would take as 0 or 1."""
    if type(v) is str or type(v) is float or type(v) is int:
        return float(v)
    raise TypeError(f"expected a decimal string, got {type(v).__name__}")


def make_parser(ctx: ParserContext) -> Parser:
    return parse  # stateless; USDⓈ-M linear contracts are quoted in base units


SPEC = FeedSpec(
    name="binanceusdm",
    public_url="wss://fstream.binance.com/public/stream",
    demo_path="/public/stream",
    subscribe=subscribe,
    make_parser=make_parser,
)
