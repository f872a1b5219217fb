"""OKX v5 public websocket: `bbo-tbt` (tick-by-tick L1) for SWAP instruments.

Sample (BTC-USDT-SWAP `books5`, recorded live by the ccxt project in 2026;
`bbo-tbt` frames have the same layout with one level per side)::

    {"arg":{"channel":"books5","instId":"BTC-USDT-SWAP"},"data":[{
     "asks":[["63921.5","790.41","0","42"],["63921.8","0.32","0","1"]],
     "bids":[["63921.4","421.93","0","28"],["63921.3","0.25","0","1"]],
     "instId":"BTC-USDT-SWAP","ts":"1786541241006","seqId":333794734980}]}

Levels are `[price, size, deprecated "0", order count]`, all strings. SWAP
sizes are CONTRACTS (ctVal: 0.01 BTC for BTC-USDT-SWAP), multiplied by the
context's contract size here; spot instIds have no contract size (1.0). `ts`
is epoch ms as a string. The parser also reads `tickers` frames
(`bidPx/bidSz/askPx/askSz`), which is what the 2022 recording carries.

Control traffic: subscribe/unsubscribe acks are
`{"event":"subscribe","arg":{...},"connId":"..."}`; errors are
`{"event":"error","code":"60018","msg":"...","connId":"..."}`; the keepalive is
the bare text `ping` answered by the bare text `pong` (not JSON). OKX closes a
connection after 30 s without traffic; ccxt pings every 18 s.

Sources: ccxt 4.5.90 `ccxt/pro/okx.py` (bbo-tbt layout, text ping, error
shapes), ccxt's recorded fixtures `ts/src/test/static/ws/okx.json` (books5 and
tickers frames, acks with connId), cryptofeed's OKX recording (tickers, 2022).
The subscribe-args budget (64 KB per request, 480 requests per hour per
connection) is from secondary sources and not verified here.
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
    base_size,
    check_quote,
    contract_scale,
    ms_to_ns,
)

CHANNEL = "bbo-tbt"
#: args per subscribe request: about 9 KB of JSON, far under OKX's 64 KB per request,
#: and few requests against its 480-per-hour budget
MAX_ARGS_PER_REQUEST = 200
#: OKX drops a connection after 30 s of silence; ccxt pings every 18 s
PING_INTERVAL_S = 20.0

_PING = b"ping"
_PONG = b"pong"


def subscribe(symbols: Sequence[str]) -> list[bytes]:
    """One `op: subscribe` request per MAX_ARGS_PER_REQUEST instIds, e.g. `BTC-USDT-SWAP`."""
    args = [{"channel": CHANNEL, "instId": s} for s in symbols]
    return [
        orjson.dumps({"op": "subscribe", "args": args[i : i + MAX_ARGS_PER_REQUEST]})
        for i in range(0, len(args), MAX_ARGS_PER_REQUEST)
    ]


def _control(msg: dict[str, object]) -> list[BBO]:
    """An `event` frame (acks, notices) is no quote; an error reply is a ParseError."""
    if msg["event"] == "error":
        raise ParseError("error_reply", f"{msg.get('code')} {msg.get('msg')}"[:120])
    return []


def _index_error_kind(row: object) -> str:
    """An empty level list is a one-sided book; a short level is a malformed one."""
    if type(row) is dict and (row.get("bids") == [] or row.get("asks") == []):
        return "empty_side"
    return "bad_field"


def make_parser(ctx: ParserContext) -> Parser:
    """A parser for one connection; it caches each instId's contract scale, nothing else."""
    scales: dict[str, tuple[float, str, int]] = {}

    def scale_of(inst: str) -> tuple[float, str, int]:
        # first sight of a symbol only: the hot path reads the cache itself
        s = scales[inst] = contract_scale(ctx.contract_size(inst))
        return s

    def parse(frame: bytes, binary: bool = False) -> list[BBO]:
        if binary:
            raise ParseError("unexpected_binary", f"{len(frame)} bytes")
        if frame == _PONG:
            return []
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError:
            raise ParseError("not_json", frame[:60].decode(errors="replace")) from None
        if type(msg) is not dict:
            raise ParseError("unexpected_shape", "top level is not an object")
        if "event" in msg:
            return _control(msg)
        try:
            arg = msg["arg"]
            channel = arg["channel"]
            inst = arg["instId"]
            data = msg["data"]
        except KeyError as e:
            raise ParseError("missing_field", str(e)) from None
        except TypeError:
            raise ParseError("unexpected_shape", "arg is not an object") from None
        if channel == "bbo-tbt" or channel == "books5":  # rows carry `bids`/`asks` level lists
            levels = True
        elif channel == "tickers":
            levels = False
        else:
            return []  # trades, full books and the like share the connection
        if type(inst) is not str:
            raise ParseError("bad_field", "instId")
        if type(data) is not list:
            raise ParseError("unexpected_shape", "data is not a list")
        cs, suffix, cs_dp = scales.get(inst) or scale_of(inst)
        out = []
        for row in data:
            bid_px = ask_px = None
            try:
                if levels:
                    b0 = row["bids"][0]
                    a0 = row["asks"][0]
                    bid_px, bid_sz, ask_px, ask_sz = b0[0], b0[1], a0[0], a0[1]
                else:
                    bid_px, bid_sz, ask_px, ask_sz = row["bidPx"], row["bidSz"], row["askPx"], row["askSz"]
                ts = row["ts"]
                bid = float(bid_px)
                ask = float(ask_px)
                if suffix and type(bid_sz) is str and type(ask_sz) is str:
                    bsz = float(bid_sz + suffix)  # the usual case, inlined: see base_size
                    asz = float(ask_sz + suffix)
                else:
                    bsz = base_size(bid_sz, cs, suffix, cs_dp)
                    asz = base_size(ask_sz, cs, suffix, cs_dp)
            except KeyError as e:
                raise ParseError("missing_field", str(e)) from None
            except IndexError:
                raise ParseError(_index_error_kind(row), inst) from None
            except (TypeError, ValueError, OverflowError) as e:
                if bid_px == "" or ask_px == "":  # tickers mark an empty side with ""
                    raise ParseError("empty_side", inst) from None
                raise ParseError("bad_number", str(e)[:60]) from None
            check_quote(bid, ask, bsz, asz)
            out.append(BBO(inst, bid, ask, bsz, asz, ms_to_ns(ts)))
        return out

    return parse


def _is_pong(frame: bytes) -> bool:
    return frame == _PONG


SPEC = FeedSpec(
    name="okx",
    public_url="wss://ws.okx.com:8443/ws/v5/public",
    demo_path="/ws/v5/public",
    subscribe=subscribe,
    make_parser=make_parser,
    ping=PingRule(interval_s=PING_INTERVAL_S, payload=lambda: _PING, is_pong=_is_pong),
)
