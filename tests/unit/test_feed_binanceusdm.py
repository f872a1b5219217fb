"""The Binance USDⓈ-M bookTicker parser on real recorded frames and on the documented sample."""

from __future__ import annotations

import math

import orjson
import pytest
from kit import DATA

from perpbot.feeds.binanceusdm import SPEC, parse, subscribe
from perpbot.feeds.spec import ParseError

RECORDING = DATA / "recorded" / "BINANCE_FUTURES.ws.1.0"


def recorded_frames() -> list[bytes]:
    out = []
    for line in RECORDING.read_text().splitlines()[1:]:
        ts, _, frame = line.partition(": ")
        out.append(frame.encode())
    return out


def test_every_recorded_book_ticker_parses_to_its_fields() -> None:
    n = 0
    for frame in recorded_frames():
        msg = orjson.loads(frame)
        quotes = parse(frame)
        if msg["data"]["e"] != "bookTicker":
            assert quotes == []  # depth, trades and klines share the connection and are skipped
            continue
        d = msg["data"]
        (q,) = quotes
        assert q.symbol == d["s"]
        assert q.bid == float(d["b"]) and q.ask == float(d["a"])
        assert q.bid_size == float(d["B"]) and q.ask_size == float(d["A"])
        assert q.ts_exchange_ns == d["T"] * 1_000_000
        assert q.bid <= q.ask
        n += 1
    assert n == 613  # every bookTicker frame in the recording


def test_documented_sample_without_wrapper_and_with_extra_fields() -> None:
    sample = (b'{"e":"bookTicker","u":400900217,"E":1568014460893,"T":1568014460891,"s":"BNBUSDT",'
              b'"b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000","zz":[1,2]}')
    (q,) = parse(sample)
    assert q == ("BNBUSDT", 25.3519, 25.3652, 31.21, 40.66, 1568014460891_000_000)


def test_ack_is_not_a_quote() -> None:
    assert parse(b'{"result":null,"id":1}') == []


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"not json", "not_json"),
        (b'{"stream":"x","data":[1]}', "unexpected_shape"),
        (b'{"error":{"code":2,"msg":"Invalid request"},"id":null}', "error_reply"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"1","a":"2","B":"1","T":1}}', "missing_field"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"x","a":"2","B":"1","A":"1","T":1}}', "bad_number"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"3","a":"2","B":"1","A":"1","T":1}}', "crossed_book"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"1","a":"2","B":"-1","A":"1","T":1}}', "negative_size"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"nan","a":"2","B":"1","A":"1","T":1}}', "non_finite"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"1e999","a":"2","B":"1","A":"1","T":1}}', "non_finite"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"0","a":"2","B":"1","A":"1","T":1}}', "non_positive_price"),
        (b'{"data":{"e":"bookTicker","s":"X","b":"1","a":"2","B":"1","A":"1","T":99999999999999999}}', "bad_timestamp"),
        (b'{"data":{"e":"bookTicker","s":7,"b":"1","a":"2","B":"1","A":"1","T":1}}', "bad_field"),
    ],
)
def test_malformed_frames_raise_parse_error_with_kind(frame: bytes, kind: str) -> None:
    with pytest.raises(ParseError) as ei:
        parse(frame)
    assert ei.value.kind == kind


def test_truncated_recorded_frames_never_escape_as_other_errors() -> None:
    for frame in recorded_frames()[:200]:
        for cut in (1, len(frame) // 3, len(frame) // 2, len(frame) - 1):
            try:
                for q in parse(frame[:cut]):
                    assert math.isfinite(q.bid) and q.bid <= q.ask
            except ParseError:
                pass


def test_subscribe_frame_and_routed_path() -> None:
    (f,) = subscribe(["BTCUSDT", "ETHUSDT"])
    assert orjson.loads(f) == {"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker", "ethusdt@bookTicker"], "id": 1}
    # bookTicker moved to the routed /public path; the legacy root fails silently
    assert SPEC.public_url.startswith("wss://fstream.binance.com/public/")
