"""Bitget v2 USDT-M futures: `books1` (level 1, every push a snapshot) on /v2/ws/public.

Sample (books1 is documented with the same shape as this real `books5` frame
from the ccxt project's test fixtures, one level per side)::

    {"action":"snapshot","arg":{"instType":"USDT-FUTURES","channel":"books5","instId":"BTCUSDT"},
     "data":[{"asks":[["63918.5","3.1562"],["63918.8","0.0791"]],"bids":[["63918.4","8.8614"],
     ["63918.3","0.0001"]],"ts":"1786541258897","seq":820531524124,"pseq":0}],"ts":1786541258899}

books1/5/15/50 are pushed whole every time (bitget.com/api-doc, depth channel),
so the parser keeps no state and takes the first level of each side; the
`ticker` channel (bidPr/askPr/bidSz/askSz) parses as well. The symbol is
`arg.instId`, the exchange stamp `data[].ts` (ms, a string). Sizes are base
units (contract size 1; `sizeMultiplier` is the size step, not a multiplier).
A side with no level means "no quote" and emits nothing.

Control frames: acks `{"event":"subscribe","arg":{...}}` (one per arg),
errors `{"event":"error","code":30001,"msg":"... doesn't exist",...}`, and the
bare text `pong` answering the client's text `ping`. Bitget's limits: 10
messages/s per connection, 240 subscribe requests/hour, at most 1000 channels
per connection and "strongly recommended" no more than 50; so each
connection carries up to 50 symbols in one subscribe request. The server
drops a connection without a `ping` for 30 s (older doc) or 2 min (newer).
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

INST_TYPE = "USDT-FUTURES"
CHANNEL = "books1"
#: channels per connection and per subscribe request (Bitget's stability recommendation)
MAX_CHANNELS_PER_CONNECTION = 50
#: under the older documented 30 s idle cut-off
PING_INTERVAL_S = 25.0

#: depth channels pushed whole on every update (`books` alone is incremental)
_SNAPSHOT_BOOKS = frozenset({"books1", "books5", "books15", "books50"})


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    """`{"op":"subscribe","args":[{instType, channel, instId}, ...]}`, up to 50 args a request."""
    syms = list(symbols)
    n = MAX_CHANNELS_PER_CONNECTION
    return [
        orjson.dumps({"op": "subscribe",
                      "args": [{"instType": INST_TYPE, "channel": CHANNEL, "instId": s} for s in syms[i:i + n]]})
        for i in range(0, len(syms), n)
    ]


def connections(base_url: str, symbols: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Up to `MAX_CHANNELS_PER_CONNECTION` symbols per connection."""
    syms = list(symbols)
    n = MAX_CHANNELS_PER_CONNECTION
    return [(base_url, syms[i:i + n]) for i in range(0, len(syms), n)] or [(base_url, [])]


def _ping_payload() -> bytes:
    return b"ping"


def is_pong(payload: bytes) -> bool:
    """True for Bitget's bare text `pong`."""
    return payload == b"pong"


def _reply(msg: dict[str, object]) -> list[BBO]:
    """A frame without data: an event (ack, login) or an error."""
    event = msg.get("event")
    if event == "error":
        raise ParseError("error_reply", f"{msg.get('code')} {msg.get('msg')}"[:120])
    if type(event) is str:
        return []
    raise ParseError("unexpected_shape", "neither data nor an event")


def make_parser(ctx: ParserContext) -> Parser:
    """A stateless parser bound to the symbols' contract sizes."""
    contract_size = ctx.contract_size

    def parse(frame: bytes, binary: bool = False) -> list[BBO]:
        if binary:
            raise ParseError("unexpected_binary", f"{len(frame)} bytes")
        if frame == b"pong":
            return []
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError:
            raise ParseError("not_json", frame[:60].decode(errors="replace")) from None
        if type(msg) is not dict:
            raise ParseError("unexpected_shape", "top level is not an object")
        data = msg.get("data")
        if data is None:
            return _reply(msg)
        try:
            arg = msg["arg"]
            channel = arg["channel"]
            sym = arg["instId"]
        except KeyError as e:
            raise ParseError("missing_field", str(e)) from None
        except TypeError:
            raise ParseError("unexpected_shape", "arg is not an object") from None
        if type(channel) is not str:
            raise ParseError("bad_field", "channel")
        if channel in _SNAPSHOT_BOOKS:
            books = True
        elif channel == "ticker":
            books = False
        else:
            return []  # trades, candles, the incremental `books`: not a top of book
        if type(sym) is not str:
            raise ParseError("bad_field", "instId")
        if type(data) is not list:
            raise ParseError("unexpected_shape", "data is not a list")
        cs = contract_size(sym)
        out: list[BBO] = []
        for d in data:
            if type(d) is not dict:
                raise ParseError("unexpected_shape", "data entry is not an object")
            try:
                if books:
                    b = d["bids"]
                    a = d["asks"]
                    if type(b) is not list or type(a) is not list:
                        raise ParseError("bad_field", "depth side is not a list")
                    if not b or not a:
                        continue  # a side without levels: no quote
                    b = b[0]
                    a = a[0]
                    if type(b) is not list or type(a) is not list:
                        raise ParseError("bad_level", "a level is not a list")
                    bid = float(b[0])
                    bid_size = float(b[1]) * cs
                    ask = float(a[0])
                    ask_size = float(a[1]) * cs
                else:
                    bid = float(d["bidPr"])
                    bid_size = float(d["bidSz"]) * cs
                    ask = float(d["askPr"])
                    ask_size = float(d["askSz"]) * cs
                ts = d["ts"]
            except KeyError as e:
                raise ParseError("missing_field", str(e)) from None
            except IndexError:
                raise ParseError("bad_level", "a level has fewer than two fields") from None
            except ParseError:  # a ValueError too: keep its kind
                raise
            except (TypeError, ValueError, OverflowError) as e:
                raise ParseError("bad_number", str(e)[:60]) from None
            check_quote(bid, ask, bid_size, ask_size)
            out.append(BBO(sym, bid, ask, bid_size, ask_size, ms_to_ns(ts)))
        return out

    return parse


SPEC = FeedSpec(
    name="bitget",
    public_url="wss://ws.bitget.com/v2/ws/public",
    demo_path="/v2/ws/public",
    subscribe=subscribe,
    make_parser=make_parser,
    connections=connections,
    ping=PingRule(interval_s=PING_INTERVAL_S, payload=_ping_payload, is_pong=is_pong),
)
