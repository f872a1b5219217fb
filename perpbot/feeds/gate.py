"""Gate USDT-margined perpetual futures (WebSocket v4): `futures.book_ticker`.

Sample (recorded from the live endpoint, cryptofeed sample data, 2023)::

    {"time":1684930165,"time_ms":1684930165631,"channel":"futures.book_ticker",
     "event":"update","result":{"t":1684930165621,"u":6159967,"s":"PHB_USDT",
     "b":"0.7379","B":814,"a":"0.739","A":677}}

`t` is epoch ms, `u` the book update id, `b`/`a` price strings ("" when that
side is empty), `B`/`A` sizes in CONTRACTS (quanto_multiplier: 0.0001 BTC for
BTC_USDT), multiplied by the context's contract size here. Sizes are integers
(truncated toward zero) unless the handshake carries `X-Gate-Size-Decimal: 1`,
which switches them to decimal strings; the header is sent and both forms are
read.

One subscribe message may name several contracts (the 2023 recording
subscribes ten at once and gets one ack); a message fails as a whole if any
contract is unknown, so they go out in batches. Acks are
`{"time":..,"channel":"futures.book_ticker","event":"subscribe","result":{"status":"success"}}`
(newer servers add id, conn_id, trace_id, payload); errors carry
`"error":{"code":2,"message":"unknown contract ..."}` and
`"result":{"status":"fail"}`. The server pings at the protocol level; the
application ping `{"time":<s>,"channel":"futures.ping"}` is answered with
`{"time":..,"time_ms":..,"conn_id":..,"channel":"futures.pong","event":"","result":null}`.

Sources: Gate futures WS v4 docs (URL, channel, ping), ccxt 4.5.90
`ccxt/pro/gate.py` (size header, error shapes, book_ticker layout), ccxt's
recorded fixtures `ts/src/test/static/ws/gate.json` (current ack shape),
cryptofeed's GATEIO_FUTURES recording (book_ticker frames with integer sizes),
public client notes quoting live pong frames. Whether the decimal header
changes `B`/`A` on this channel specifically is unconfirmed; both are parsed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson

from perpbot.feeds.spec import (
    BBO,
    FeedSpec,
    ParseError,
    Parser,
    ParserContext,
    PingRule,
    base_size,
    check_quote,
    contract_scale,
    json_object,
    ms_to_ns,
)

CHANNEL = "futures.book_ticker"
#: contracts per subscribe message: a message with one delisted contract fails entirely,
#: so batches bound the damage (live reports: 200 per message accepted)
MAX_CONTRACTS_PER_REQUEST = 100
#: Gate's own demo client pings every 10 s; the server's idle timeout is undocumented
PING_INTERVAL_S = 10.0
#: sizes as decimal strings instead of integers truncated toward zero
SIZE_DECIMAL_HEADER = {"X-Gate-Size-Decimal": "1"}

_PONG_MARK = b'"futures.pong"'


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    """`futures.book_ticker` subscribe messages, up to MAX_CONTRACTS_PER_REQUEST contracts each."""
    now_s = int(time.time())
    return [
        orjson.dumps(
            {
                "time": now_s,
                "id": n + 1,
                "channel": CHANNEL,
                "event": "subscribe",
                "payload": list(symbols[i : i + MAX_CONTRACTS_PER_REQUEST]),
            }
        )
        for n, i in enumerate(range(0, len(symbols), MAX_CONTRACTS_PER_REQUEST))
    ]


def ping_payload() -> bytes:
    """The application ping, stamped with the current epoch second."""
    return b'{"time":%d,"channel":"futures.ping"}' % int(time.time())


def is_pong(frame: bytes) -> bool:
    """True for `{"channel":"futures.pong",...}`; checked on every frame, so a substring test."""
    return _PONG_MARK in frame


def _control(msg: dict[str, object]) -> list[BBO]:
    """Acks, pongs and other channels are no quote; an error reply is a ParseError."""
    err = msg.get("error")
    result = msg.get("result")
    if err is not None or (type(result) is dict and result.get("status") == "fail"):
        raise ParseError("error_reply", f"{msg.get('channel')} {err}"[:120])
    return []


def make_parser(ctx: ParserContext) -> Parser:
    """A parser for one connection; it caches each contract's scale, nothing else."""
    scales: dict[str, tuple[float, str, int]] = {}

    def scale_of(sym: str) -> tuple[float, str, int]:
        # first sight of a symbol only: the hot path reads the cache itself
        s = scales[sym] = contract_scale(ctx.contract_size(sym))
        return s

    def parse(frame: bytes, binary: bool = False) -> list[BBO]:
        msg = json_object(frame, binary)
        if msg.get("channel") != CHANNEL or msg.get("event") != "update":
            if "channel" not in msg:
                raise ParseError("unexpected_shape", "no channel")
            return _control(msg)
        try:
            r = msg["result"]
            sym = r["s"]
            bid_px = r["b"]
            ask_px = r["a"]
            bid_sz = r["B"]
            ask_sz = r["A"]
            ts = r["t"]
        except KeyError as e:
            raise ParseError("missing_field", str(e)) from None
        except TypeError:
            raise ParseError("unexpected_shape", "result is not an object") from None
        if type(sym) is not str:
            raise ParseError("bad_field", "s")
        cs, suffix, cs_dp = scales.get(sym) or scale_of(sym)
        try:
            bid = float(bid_px)
            ask = float(ask_px)
            if suffix and type(bid_sz) is str and type(ask_sz) is str:
                bsz = float(bid_sz + suffix)  # the usual case, inlined: see base_size
                asz = float(ask_sz + suffix)
            else:
                bsz = base_size(bid_sz, cs, suffix, cs_dp)
                asz = base_size(ask_sz, cs, suffix, cs_dp)
        except (TypeError, ValueError, OverflowError) as e:
            if bid_px == "" or ask_px == "":  # Gate's mark of an empty side
                raise ParseError("empty_side", sym) from None
            raise ParseError("bad_number", str(e)[:60]) from None
        check_quote(bid, ask, bsz, asz)
        return [BBO(sym, bid, ask, bsz, asz, ms_to_ns(ts))]

    return parse


SPEC = FeedSpec(
    name="gate",
    public_url="wss://fx-ws.gateio.ws/v4/ws/usdt",
    demo_path="/v4/ws/usdt",
    subscribe=subscribe,
    make_parser=make_parser,
    ping=PingRule(interval_s=PING_INTERVAL_S, payload=ping_payload, is_pong=is_pong),
    extra_headers=SIZE_DECIMAL_HEADER,
)
